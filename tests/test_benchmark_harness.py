"""The benchmarks' package (benchmarks/common): a registry entry becomes rows and jobs; the harness resumes, reports
progress and hands on results as they arrive; the report writer's tables, verdicts and history. No training here."""

import json
import logging
import math
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from common import history, report  # noqa: E402
from common.harness import Harness, best_lr, job  # noqa: E402
from common.learned import CONTROLLER_TRAINING  # noqa: E402
from common.plan import Plan  # noqa: E402
from common.registry import TABLE_ROWS, row_labels  # noqa: E402
from common.rows import BASELINES, RIVALS  # noqa: E402
from common.tasks import ALL_TASKS, QUALITY_TASKS, TASKS, VARIANTS, task_spec  # noqa: E402


def test_variants_are_task_objects_named_as_the_results_files_name_them():
    noisy = VARIANTS["labels40"]
    assert noisy is task_spec("digits-cnn@labels40") and noisy.variant == "labels40"
    assert noisy.steps == TASKS["digits-cnn"].steps and noisy.lr_range("sgd") == TASKS["digits-cnn"].sgd_grid
    assert QUALITY_TASKS[-1] == noisy.name and set(QUALITY_TASKS) <= set(ALL_TASKS)
    assert noisy.to_dict()["variant"] == "labels40" and "data" not in noisy.to_dict()
    assert "variant" not in TASKS["digits-cnn"].to_dict()  # the base tasks' entries as the results files hold them
    with pytest.raises(ValueError, match="Unknown task"):
        task_spec("digits-cnn@nope")


def test_each_row_owns_its_grid():
    task = TASKS["ptb-lstm"]
    assert BASELINES["SGD cosine"].grid(task, quick=False) == (10.0, 30.0, 90.0)
    assert BASELINES["AdamW cosine"].grid(task, quick=False) == (1e-3, 3e-3, 1e-2)
    assert BASELINES["SGD cosine"].grid(task, quick=True) == (30.0,)  # the middle LR
    assert RIVALS["AdamW 1e-3 cosine (untuned default)"].grid(task, quick=False) == (1e-3,)
    assert TABLE_ROWS["MLR-SNet transferred, trajectory"].grid(task, quick=False) == (None,)
    assert [label for label, row in TABLE_ROWS.items() if row.tuned] == list(BASELINES)


def test_a_task_becomes_jobs_in_two_phases(tmp_path):
    """digits-cnn, 3 seeds: meta-training on it (3 seeds) and its source (seed 0), the PPO controller on both, each
    tuned row's 4-point grid with seed 0; then the tuned rows' other seeds and every untuned row with 3 seeds."""
    plan = Plan(tmp_path, ["digits-cnn"], range(3), skip=set())
    first = plan.first()
    count = {}
    for j in first:
        count[j["task"], j["schedule"]] = count.get((j["task"], j["schedule"]), 0) + 1
    assert count["digits-cnn", "MLR-SNet meta-trained"] == 3 and count["mnist1d-cnn", "MLR-SNet meta-trained"] == 1
    assert count["digits-cnn", "SGD cosine"] == 4 and count["digits-cnn", "AdamW cosine"] == 4
    assert count["digits-cnn", CONTROLLER_TRAINING] == count["mnist1d-cnn", CONTROLLER_TRAINING] == 1
    assert {j["seed"] for j in first if j["schedule"] in BASELINES} == {0}
    records = [{"task": j["task"], "schedule": j["schedule"], "seed": 0, "lr": j["lr"], "metric": "accuracy",
                "val": 0.5 if j["lr"] != 1.0 else 0.9} for j in first if j["schedule"] in BASELINES]  # fmt: skip
    assert best_lr(records, "digits-cnn", "SGD fixed") == 1.0
    second = plan.second(records)
    assert len(second) == len(plan.second(None))  # the count known before phase 1 runs
    sgd = [j for j in second if j["schedule"] == "SGD fixed"]
    assert [(j["seed"], j["lr"]) for j in sgd] == [(1, 1.0), (2, 1.0)]
    prodigy = [j for j in second if j["schedule"] == "Prodigy"]
    assert [(j["seed"], j["lr"]) for j in prodigy] == [(0, 1.0), (1, 1.0), (2, 1.0)]
    transfer = [j for j in second if j["schedule"] == "MLR-SNet transferred, trajectory"]
    assert transfer[0]["source_task"] == "mnist1d-cnn" and transfer[0]["source_schedule"].endswith(
        "mnist1d-cnn-h1-trajectory"
    )


