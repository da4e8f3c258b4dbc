"""benchmarks/scale.py: its grid of scales, its per-task summary, and its --quick run (slow: `pytest -m slow`)."""

import json
import math
import subprocess
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import quality  # noqa: E402
import scale  # noqa: E402


def test_scales_span_four_decades_in_thirds_around_the_paper_scale():
    assert scale.scales(1.0, quick=False) == [
        0.01, 0.0215, 0.0464, 0.1, 0.215, 0.464, 1.0, 2.15, 4.64, 10.0, 21.5, 46.4, 100.0
    ]  # fmt: skip
    lstm = scale.scales(quality.task_spec("ptb-lstm").paper_scale, quick=False)
    assert (len(lstm), lstm[0], lstm[6], lstm[-1]) == (13, 0.4, 40.0, 4000.0)
    assert scale.scales(1.0, quick=True) == [0.1, 1.0, 10.0]
    centres = {t: quality.task_spec(t).paper_scale for t in quality.QUALITY_TASKS}
    assert centres == {"digits-cnn": 1.0, "mnist1d-cnn": 1.0, "ptb-lstm": 40.0, "ptb-gpt2": 1.0,
                       "regression-mlp": 1.0, "digits-cnn@labels40": 1.0}  # fmt: skip


def record(family, x, val, lrs):
    return {"task": "regression-mlp", "schedule": scale.FAMILIES[family], "lr": x, "val": val, "test": val, "lrs": lrs}


def test_summary_compares_the_best_fixed_scale_with_the_online_scale_at_the_paper_scale():
    grid = [0.1, 1.0, 10.0]
    records = [
        record("SGD cosine", 0.1, 0.5, [0.1]), record("SGD cosine", 1.0, 0.2, [1.0]),
        record("SGD cosine", 10.0, math.inf, [10.0]),
        record("fixed scale", 0.1, 0.4, [0.05, 0.05]), record("fixed scale", 1.0, 0.3, [0.5, 0.3]),
        record("fixed scale", 10.0, math.inf, [5.0]),
        record("online scale", 0.1, 0.35, [0.2, 0.4]), record("online scale", 1.0, 0.32, [0.4, 0.6]),
        record("online scale", 10.0, 0.33, [0.5, 0.7]),
    ]  # fmt: skip
    s = scale.task_summary("regression-mlp", records, grid)
    assert s["metric"] == "mse" and s["higher_is_better"] is False
    assert s["best_fixed"] == {"x": 1.0, "mean_lr": 0.4, "val": 0.3, "test": 0.3}  # lowest validation MSE
    assert s["online_at_paper_scale"]["x"] == 1.0 and s["online_at_paper_scale"]["mean_lr"] == pytest.approx(0.5)
    assert s["best_sgd_cosine"]["x"] == 1.0
    assert s["online_to_fixed_lr"] == pytest.approx(1.25) and s["within_2x"] is True
    assert [r["x"] for r in s["runs"]["fixed scale"]] == grid
    markdown = scale.to_markdown({"regression-mlp": s})
    assert (
        "| regression-mlp (mse) | 1 | 0.4 | 0.3000 | 0.5 (c = 1) | 0.3200 | 1.25 | **yes** | 1: 0.2000 |" in markdown
    )
    assert "| 10 | diverged (diverged, 10) | diverged (diverged, 5) | 0.3300 (0.3300, 0.6) |" in markdown


@pytest.mark.slow
def test_scale_benchmark_quick(tmp_path):
    """Three scales on two tasks for each family; the summary, table and figure are written; a rerun resumes."""
    command = [sys.executable, str(REPO / "benchmarks" / "scale.py"), "--quick", "--out", str(tmp_path)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "scale_cpu_quick.json").read_text())
    assert list(report["results"]) == list(scale.QUICK_TASKS)
    for task, s in report["results"].items():
        assert s["grid"] == [0.1, 1.0, 10.0] and s["paper_scale"] == 1.0
        for family, runs in s["runs"].items():
            assert [r["x"] for r in runs] == s["grid"], (task, family)
            assert all(r["mean_lr"] > 0 for r in runs), (task, family)
        # SGD cosine's mean LR over 8 steps: x times the mean of the cosine factors
        cosine = sum(0.5 * (1 + math.cos(math.pi * i / 8)) for i in range(8)) / 8
        assert [r["mean_lr"] for r in s["runs"]["SGD cosine"]] == pytest.approx([x * cosine for x in s["grid"]])
        assert s["online_at_paper_scale"]["x"] == 1.0 and isinstance(s["within_2x"], bool)
        assert s["online_to_fixed_lr"] == pytest.approx(
            s["online_at_paper_scale"]["mean_lr"] / s["best_fixed"]["mean_lr"]
        )
    markdown = (tmp_path / "scale_cpu_quick.md").read_text()
    assert "| digits-cnn (accuracy) | " in markdown and "| regression-mlp (mse) | " in markdown
    assert (tmp_path / "scale_cpu_quick.png").stat().st_size > 10_000
    runs = sorted((tmp_path / "scale_cpu_quick" / "runs").rglob("*.json"))
    assert len(runs) == 2 + 2 * 3 * 3  # the two source schedules, then 3 families x 3 scales per task
    mtimes = [p.stat().st_mtime_ns for p in runs]
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [p.stat().st_mtime_ns for p in runs] == mtimes  # finished runs are read back, not rerun
