"""The quality benchmark's untuned rivals (the step size they record) and its carry-over (--skip, --reuse)."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from common.learned import CONTROLLER_TRAINING  # noqa: E402
from common.registry import row_labels  # noqa: E402
from common.report import CARRIED_NOTE, carry_over, cost_table, summarise, to_markdown, training_costs  # noqa: E402
from common.steps import LRRecorder, d_times_lr, dadapt_sgd_step, dog_eta  # noqa: E402


def one_step(optimizer_cls, step_size, **kwargs):
    """The step size the recorder reads for one step of a one-tensor model, and the update it made."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(20, dtype=torch.float64))  # steps of 1e-6: no float32 rounding
    optimizer = optimizer_cls([p], **kwargs)
    recorder = LRRecorder(step_size)
    p.grad = torch.randn(20, dtype=torch.float64)
    grad, before = p.grad.clone(), p.detach().clone()
    recorder.on_pre_optimizer_step(None, None, None, optimizer=optimizer)
    optimizer.step()
    recorder.on_optimizer_step(None, None, None, optimizer=optimizer)
    return recorder.lrs[0], before - p.detach(), grad


def test_recorded_step_size_is_the_step_taken():
    from dadaptation import DAdaptAdam, DAdaptSGD
    from dog import DoG
    from prodigyopt import Prodigy

    # SGD-like: the update is step size * gradient.
    for cls, step_size in ((DAdaptSGD, dadapt_sgd_step), (DoG, dog_eta)):
        lr, update, grad = one_step(cls, step_size)
        assert update == pytest.approx(lr * grad, rel=1e-5), cls.__name__
    # Adam-like (bias correction off): the first update is step size * (1 - b1) / sqrt(1 - b2) * sign(g).
    for cls in (Prodigy, DAdaptAdam):
        lr, update, grad = one_step(cls, d_times_lr)
        assert lr == pytest.approx(1e-6)  # d0 * lr: the d held before the step
        assert update == pytest.approx(lr * 0.1 / 0.001**0.5 * grad.sign(), rel=1e-4), cls.__name__
    # No step size function: the group's lr, as for every other row.
    lr, _, _ = one_step(torch.optim.SGD, None, lr=0.1)
    assert lr == 0.1


def entry(mean, seconds=1.0):
    return {"best_lr": None, "grid_val": None, "test": [mean], "mean": mean, "std": 0.0, "diverged": 0,
            "train_seconds": seconds, "val_curve": [[1, mean]], "lrs": [0.1]}  # fmt: skip


def test_carry_over_summary_tables():
    reused = {
        "meta": {"training_cost_seconds": {"digits-cnn": {CONTROLLER_TRAINING: 68.0}}},
        "results": {"digits-cnn": {"schedules": {"PPO controller trained": entry(0.88), "SGD fixed": entry(0.5)}}},
    }
    skip = {"PPO controller trained", "PPO controller transferred", CONTROLLER_TRAINING}
    carried, controller_seconds = carry_over(reused, ["digits-cnn"], skip)
    assert set(carried["digits-cnn"]) == {"PPO controller trained"}  # SGD fixed is not skipped: not copied
    assert controller_seconds == {"digits-cnn": 68.0}
    record = {"task": "digits-cnn", "schedule": "Prodigy", "seed": 0, "lr": 1.0, "metric": "accuracy", "test": 0.9,
              "val": 0.9, "train_seconds": 2.0, "val_curve": [[1, 0.9]], "lrs": [1e-6]}  # fmt: skip
    summary = summarise([record], ["digits-cnn"], carried)
    rows = summary["digits-cnn"]["schedules"]
    assert list(rows) == ["PPO controller trained", "Prodigy"]  # the table's order
    assert rows["PPO controller trained"]["carried_over"] and "carried_over" not in rows["Prodigy"]
    table = to_markdown(summary)
    assert "| PPO controller trained | 0.8800 ± 0.0000 † |" in table
    assert "| Prodigy | **0.9000 ± 0.0000** (untuned) |" in table
    assert table.endswith(CARRIED_NOTE)
    costs, carried_cells = training_costs(summary, {}, controller_seconds)
    assert costs == {"digits-cnn": {CONTROLLER_TRAINING: 68.0}}
    assert "| digits-cnn | 68 s † |" in cost_table(costs, carried_cells)
    # Nothing carried: no mark, no note.
    assert "†" not in to_markdown(summarise([record], ["digits-cnn"]))


@pytest.mark.slow
def test_skip_and_reuse_cli(tmp_path):
    """Only the rows not skipped run; the skipped ones come from the reused JSON, marked; bad flags fail early."""
    keep = {"SGD fixed", "SGD 0.1 cosine (untuned default)"}
    skip = [label for label in row_labels() if label not in keep] + [CONTROLLER_TRAINING]
    reused = {
        "meta": {"training_cost_seconds": {"digits-cnn": {CONTROLLER_TRAINING: 68.0}}},
        "results": {"digits-cnn": {"schedules": {"DoG": entry(0.98), "SGD fixed": entry(0.1)}}},
    }
    (tmp_path / "previous.json").write_text(json.dumps(reused))
    base = [sys.executable, str(REPO / "benchmarks" / "quality.py"), "--quick", "--tasks", "digits-cnn",
            "--workers", "1", "--out", str(tmp_path / "out")]  # fmt: skip
    out = subprocess.run([*base, "--reuse", str(tmp_path / "previous.json"), "--skip", *skip],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "quality_cpu_quick.json").read_text())
    rows = report["results"]["digits-cnn"]["schedules"]
    assert set(rows) == keep | {"DoG"}
    assert rows["DoG"]["carried_over"] and "carried_over" not in rows["SGD fixed"]  # run here, not copied
    assert report["meta"]["training_cost_seconds"]["digits-cnn"][CONTROLLER_TRAINING] == 68.0
    assert report["meta"]["carried_over"]["rows"] == {"digits-cnn": ["DoG"]}
    assert {p.parent.name for p in (tmp_path / "out" / "quality_cpu_quick" / "runs").rglob("*.json")} == {
        "sgd-fixed", "sgd-0.1-cosine-untuned-default"
    }  # fmt: skip
    markdown = (tmp_path / "out" / "quality_cpu_quick.md").read_text()
    assert "| DoG | **0.9800 ± 0.0000** (untuned) † |" in markdown and "| digits-cnn | 68 s † |" in markdown
    # A typo, and a skipped PPO training whose controllers are not on disk for the PPO rows that run.
    for bad in (["--skip", "SGD fixd"], ["--skip", CONTROLLER_TRAINING]):
        out = subprocess.run([*base[:-1], str(tmp_path / "fresh"), *bad], capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and "error:" in out.stderr, bad
