"""Smoke tests of the speed and quality benchmarks' --quick modes (slow: `pytest -m slow`, `make test-slow`), and the
quality benchmark's regression task, Mechanic recorder and merged --reuse files."""

import itertools
import json
import math
import statistics
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, SHARED
from transformers import EvalPrediction, default_data_collator

sys.path.insert(0, str(REPO / "benchmarks"))
from common.harness import job, score  # noqa: E402
from common.learned import CONTROLLER_TRAINING, META, SCALE_EXPERIMENTS, schedule_path  # noqa: E402
from common.registry import CONTROLLER, MLRSNET, row_labels  # noqa: E402
from common.report import carry_over, merge_reused  # noqa: E402
from common.rows import BASELINES, RIVALS  # noqa: E402
from common.steps import HYPERGRADIENT_BETA, MechanicRecorder  # noqa: E402
from common.tasks import HIGHER_IS_BETTER, QUALITY_TASKS, task_spec  # noqa: E402
from common.training import run_job  # noqa: E402
from toys import RegressionMLP, mse_metrics, regression_splits  # noqa: E402


def run_benchmark(script: str, *args: str, timeout: int = 600) -> None:
    """Run ``benchmarks/<script>`` with ``args`` in a fresh interpreter; it must succeed."""
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True, text=True,
                         timeout=timeout)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.slow
def test_speed_benchmark_quick(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "speed.py"), "--quick", "--device", "cpu", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "speed_cpu_quick.json").read_text())
    assert set(results["train"]) == {
        "builtin", "transfer", "range-test", "meta-10", "meta-10-h10", "meta-100", "meta-300", "meta-1"
    }  # fmt: skip
    assert results["train"]["range-test"]["range_test_seconds"] > 0
    assert all(v["steps_per_s"] > 0 and v["peak_mb"] > 0 for v in results["train"].values())
    assert set(results["meta_step"]) == {
        f"{m}/{k}" for m in ("cnn", "wide_mlp") for k in ("plain", "ours", "released")
    }
    ratios = results["ratios"]
    assert ratios["cnn_transfer_overhead_per_step"] < 0.1  # the LSTM step is tiny next to a training step
    assert all(ratios[f"{m}_meta_step_extra_in_plain_steps_end_to_end"] > 0 for m in ("cnn", "wide_mlp"))
    assert "| transfer |" in (tmp_path / "speed_cpu_quick.md").read_text()
    overhead = results["overhead"]["linear"]
    assert set(overhead["steps_per_s_ratio"]) == {"transfer", "transfer-tensor", "transfer-fused"}
    assert set(overhead["median_step_ratio"]) == set(overhead["steps_per_s_ratio"])
    assert all(len(r) == 1 for r in overhead["round_ratios"].values())  # one round in --quick
    assert overhead["round_ratios"]["transfer"][0] == pytest.approx(overhead["steps_per_s_ratio"]["transfer"])


@pytest.mark.slow
def test_paired_overhead_runs_take_turns_every_block_and_count_only_the_steps_inside_a_turn():
    import speed

    r = speed.paired("linear", "transfer", steps=40, warmup=8, block=4, repeats=2)
    assert r["base"] == "builtin"
    for i, pair in enumerate(r["pairs"]):
        turns = sorted((start, end, side) for side in pair for start, end in pair[side]["spans"])
        assert len(turns) == 2 * 10  # 40 steps in turns of 4, each side
        first = ("builtin", "transfer")[i % 2]  # the side that starts alternates
        assert [side for *_, side in turns] == [first, ({"builtin", "transfer"} - {first}).pop()] * 10
        assert all(a_end <= b_start for (_, a_end, _), (b_start, _, _) in itertools.pairwise(turns))  # no overlap
        for side in pair.values():  # steps 9-36 (after the warm-up, before the last turn), less each turn's first
            assert [b for b, _ in side["timed"]] == [b for b in range(2, 9) for _ in range(3)]
            assert all(t > 0 for _, t in side["timed"])
    means = [{s: statistics.fmean(t for _, t in p[s]["timed"]) for s in p} for p in r["pairs"]]
    assert r["pair_ratios"] == pytest.approx([m["builtin"] / m["transfer"] for m in means])
    assert r["steps_per_s_ratio"] == pytest.approx(statistics.median(r["pair_ratios"]))
    assert r["counted_steps"] == [21, 21] and len(r["window_ratios"]) == 2  # one window of 50 turns per pair


