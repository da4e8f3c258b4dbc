"""Quality: learned schedules vs tuned hand-designed ones, on real data at CPU scale.

    python benchmarks/quality.py                       # full run, writes benchmarks/results/quality_cpu.{json,md,png}
    python benchmarks/quality.py --quick --out /tmp/q  # a few steps per run (the smoke test)
    python benchmarks/quality.py --tasks digits-cnn ptb-lstm --seeds 5 --workers 2
    # rerun all but the PPO rows (about 35 min), carrying those over from the previous results:
    python benchmarks/quality.py --reuse benchmarks/results/quality_cpu.json \
        --skip "PPO controller trained" "PPO controller transferred" "PPO controller training"

The tasks are the registry's (``benchmarks/common/tasks.py``), the rows too (``common/rows.py``, ``common/learned.py``);
``--tasks`` also takes robustness.py's ``digits-cnn@<corruption>`` variants. Each run is one JSON file under
``--out/quality_<tag>/runs`` (a rerun skips finished runs: the benchmark resumes); the tables so far are rewritten
after each run to ``--out/quality_<tag>/partial.md``. ``--skip LABEL ...`` runs none of those rows; with ``--reuse``
previous results JSONs, their entries (and the PPO training cost) are copied from them, marked as carried over (each
task's from the first file that has it); ``--only LABEL ...``: every other row is skipped ("MLR-SNet meta-trained"
learns the transferred rows' schedules). The results JSON keeps the history of its runs ("runs").

Protocol """

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from common import RESULTS, SHARED, history, report
from common.harness import Harness, logger
from common.learned import CONTROLLER_SETTINGS, CONTROLLER_TRAINING, META
from common.plan import OFFICIAL, PROTOCOL, Plan
from common.registry import row_labels
from common.rows import BASELINES, RIVALS
from common.steps import HYPERGRADIENT_BETA
from common.tasks import ALL_TASKS, QUALITY_TASKS, task_spec
from common.training import run_job