def test_skipping_a_learning_step_needs_its_artifacts(tmp_path):
    skip = {CONTROLLER_TRAINING}
    plan = Plan(tmp_path, ["regression-mlp", "digits-cnn"], range(1), skip, quick=True)
    assert all("PPO controller" in m for m in plan.missing())  # its controllers are not on disk
    assert not [j for j in plan.first() if j["schedule"] == CONTROLLER_TRAINING]
    only = Plan(tmp_path, ["regression-mlp"], range(1), set(row_labels()) - {"SGD fixed"} | skip, quick=True)
    assert only.missing() == [] and [j["schedule"] for j in only.first()] == ["SGD fixed"]
    assert only.steps("regression-mlp") == 8


def fake_run(calls):
    def run(j):
        calls.append(j["seed"])
        record = {
            "task": j["task"],
            "schedule": j["schedule"],
            "seed": j["seed"],
            "lr": j["lr"],
            "test": 0.5 + j["seed"],
        }
        (tmp := __import__("pathlib").Path(j["path"])).write_text(json.dumps(record))
        return json.loads(tmp.read_text())

    return run


def test_harness_resumes_counts_every_phase_and_hands_on_each_result(tmp_path, caplog):
    jobs = [job(tmp_path, "digits-cnn", "SGD fixed", s, 8, True, 0.1) for s in range(4)]
    calls, seen = [], []
    interrupted = Harness(4)
    interrupted.phase("first", jobs[:2], fake_run(calls))
    interrupted.close()  # as if stopped here: a rerun resumes
    harness = Harness(4, on_record=lambda records: seen.append([r["seed"] for r in records]))
    with caplog.at_level(logging.INFO, logger="benchmarks"):
        harness.phase("first", jobs[:2], fake_run(calls))
        records = harness.phase("second", jobs[2:], fake_run(calls))
    harness.close()
    assert calls == [0, 1, 2, 3] and [r["seed"] for r in records] == [2, 3]
    assert seen == [[0, 1, 2], [0, 1, 2, 3]]  # after each new run, every record so far
    lines = [r.getMessage() for r in caplog.records]
    assert "== first: 2 of 2 runs already done (resumed)" in lines
    assert any(line.startswith("run 3 of 4 (") and "SGD fixed lr=0.1 seed=2: test 2.5" in line for line in lines)
    assert any(line.startswith("== second done: 2 runs in") and "(4 of 4 overall" in line for line in lines)
    calls.clear()
    again = Harness(4, workers=2)
    assert again.phase("rerun", jobs, fake_run(calls)) == [*jobs_records(jobs)] and calls == []  # nothing reruns
    again.close()


def jobs_records(jobs):
    return [json.loads(open(j["path"]).read()) for j in jobs]


def test_verdict_says_which_won_and_the_runs_each_took():
    tuned = {"SGD cosine (best lr 1)": (0.97, 5), "SGD fixed": (0.98, 5), "diverged": (math.nan, 5)}
    line = report.verdict("digits-mlp", "accuracy", ("MLR-SNet (transferred)", 0.99, 1), tuned)
    assert line == ("digits-mlp: MLR-SNet (transferred) beats the best tuned schedule: accuracy 0.99 (1 run) vs "
                    "SGD fixed 0.98 (a grid of 5 runs)")  # fmt: skip
    assert " trails " in report.verdict("ptb", "perplexity", ("learned", 400.0, 1), {"cosine": (380.0, 6)})
    assert " ties " in report.verdict("ptb", "perplexity", ("learned", 380.0, 1), {"cosine": (380.0, 6)})
    assert "no tuned schedule finished" in report.verdict("t", "mse", ("learned", 0.2, 1), {"x": (math.nan, 4)})