def test_grid_ends_are_the_choices_at_an_end_of_their_grid_with_the_next_lr_past_it():
    from grid_ends import grid_end_choices

    def row(best, grid):
        return {"best_lr": best, "grid_val": {str(lr): 0.5 for lr in grid}}

    results = {
        "digits-cnn": {"metric": "accuracy", "schedules": {
            "SGD fixed": row(3.0, (0.1, 0.3, 1.0, 3.0)),  # top end
            "SGD cosine": row(1.0, (0.1, 0.3, 1.0, 3.0)),  # inside
            "Prodigy": {"best_lr": None, "grid_val": None},  # untuned
        }},
        "ptb-gpt2": {"metric": "perplexity", "schedules": {"SGD fixed": row(0.3, (0.3, 1.0, 3.0))}},  # bottom end
    }  # fmt: skip
    choices = grid_end_choices(results)
    assert [(c["task"], c["label"], c["end"], c["grid_lr"], c["lr"]) for c in choices] == [
        ("digits-cnn", "SGD fixed", "top", 3.0, 9.0),
        ("ptb-gpt2", "SGD fixed", "bottom", 0.3, 0.09),
    ]


@pytest.mark.slow
def test_grid_ends_benchmark_quick(tmp_path):
    """Runs one LR past the first grid ends of the committed quality results and records the comparison."""
    run_benchmark("grid_ends.py", "--quick", "--out", str(tmp_path))
    rows = json.loads((tmp_path / "grid_ends_cpu_quick.json").read_text())["rows"]
    assert len(rows) == 2 and all(r["lr"] == 3 * r["grid_lr"] and r["end"] == "top" for r in rows)
    assert all(math.isfinite(r["grid_val"]) and isinstance(r["better"], bool) for r in rows)
    assert "| digits-cnn | SGD fixed | 3 (top) |" in (tmp_path / "grid_ends_cpu_quick.md").read_text()


def quality_quick(out, tasks: list[str]) -> dict:
    """Run ``quality.py --quick`` on ``tasks`` into ``out``; its results JSON."""
    run_benchmark("quality.py", "--quick", "--tasks", *tasks, "--out", str(out), "--workers", "2", timeout=900)
    return json.loads((out / "quality_cpu_quick.json").read_text())


