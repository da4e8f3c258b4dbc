"""The LR of optimizer step t is the schedule's LR for step t, and the logged LR is the one used, per engine.

On CPUs: one process and DDP (gloo). On GPUs (skipped without CUDA): FSDP2 with the shipped config, compared with
the same run without sharding. The command each test runs is the one the README gives.
"""

import pytest
import torch
from conftest import REPO, accelerate_launch


def lrs_of(out, world_size: int) -> list[dict]:
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world_size)]
    for rank in ranks:
        assert rank["world_size"] == world_size
        assert len(rank["used"]) == 8  # one LR per optimizer step, none of them the meta optimizer's
        assert rank["used"] == rank["logged"] == rank["schedule"]
    assert all(rank["used"] == ranks[0]["used"] for rank in ranks)
    return ranks


@pytest.mark.multiprocess
@pytest.mark.parametrize("meta", [False, True], ids=["transfer", "meta-train"])
def test_lr_used_is_the_schedules_and_the_logged_one_single_process_and_ddp(tmp_path, meta):
    flags = ["--meta"] if meta else []
    single = accelerate_launch("engine_lrs.py", str(tmp_path / "one"), *flags, "--use_cpu", launch=("--cpu",))
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = accelerate_launch("engine_lrs.py", str(tmp_path / "ddp"), *flags, "--use_cpu")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    (one,) = lrs_of(tmp_path / "one", 1)
    two = lrs_of(tmp_path / "ddp", 2)
    assert one["engine"] == "DistributedType.NO" and two[0]["engine"] == "DistributedType.MULTI_CPU"
    assert len(set(one["used"])) > 2  # the schedule moved the LR
    if meta:
        assert all(torch.equal(v, two[1]["theta"][k]) for k, v in two[0]["theta"].items())


@pytest.mark.multiprocess
def test_the_online_scale_is_identical_on_every_rank(tmp_path):
    """online_scale="mechanic" under DDP: S, its state, the LRs and the weights agree exactly on both ranks."""
    ddp = accelerate_launch("engine_lrs.py", str(tmp_path / "ddp"), "--online", "--use_cpu")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = (torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert a["engine"] == "DistributedType.MULTI_CPU" and a["world_size"] == 2
    assert len(a["used"]) == 8 and a["used"] == b["used"]  # the shape, as given to AdamW
    assert (
        a["logged"] == a["schedule"] == b["logged"] == b["schedule"]
    )  # S * shape: the LR the update was applied with
    assert a["logged"] != a["used"]
    for key in ("s", "reward", "max_product", "sum_squared_products"):
        assert torch.equal(a["online_scale"][key], b["online_scale"][key]), key
    assert all(torch.equal(x, y) for x, y in zip(a["online_scale"]["delta"], b["online_scale"]["delta"], strict=True))
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FSDP2 under accelerate shards on GPUs only")
@pytest.mark.parametrize("meta", [False, True], ids=["transfer", "meta-train"])
def test_fsdp2_on_gpus_uses_the_schedules_lr(tmp_path, meta):
    flags = ["--meta"] if meta else []
    n = str(torch.cuda.device_count())
    config = str(REPO / "examples" / "accelerate" / "fsdp2.yaml")
    launch = ("--config_file", config, "--num_processes", n, "--mixed_precision", "no")
    fsdp = accelerate_launch("engine_lrs.py", str(tmp_path / "fsdp2"), *flags, launch=launch)
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    plain_launch = ("--num_processes", n, "--mixed_precision", "no") + (("--multi_gpu",) if n != "1" else ())
    plain = accelerate_launch("engine_lrs.py", str(tmp_path / "plain"), *flags, launch=plain_launch)
    assert plain.returncode == 0, plain.stderr[-3000:]
    sharded, reference = lrs_of(tmp_path / "fsdp2", int(n)), lrs_of(tmp_path / "plain", int(n))
    assert sharded[0]["engine"] == "DistributedType.FSDP" and sharded[0]["sharded"]
    torch.testing.assert_close(torch.tensor(sharded[0]["used"]), torch.tensor(reference[0]["used"]), rtol=1e-4, atol=0)