def test_results_files_keep_their_history_and_the_tables_say_when_and_where(tmp_path):
    path = tmp_path / "quality_cpu.json"
    records = [{"task": "digits-cnn", "schedule": label, "seed": 0, "lr": lr, "metric": "accuracy", "test": test,
                "val": test, "train_seconds": 1.0, "val_curve": [[8, test]], "lrs": [0.1]}
               for label, lr, test in (("MLR-SNet meta-trained", None, 0.9), ("SGD fixed", 0.3, 0.8),
                                       ("SGD fixed", 1.0, 0.95))]  # fmt: skip
    summary = report.summarise(records, ["digits-cnn"])
    meta = {"seeds": 1, "training_cost_seconds": {"digits-cnn": {}}}
    first = {"date": "2026-01-01 10:00 UTC", "machine": "m1", "commit": "abc", "command": "quality.py"}
    history.write_json(path, {"meta": meta, "results": summary}, first)
    run = {**first, "date": "2026-02-01 10:00 UTC", "machine": "m2"}
    data = history.write_json(path, {"meta": meta, "results": summary}, run)
    data = history.write_json(path, {"meta": meta, "results": summary}, run)  # the same run again: one entry
    assert [r["machine"] for r in json.loads(path.read_text())["runs"]] == ["m1", "m2"]
    markdown = report.quality_markdown(data, "quality_cpu")
    assert markdown.startswith("# Quality benchmark (cpu)\n\n_Measured 2026-02-01 10:00 UTC on m2, commit abc:")
    assert "| SGD fixed | **0.9500 ± 0.0000** (lr 1) |" in markdown
    assert "- digits-cnn: MLR-SNet meta-trained trails the best tuned schedule: accuracy 0.9 (1 run) vs SGD fixed " \
           "0.95 (a grid of 2 runs)" in markdown  # fmt: skip
    assert history.measured([]).startswith("_When and where")


def test_committed_results_are_read_by_the_report_writer():
    """The committed quality results, their table as the writer renders it now, and their history."""
    data = json.loads((REPO / "benchmarks" / "results" / "quality_cpu.json").read_text())
    committed = (REPO / "benchmarks" / "results" / "quality_cpu.md").read_text()
    assert report.quality_markdown(data, "quality_cpu") == committed
    assert data["runs"] and all({"date", "machine", "commit", "command"} <= set(r) for r in data["runs"])


def test_a_task_and_a_rival_are_one_entry_each(tmp_path):
    """Registered entries become jobs of every row on the task, and the rival's jobs on it; removed afterwards."""
    from common.registry import registered
    from common.rows import Rival
    from common.tasks import Task

    task = Task("toy", "tabular", "mse", 100, 8, (0.1, 1.0), (1e-3, 1e-2), 1.0, 0.0, "regression-mlp", "1", "toy")
    rival = Rival("Adam 3e-4 (untuned)", 3e-4, "constant", optim="adamw_torch")
    with registered(task, rival):
        assert task_spec("toy") is task and row_labels()[-1] == rival.label
        plan = Plan(tmp_path, ["toy"], range(2), skip=set(), quick=False)
        jobs = [(j["schedule"], j["seed"], j["lr"]) for j in plan.first() + plan.second(None) if j["task"] == "toy"]
        assert ("SGD fixed", 0, 0.1) in jobs and ("SGD fixed", 0, 1.0) in jobs and ("AdamW cosine", 0, 1e-2) in jobs
        assert [j for j in jobs if j[0] == rival.label] == [(rival.label, 0, 3e-4), (rival.label, 1, 3e-4)]
        with pytest.raises(ValueError, match="taken"), registered(rival):
            pass
    assert "toy" not in ALL_TASKS and rival.label not in row_labels() and rival.label not in RIVALS