@pytest.mark.slow
def test_quality_benchmark_quick(tmp_path):
    """Every schedule runs on an image and a text task; LR sequences are the documented ones; reruns resume."""
    tasks = ["digits-cnn"] + (["ptb-lstm"] if (SHARED / "data" / "ptb" / "ptb.valid.txt").is_file() else [])
    report = quality_quick(tmp_path, tasks)
    released = (SHARED / "official" / "mlr_snet_1.pth").is_file()
    expected = {*BASELINES, *CONTROLLER, *RIVALS, *MLRSNET} - (set() if released else {"MLR-SNet released"})
    for task in tasks:
        entries = report["results"][task]["schedules"]
        assert set(entries) == expected
        for label, e in entries.items():
            assert len(e["test"]) == 1 and len(e["lrs"]) == 8, label
        lr = entries["SGD fixed"]["best_lr"]
        assert entries["SGD fixed"]["lrs"] == [lr] * 8
        assert entries["SGD exponential"]["lrs"] == pytest.approx([lr * 0.01 ** (i / 8) for i in range(8)])
        assert entries["SGD multi-step"]["lrs"] == pytest.approx([lr] * 4 + [lr / 10] * 2 + [lr / 100] * 2)
        assert entries["SGD cosine"]["lrs"] == pytest.approx(
            [lr * 0.5 * (1 + math.cos(math.pi * i / 8)) for i in range(8)]
        )
        hd = entries["SGD hypergradient descent"]["lrs"]
        ratios = [b / a for a, b in zip(hd, hd[1:], strict=False)]
        assert hd[0] == lr and len(set(hd)) > 1
        assert all(abs(r - 1) <= HYPERGRADIENT_BETA + 1e-12 for r in ratios)  # multiplicative rule
        assert all(x > 0 for x in entries["MLR-SNet meta-trained"]["lrs"])
        # Transfer: the trajectory's first third is the source's early network, not its final one.
        final, trajectory = (entries[f"MLR-SNet transferred, {k}"]["lrs"] for k in ("final network", "trajectory"))
        assert final != trajectory and final[6:] == pytest.approx(trajectory[6:], rel=0.5)
        # The range-test row's first LR is the measured one (a cap: no later LR above it).
        scaled = entries["MLR-SNet transferred, trajectory + range-test scale"]["lrs"]
        assert max(scaled) == pytest.approx(scaled[0])
        # Untuned rivals: one fixed setting; the parameter-free ones record the step size they used.
        assert entries["AdamW 1e-3 cosine (untuned default)"]["lrs"] == pytest.approx(
            [1e-3 * 0.5 * (1 + math.cos(math.pi * i / 8)) for i in range(8)]
        )
        assert entries["SGD 0.1 cosine (untuned default)"]["best_lr"] == 0.1
        for label in ("Prodigy", "D-Adaptation Adam"):  # d * lr, from d0 = 1e-6
            assert entries[label]["lrs"][0] == pytest.approx(1e-6) and entries[label]["grid_val"] is None
        assert all(x > 0 for label in ("D-Adaptation SGD", "DoG") for x in entries[label]["lrs"])
        assert len(entries["DoG"]["test_last_iterate"]) == 1  # the averaged model is the result
        # The scale learned in the run: Mechanic's S starts near 0; Prodigy's d at d0 = 1e-6, times lr_1 = 1.
        online = entries["MLR-SNet transferred, trajectory + online scale (Mechanic)"]["lrs"]
        assert all(x > 0 for x in online) and online[0] < 1e-3 * task_spec(task).paper_scale
        assert entries["MLR-SNet transferred, trajectory + Prodigy scale"]["lrs"][0] == pytest.approx(1e-6)
        for label, lr in (("Mechanic SGD cosine (untuned)", 0.1), ("Mechanic AdamW cosine (untuned)", 1e-3)):
            assert entries[label]["best_lr"] == lr and all(0 < x < lr for x in entries[label]["lrs"]), label
    assert report["meta"]["meta_hyperparameters"] == META
    costs = report["meta"]["training_cost_seconds"]
    assert all(costs[t]["PPO controller training"] > 0 for t in tasks)
    # The controller starts from Adam's 1e-3 and moves by a factor 1.05^(-1, 0, 1) at steps 0 and 4 (quick: K=4).
    lrs = entries["PPO controller trained"]["lrs"]
    factors = {round(b / a, 9) for a, b in zip([1e-3, *lrs], lrs, strict=False)}
    assert factors <= {round(1 / 1.05, 9), 1.0, 1.05} and lrs[:4] == [lrs[0]] * 4 and lrs[4:] == [lrs[4]] * 4
    assert "| MLR-SNet transferred, trajectory |" in (tmp_path / "quality_cpu_quick.md").read_text()
    assert "| Prodigy | " in (tmp_path / "quality_cpu_quick.md").read_text()
    assert set(report["meta"]["rivals"]) == set(RIVALS)
    mechanic = report["meta"]["rivals"]["Mechanic SGD cosine (untuned)"]
    assert mechanic["optimizer"] == "mechanic_pytorch.mechanize(torch.optim.SGD)"
    assert mechanic["lrs_record"] == "S * lr"
    assert (tmp_path / "quality_cpu_quick.png").stat().st_size > 10_000
    runs = sorted((tmp_path / "quality_cpu_quick" / "runs").rglob("*.json"))
    mtimes = [p.stat().st_mtime_ns for p in runs]
    quality_quick(tmp_path, tasks)
    assert [p.stat().st_mtime_ns for p in runs] == mtimes  # finished runs are read back, not rerun
    assert json.loads((tmp_path / "quality_cpu_quick.json").read_text())["results"] == report["results"]


@pytest.mark.slow
def test_robustness_benchmark_quick(tmp_path):
    command = [sys.executable, str(REPO / "benchmarks" / "robustness.py"), "--quick", "--variants", "contrast",
               "labels40", "--out", str(tmp_path), "--workers", "1"]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO / "benchmarks")
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "robustness_cpu_quick.json").read_text())
    assert set(result["table"]) >= {"MLR-SNet meta-trained", "SGD cosine", "Adam fixed"}
    assert set(result["table"]["SGD cosine"]["per_task"]) == {"contrast", "labels40"}
    assert "| MLR-SNet meta-trained |" in (tmp_path / "robustness_cpu_quick.md").read_text()


