"""FSDP2 (``fully_shard``, gloo, 2 CPU processes): the schedule and its meta-training on parameter shards."""

import itertools

import pytest
import torch
from conftest import REPO, accelerate_launch


@pytest.mark.multiprocess
def test_fsdp2_matches_ddp_and_the_hypergradient_from_shards_is_the_single_process_one(tmp_path):
    out = accelerate_launch("fsdp2_meta_train.py", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    for rank, mode in itertools.product(ranks, ("meta", "transfer")):
        fsdp, ddp = rank[f"fsdp2-{mode}"], rank[f"ddp-{mode}"]
        # Transfer and meta-training alike: every LR, theta and the trained model are DDP's (float64 model).
        assert len(fsdp["lrs"]) == 12 and fsdp["num_updates"] == ddp["num_updates"] == (4 if mode == "meta" else 0)
        torch.testing.assert_close(torch.tensor(fsdp["lrs"]), torch.tensor(ddp["lrs"]), rtol=1e-6, atol=0)
        for key, value in ddp["theta"].items():
            torch.testing.assert_close(fsdp["theta"][key], value, rtol=1e-6, atol=1e-9)
        for key, value in ddp["model"].items():
            torch.testing.assert_close(fsdp["model"][key], value, rtol=1e-6, atol=1e-12)
    for rank in ranks:
        assert "gamma='range_test' runs its range test on a copy of the model" in rank["range_test"]
        # The hypergradient of one meta batch, from shards, is the whole model's in one process.
        hyper = rank["hyper"]
        assert hyper["single_process"].abs().item() > 1e-3
        torch.testing.assert_close(hyper["sharded"], hyper["single_process"], rtol=1e-6, atol=0)
    # One shard-sized w_t buffer per process: the two shards add up to the model once.
    numel = ranks[0]["fsdp2-meta"]["model_numel"]
    buffers = [rank["fsdp2-meta"]["buffer_numel"] for rank in ranks]
    assert sum(buffers) == numel and max(buffers) < numel
    assert [rank["ddp-meta"]["buffer_numel"] for rank in ranks] == [numel, numel]
    # Both ranks hold the same theta, and it moved from its initialisation.
    assert all(torch.equal(v, ranks[1]["fsdp2-meta"]["theta"][k]) for k, v in ranks[0]["fsdp2-meta"]["theta"].items())
    assert all(
        not torch.equal(v, ranks[0]["fsdp2-meta"]["theta0"][k]) for k, v in ranks[0]["fsdp2-meta"]["theta"].items()
    )
    # A checkpoint inside a horizon: DDP's holds the step taken (every rank has the whole move); under FSDP2 the
    # main process, which writes scheduler.pt, holds only its shard, so the step is left out and counted.
    for rank in ranks:
        assert rank["ddp-meta"]["checkpoint"] == {"horizon": 1, "horizon_steps": 1}
        assert rank["fsdp2-meta"]["checkpoint"] == {"horizon": 0, "horizon_steps": 1}


@pytest.mark.multiprocess
def test_the_shipped_fsdp2_config_launches_as_written(tmp_path):
    """As written (2 processes, --mixed_precision no on a CPU): on CPUs accelerate runs it as DDP over gloo."""
    config = str(REPO / "examples" / "accelerate" / "fsdp2.yaml")
    launch = ("--config_file", config, "--num_processes", "2", "--mixed_precision", "no")
    done = accelerate_launch("world_size.py", str(tmp_path), "--use_cpu", launch=launch, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.read_text() for p in tmp_path.glob("rank*.txt")) == ["world 2", "world 2"]
