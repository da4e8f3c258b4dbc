"""benchmarks/scale.py: its grid of scales, its per-task summary, and its --quick run (slow: `pytest -m slow`);
benchmarks/scale_bound.py: the ceiling of a scale rule and the range test's readings."""

import json
import math
import subprocess
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import scale  # noqa: E402
import scale_bound  # noqa: E402
from common.rows import BASELINES  # noqa: E402
from common.tasks import QUALITY_TASKS, task_spec  # noqa: E402


def test_scales_span_four_decades_in_thirds_around_the_paper_scale():
    assert scale.scales(1.0, quick=False) == [
        0.01, 0.0215, 0.0464, 0.1, 0.215, 0.464, 1.0, 2.15, 4.64, 10.0, 21.5, 46.4, 100.0
    ]  # fmt: skip
    lstm = scale.scales(task_spec("ptb-lstm").paper_scale, quick=False)
    assert (len(lstm), lstm[0], lstm[6], lstm[-1]) == (13, 0.4, 40.0, 4000.0)
    assert scale.scales(1.0, quick=True) == [0.1, 1.0, 10.0]
    centres = {t: task_spec(t).paper_scale for t in QUALITY_TASKS}
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


def test_the_ceiling_is_the_fixed_scale_best_on_mean_validation_beside_the_targets_rows():
    def fixed(x, seed, val, test, lrs, **extra):
        return {"task": "regression-mlp", "schedule": scale_bound.FIXED, "lr": x, "seed": seed, "val": val,
                "test": test, "lrs": lrs, **extra}  # fmt: skip

    records = [
        fixed(0.1, 0, 0.40, 0.41, [0.05]), fixed(0.1, 1, 0.40, 0.39, [0.05]),
        fixed(1.0, 0, 0.20, 0.30, [0.6, 0.4]), fixed(1.0, 1, 0.30, 0.26, [0.5, 0.5]),  # best on the mean val (0.25)
        fixed(10.0, 0, 0.10, 0.10, [5.0]), fixed(10.0, 1, math.inf, math.inf, [5.0]),  # one seed diverged: worst
    ]  # fmt: skip
    rows = {
        scale_bound.PAPER_GAMMA: 0.35, scale_bound.ONLINE: 0.5, "SGD cosine": 0.2, "AdamW cosine": 0.25,
        "Prodigy": 0.27, "AdamW 1e-3 cosine (untuned default)": 0.29, "DoG": math.nan,
    }  # fmt: skip
    quality_results = {"results": {"regression-mlp": {"schedules": {
        k: {"mean": v, "best_lr": 1.0 if k in BASELINES else None} for k, v in rows.items()
    }}}}  # fmt: skip
    range_test = fixed(None, 0, 0.3, 0.3, [2.0, 1.0], range_test={"lr": 2.0, "rule_lr": 2.0, "edge_lr": 20.0,
                                                                   "fallback_reason": None})  # fmt: skip
    range_test["schedule"] = scale_bound.RANGE_TEST
    bound = scale_bound.task_bound("regression-mlp", records, [range_test], quality_results, seeds=2)
    assert bound["best_x"] == 1.0 and bound["best_mean_lr"] == 0.5
    assert bound["ceiling_test"] == pytest.approx(0.28) and bound["ceiling_test_std"] == pytest.approx(
        0.0283, abs=1e-4
    )
    assert bound["best_tuned"] == {"row": "SGD cosine", "test": 0.2, "lr": 1.0}
    assert not bound["within_target_of_best_tuned"]  # 0.28 is 40 % above 0.2 (MSE: 5 % allowed)
    assert bound["rivals_above_ceiling"] == ["Prodigy"]  # 0.27 < 0.28; 0.29 is not; a NaN row is no rival
    (reading,) = bound["range_tests"]
    # the run's mean LR is 1.5 from a first-step LR of 2: shape 0.75; pick 2 * 0.75 / 0.5, edge 20 * 0.75 / 0.5
    assert (reading["shape"], reading["lr_to_best"], reading["edge_to_best"]) == (0.75, 3.0, 30.0)
    assert "| regression-mlp | 3.00 | 30.00 | 0 of 1 |" in scale_bound.to_markdown({"regression-mlp": bound})


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