@pytest.mark.slow
def test_quality_benchmark_quick_new_tasks(tmp_path):
    """Every row runs on the regression task (but the PPO controller's: it observes class probabilities) and on the
    digits with 40 % label noise."""
    tasks = ["regression-mlp", "digits-cnn@labels40"]
    report = quality_quick(tmp_path, tasks)
    released = (SHARED / "official" / "mlr_snet_1.pth").is_file()
    expected = set(row_labels()) - (set() if released else {"MLR-SNet released"})
    regression, noisy = (report["results"][t] for t in tasks)
    assert regression["metric"] == "mse" and regression["higher_is_better"] is False
    assert noisy["metric"] == "accuracy" and noisy["higher_is_better"] is True
    assert set(regression["schedules"]) == expected - set(CONTROLLER)
    assert set(noisy["schedules"]) == expected
    for task in tasks:
        for label, e in report["results"][task]["schedules"].items():
            assert len(e["test"]) == 1 and len(e["lrs"]) == 8 and math.isfinite(e["test"][0]), (task, label)
    assert all(0 < e["mean"] < 10 for e in regression["schedules"].values())  # MSE of unit-variance targets
    assert not (tmp_path / "quality_cpu_quick" / "controllers" / "regression-mlp").exists()
    markdown = (tmp_path / "quality_cpu_quick.md").read_text()
    assert "| schedule | regression-mlp (mse) | digits-cnn@labels40 (accuracy) |" in markdown
    assert "| PPO controller trained | - | " in markdown


def test_regression_task_is_generated_deterministically_and_scored_by_mse():
    splits, again = regression_splits(0), regression_splits(0)
    assert {k: len(v) for k, v in splits.items()} == {"train": 2000, "meta": 500, "test": 2000}
    assert all(
        torch.equal(a["inputs"], b["inputs"]) and a["labels"] == b["labels"]
        for a, b in zip(splits["test"], again["test"], strict=True)
    )
    labels = np.array([r["labels"] for r in splits["train"]])
    assert abs(labels.mean()) < 0.1 and 1.0 < labels.var() < 1.2  # unit-variance teacher + noise variance 0.09
    # Nonlinear: a least-squares linear fit leaves most of the variance.
    x = np.stack([r["inputs"].numpy() for r in splits["train"]])
    design = np.c_[x, np.ones(len(x))]
    residual = labels - design @ np.linalg.lstsq(design, labels, rcond=None)[0]
    assert residual.var() > 0.7 * labels.var()
    # The model's loss is the MSE of its predictions, and so is the metric.
    torch.manual_seed(0)
    batch = default_data_collator(splits["train"][:16])
    output = RegressionMLP()(**batch)
    assert output.logits.shape == (16,)
    assert output.loss.item() == pytest.approx(((output.logits - batch["labels"]) ** 2).mean().item())
    compute, preprocess = mse_metrics()
    predictions = preprocess(output.logits.detach(), batch["labels"]).numpy()
    assert compute(EvalPrediction(predictions, batch["labels"].numpy()))["mse"] == pytest.approx(output.loss.item())
    assert compute(EvalPrediction(np.array([np.nan]), np.array([0.0])))["mse"] == math.inf  # diverged: the worst
    task = task_spec("regression-mlp")
    assert task.metric == "mse" and task.paper_scale == 1.0 and task.source == "digits-cnn"
    scores = [score({"val": v}, "mse") for v in (0.2, 0.3, math.inf)]
    assert scores == sorted(scores, reverse=True) and scores[-1] == -math.inf  # lower is better; diverged worst
    assert {task_spec(t).metric for t in QUALITY_TASKS} <= set(HIGHER_IS_BETTER)


def test_mechanic_recorder_reads_the_step_taken():
    """Mechanic's first step moves the weights by S * lr times the base update (its reference is the start)."""
    from mechanic_pytorch import mechanize

    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(20, dtype=torch.float64))
    optimizer = mechanize(torch.optim.SGD)([p], lr=0.1)
    recorder = MechanicRecorder()
    p.grad = torch.randn(20, dtype=torch.float64)
    grad, before = p.grad.clone(), p.detach().clone()
    recorder.on_pre_optimizer_step(None, None, None, optimizer=optimizer)
    optimizer.step()
    recorder.on_optimizer_step(None, None, None, optimizer=optimizer)
    assert 0 < recorder.lrs[0] < 0.1
    assert before - p.detach() == pytest.approx(recorder.lrs[0] * grad, rel=1e-6)


