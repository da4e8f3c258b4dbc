"""Two processes (`accelerate launch --multi_gpu --num_processes 2`; gloo on a CPU-only machine)."""

import pytest
import torch
from conftest import REPO, accelerate_launch

from mlrsnet_hf import MLRSNetSchedule


@pytest.mark.multiprocess
@pytest.mark.parametrize("variant", ["default", "horizon"])
def test_meta_training_is_identical_on_every_rank(tmp_path, variant):
    out = accelerate_launch("ddp_meta_train.py", str(tmp_path), variant)
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    a, b = ranks
    # The hypergradient is averaged across processes: theta, LSTM state, gammas and LRs agree exactly,
    # although each rank drew different meta batches.
    for key, value in a["theta"].items():
        assert torch.equal(value, b["theta"][key]), key
    assert torch.equal(a["lstm_h"], b["lstm_h"])
    assert a["gammas"] == b["gammas"] and a["lrs"] == b["lrs"] and len(a["lrs"]) == 12
    assert a["meta_position"] == b["meta_position"] == {"epoch": 0, "index": 64}  # 4 meta steps of 16
    assert [x["step"] for x in a["snapshots"]] == [x["step"] for x in b["snapshots"]] == [3, 6, 12]
    for x, y in zip(a["snapshots"], b["snapshots"], strict=True):
        assert all(torch.equal(v, y["weights"][k]) for k, v in x["weights"].items())
    # DDP keeps the model's parameters equal (BatchNorm running statistics are per rank by design).
    params = [k for k in a["model"] if "running_" not in k and "num_batches_tracked" not in k]
    for key in params:
        assert torch.equal(a["model"][key], b["model"][key]), key
    # And the schedule did learn: theta moved from its seeded initialisation.
    if variant == "horizon":  # both ranks ran the range test; the LR of the first step is the same measured one
        assert a["lrs"][0] == b["lrs"][0] and max(a["lrs"]) <= a["lrs"][0] * (1 + 1e-6)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        initial = MLRSNetSchedule(hidden_size=50, num_stages=2, gamma=1.0).weights()
    assert all(not torch.equal(v, initial[k]) for k, v in a["theta"].items())


@pytest.mark.multiprocess
def test_an_error_one_rank_meets_is_raised_on_every_rank(tmp_path):
    """gamma='auto' with fewer training batches than processes: both ranks fail with the same clear error."""
    out = accelerate_launch("ddp_errors.py", str(tmp_path), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    messages = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert messages[0] == messages[1]
    assert "No training batch available" in messages[0] and "process 1 of 2" in messages[0]


@pytest.mark.multiprocess
def test_the_shipped_cpu_config_runs_two_processes_and_a_lone_process_is_refused(tmp_path):
    config = ("--config_file", str(REPO / "examples" / "accelerate" / "cpu.yaml"))
    for name, extra in (("as-documented", ["--use_cpu"]), ("without-use-cpu", [])):
        out = tmp_path / name
        out.mkdir()
        done = accelerate_launch("world_size.py", str(out), *extra, launch=config, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        messages = sorted(p.read_text() for p in out.glob("rank*.txt"))
        if extra:
            assert messages == ["world 2", "world 2"]  # one 2-process job, as the README says
        else:
            assert len(messages) == 2 and all(
                "trains alone: on a machine without GPUs pass --use_cpu" in m for m in messages
            )
