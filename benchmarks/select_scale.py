"""Choose the learned LR scale's mechanism on the *validation* splits of the quality benchmark's tasks (issue 32).

    python benchmarks/select_scale.py [--seeds 2] [--workers 2]   # writes benchmarks/results/select_scale_cpu.{json,md}

Every candidate runs the transferred trajectory schedule (from the task's ``source``, meta-trained with seed 0, as
in ``quality.py``) on the six quality tasks, with the same data, models, budgets and clipping, and is scored by the
final *validation* metric; no test metric is read. Candidates: the paper's fixed gamma (the reference), Mechanic
(``online_scale="mechanic"``: SGD, and over AdamW; with and without its lambda), Prodigy and D-Adaptation SGD as the
optimizer with the shape as their LR multiplier. Each run is one JSON file under ``--out/select_scale_cpu/runs``
(a rerun resumes); the table gives each candidate's validation metric per task, its mean LR, and its mean rank.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from common import RESULTS, history
from common.harness import job, run_all, score
from common.learned import MLRSNET_ROWS, SCALE_EXPERIMENTS, schedule_path
from common.tasks import HIGHER_IS_BETTER, QUALITY_TASKS, task_spec

REFERENCE = "MLR-SNet transferred, trajectory"
CANDIDATES = (
    REFERENCE,
    "MLR-SNet transferred, trajectory + online scale (Mechanic)",
    *SCALE_EXPERIMENTS,
    "MLR-SNet transferred, trajectory + Prodigy scale",
)
assert all(c in MLRSNET_ROWS or c in SCALE_EXPERIMENTS for c in CANDIDATES)


def short(label: str) -> str:
    return label.removeprefix("MLR-SNet transferred, ").removeprefix("trajectory + ") or label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(QUALITY_TASKS))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    run = history.this_run(args.workers)
    out = args.out / "select_scale_cpu"
    tasks = args.tasks
    sources = sorted({task_spec(t).source for t in tasks})
    schedules = {s: out / "schedules" / s for s in sources}
    run_all(
        [job(out, s, "MLR-SNet meta-trained", 0, task_spec(s).steps, False, schedule_dir=str(schedules[s]))
         for s in sources],
        args.workers, "source schedules",
    )  # fmt: skip
    jobs = [
        job(out, t, c, seed, task_spec(t).steps, False, source_schedule=schedule_path(schedules[task_spec(t).source], True),
            source_task=task_spec(t).source)
        for t in tasks for c in CANDIDATES for seed in range(args.seeds)
    ]  # fmt: skip
    records = run_all(jobs, args.workers, "scale candidates")
    table: dict[str, dict[str, dict[str, float]]] = {}
    for c in CANDIDATES:
        for t in tasks:
            rows = [r for r in records if r["schedule"] == c and r["task"] == t]
            lrs = [statistics.fmean(r["lrs"]) for r in rows if r.get("lrs")]
            table.setdefault(c, {})[t] = {
                "val": statistics.fmean(r["val"] for r in rows),
                "mean_lr": statistics.fmean(lrs) if lrs else float("nan"),
                "score": statistics.fmean(score(r, r["metric"]) for r in rows),
            }
    ranks = dict.fromkeys(CANDIDATES, 0.0)
    for t in tasks:
        for i, c in enumerate(sorted(CANDIDATES, key=lambda c: -table[c][t]["score"])):
            ranks[c] += (i + 1) / len(tasks)
    wins = {c: sum(table[c][t]["score"] > table[REFERENCE][t]["score"] for t in tasks) for c in CANDIDATES}
    lines = [
        "| candidate | "
        + " | ".join(f"{t} (val {task_spec(t).metric})" for t in tasks)
        + " | beats fixed gamma | mean rank |",
        "|---" * (len(tasks) + 3) + "|",
    ]
    for c in sorted(CANDIDATES, key=ranks.get):
        cells = [f"{table[c][t]['val']:.4g} (LR {table[c][t]['mean_lr']:.2g})" for t in tasks]
        lines.append(f"| {short(c)} | " + " | ".join(cells) + f" | {wins[c]} of {len(tasks)} | {ranks[c]:.2f} |")
    md = "\n".join(lines)
    higher = {t: HIGHER_IS_BETTER[task_spec(t).metric] for t in tasks}
    data = {"seeds": args.seeds, "tasks": tasks, "higher_is_better": higher, "results": table, "mean_rank": ranks,
            "beats_fixed_gamma": wins}  # fmt: skip
    data = history.write_json(args.out / "select_scale_cpu.json", data, run)
    (args.out / "select_scale_cpu.md").write_text(
        f"# The learned scale's mechanism, on the validation splits\n\n{history.measured(data['runs'])}\n\n"
        "Final validation metric, mean over "
        f"{args.seeds} seed(s), and (LR) the mean LR of the run (the step size used); every candidate runs the "
        "transferred trajectory schedule; mean rank over the tasks (1 = best). `python benchmarks/select_scale.py`.\n\n"
        + md
        + "\n"
    )
    print(md)


if __name__ == "__main__":
    main()