def test_reuse_takes_each_task_from_the_first_file_that_has_it():
    def results(steps, seeds, cost, **rows):
        tasks = {t: {"steps": steps} for t in rows}
        costs = {t: {CONTROLLER_TRAINING: cost} for t in rows}
        meta = {"seeds": seeds, "tasks": tasks, "training_cost_seconds": costs}
        return {"meta": meta, "results": {t: {"schedules": {"DoG": {"mean": v}}} for t, v in rows.items()}}

    full = results(600, 3, 68.0, **{"digits-cnn": 0.98})
    new_tasks = results(8, 1, 5.0, **{"digits-cnn": 0.1, "regression-mlp": 0.3})
    merged = merge_reused([full, new_tasks])
    assert merged["results"] == {"digits-cnn": full["results"]["digits-cnn"],
                                 "regression-mlp": new_tasks["results"]["regression-mlp"]}  # fmt: skip
    assert merged["meta"]["seeds"] == {"digits-cnn": 3, "regression-mlp": 1}
    assert merged["meta"]["tasks"] == {"digits-cnn": {"steps": 600}, "regression-mlp": {"steps": 8}}
    skip = {"DoG", CONTROLLER_TRAINING}
    carried, seconds = carry_over(merged, ["digits-cnn", "regression-mlp"], skip)
    assert carried == {"digits-cnn": {"DoG": {"mean": 0.98}}, "regression-mlp": {"DoG": {"mean": 0.3}}}
    assert seconds == {"digits-cnn": 68.0, "regression-mlp": 5.0}
    assert merge_reused([]) == {}


@pytest.mark.slow
def test_only_runs_the_rows_named(tmp_path):
    keep = ["MLR-SNet meta-trained", "Mechanic SGD cosine (untuned)"]
    base = [sys.executable, str(REPO / "benchmarks" / "quality.py"), "--quick", "--tasks", "digits-cnn",
            "--workers", "1", "--out", str(tmp_path)]  # fmt: skip
    out = subprocess.run([*base, "--only", *keep], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "quality_cpu_quick.json").read_text())
    assert list(report["results"]["digits-cnn"]["schedules"]) == keep
    for bad in (["--only", *keep, "--skip", "SGD fixed"], ["--only", "SGD fixd"]):
        out = subprocess.run([*base, *bad], capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and "error:" in out.stderr, bad


@pytest.mark.slow
def test_scale_experiments_run_and_record_the_step_size_they_used(tmp_path):
    """select_scale.py's candidates outside the tables (SCALE_EXPERIMENTS), a few steps each on digits."""
    source = tmp_path / "source"
    run_job(job(tmp_path, "digits-cnn", "MLR-SNet meta-trained", 0, 8, True, schedule_dir=str(source)))
    for label, row in SCALE_EXPERIMENTS.items():
        record = run_job(
            job(tmp_path, "digits-cnn", label, 0, 8, True,
                        source_schedule=schedule_path(source, True), source_task="digits-cnn")
        )  # fmt: skip
        assert "error" not in record and 0 <= record["val"] <= 1, (label, record.get("error"))
        assert len(record["lrs"]) == 8 and all(math.isfinite(lr) and lr > 0 for lr in record["lrs"]), label
        if row.scale.startswith("mechanic"):  # S * shape: S starts near 1e-6
            assert record["lrs"][0] < 1e-5 and record["lrs"][-1] > 2 * record["lrs"][0]


@pytest.mark.slow
def test_online_scale_cost_quick(tmp_path):
    run_benchmark("online_scale_cost.py", "--quick", "--out", str(tmp_path))
    results = json.loads((tmp_path / "online_scale_cost_cpu_quick.json").read_text())["results"]
    assert len(results) == 4
    for r in results.values():  # two parameter-sized float32 buffers
        assert r["scale_buffers_mib"] == pytest.approx(2 * 4 * r["parameters"] / 2**20)
        assert r["step_ms_with"] > 0 and r["optimizer_step_ms_with"] > 0


@pytest.mark.slow
def test_cli_startup_benchmark_records_every_command_beside_its_floors(tmp_path):
    run_benchmark("cli_startup.py", "--repeats", "1", "--out", str(tmp_path))
    data = json.loads((tmp_path / "cli_startup_cpu.json").read_text())
    rows = data["rows"]
    assert len(rows) == 7 and data["runs"][-1]["command"].endswith("--repeats 1 --out " + str(tmp_path))
    assert rows["mlrsnet --help"]["median_s"] < rows["import torch"]["median_s"]  # --help imports no torch
    table = (tmp_path / "cli_startup_cpu.md").read_text()
    assert "| `mlrsnet info mlrsnet_hf/digits-cnn-600` |" in table and "_Measured " in table