from mlrsnet_hf import convert_official


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__ + PROTOCOL, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=list(QUALITY_TASKS), choices=list(ALL_TASKS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="parallel runs (one CPU thread each)")
    parser.add_argument("--quick", action="store_true", help="a few steps, one LR, one seed (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    labels = [*row_labels(), CONTROLLER_TRAINING]
    parser.add_argument("--skip", nargs="+", default=[], metavar="LABEL", help=f"rows not to run (any of {labels})")
    parser.add_argument("--only", nargs="+", default=[], metavar="LABEL",
                        help="the rows to run (and learning steps: 'MLR-SNet meta-trained' for the transferred rows' "
                             "schedules, unless on disk): every other one is skipped")  # fmt: skip
    parser.add_argument("--reuse", type=Path, nargs="+", metavar="JSON",
                        help="previous quality_cpu.json files: the skipped rows (and the PPO training cost) are "
                             "copied from them, marked as carried over; each task's from the first file that "
                             "has the task")  # fmt: skip
    args = parser.parse_args()
    if args.skip and args.only:
        parser.error("--skip and --only: give one of them")
    if unknown := {*args.skip, *args.only} - set(labels):
        parser.error(f"--skip/--only: unknown labels {sorted(unknown)}; the labels are {labels}")
    args.skip = set(labels) - set(args.only) if args.only else set(args.skip)
    text = sorted(
        t for t in {*args.tasks, *(task_spec(t).source for t in args.tasks)} if task_spec(t).modality == "text"
    )
    if text and not (SHARED / "data" / "ptb" / "ptb.valid.txt").is_file():
        parser.error(
            f"tasks {text} need the Penn Treebank text in {SHARED / 'data' / 'ptb'}: choose others with --tasks"
        )
    tag = "cpu_quick" if args.quick else "cpu"
    args.plan = Plan(
        args.out / f"quality_{tag}", args.tasks, range(1 if args.quick else args.seeds), args.skip, args.quick
    )
    if missing := args.plan.missing():
        parser.error("rows whose learning step is skipped but not on disk: " + "; ".join(missing) + ": skip them too")
    return args


def main() -> None:
    args = parse()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    plan, tasks, tag, started, run = (
        args.plan,
        args.tasks,
        args.plan.out.name,
        time.time(),
        history.this_run(args.workers),
    )
    reused = report.merge_reused([json.loads(f.read_text()) for f in args.reuse or []])  # before anything is written
    carried, carried_seconds = report.carry_over(reused, tasks, args.skip) if reused else ({}, {})
    if reused:
        for t in tasks:
            if reused["meta"]["tasks"].get(t, {}).get("steps") != plan.steps(t) or reused["meta"]["seeds"].get(
                t
            ) != len(plan.seeds):
                logger.warning("--reuse %s: %s was run with other steps or seeds than this run", args.reuse, t)
        if absent := sorted(
            {label for t in tasks for label in args.skip - {CONTROLLER_TRAINING} if label not in carried[t]}
        ):
            logger.warning("--reuse %s holds no entry for some tasks of %s: those rows stay empty", args.reuse, absent)
    official = SHARED / "official"
    if plan.runs("MLR-SNet released") and all((official / n).is_file() for n in OFFICIAL):
        convert_official([official / n for n in OFFICIAL], plan.released_dir)
    first = plan.first()

    def partial(records: list[dict]) -> None:  # the tables so far, after each run
        table = report.to_markdown(report.summarise(records, tasks, carried))
        (plan.out / "partial.md").write_text(f"# Quality benchmark ({tag}), so far\n\n{table}\n")

    harness = Harness(len(first) + len(plan.second(None)), args.workers, on_record=partial)
    records = harness.phase("meta-training, controller training and LR grids", first, run_job)
    controller_seconds = {r["task"]: r["train_seconds"] for r in records if r["schedule"] == CONTROLLER_TRAINING}
    records = [r for r in records if r["task"] in tasks] + harness.phase(
        "seeds, transfer and rivals", plan.second(records), run_job
    )
    harness.close()

    summary = report.summarise(records, tasks, carried)
    costs, carried_costs = report.training_costs(summary, controller_seconds, carried_seconds)
    meta = {
        "protocol": PROTOCOL, "tasks": {t: task_spec(t).to_dict() | {"steps": plan.steps(t)} for t in tasks},
        "baselines": {k: b.describe() for k, b in BASELINES.items()},
        "rivals": {k: r.describe() for k, r in RIVALS.items()},
        "meta_hyperparameters": META, "hypergradient_beta": HYPERGRADIENT_BETA, "controller": CONTROLLER_SETTINGS,
        "training_cost_seconds": costs, "seeds": len(plan.seeds),
        "machine": f"{history.machine().split(',')[0]}, {args.workers} worker(s) x 1 thread, torch {torch.__version__}",
        "wall_seconds_this_invocation": round(time.time() - started, 1),  # a resumed run counts what it ran
        "run_seconds_total": round(sum(r.get("train_seconds", 0.0) for r in records), 1),  # the runs, one worker each
    }  # fmt: skip
    if args.reuse:
        meta["carried_over"] = {"from": [str(f) for f in args.reuse], "rows": {t: sorted(carried[t]) for t in tasks},
                                "training_cost_seconds": sorted(f"{t}: {c}" for t, c in carried_costs)}  # fmt: skip
    run["wall_seconds"] = meta["wall_seconds_this_invocation"]
    data = history.write_json(args.out / f"{tag}.json", {"meta": meta, "results": summary}, run)
    (args.out / f"{tag}.md").write_text(report.quality_markdown(data, tag))
    report.plot(summary, args.out / f"{tag}.png")
    print("\n" + report.to_markdown(summary) + "\n\n" + "\n".join(report.quality_verdicts(summary)))
    print(f"\nWrote {args.out / tag}.{{json,md,png}} in {meta['wall_seconds_this_invocation']:.0f} s")


if __name__ == "__main__":
    main()
