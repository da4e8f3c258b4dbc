"""How much does the LR scale matter? A 4-decade sweep of it, fixed or learned online (issue 32), on every task.

    python benchmarks/scale.py                        # writes benchmarks/results/scale_cpu.{json,md,png}
    python benchmarks/scale.py --quick --out /tmp/s   # a few steps, 3 scales, 2 tasks (the smoke test)

A transferred MLR-SNet schedule carries its *shape*; its scale (``lr_t = gamma * p_t``, gamma fixed) can be far
off on a new task. On each task of the quality benchmark (``quality.QUALITY_TASKS``: same data, models, step
budgets, batches, clipping and weight decay) and for x over 13 points in 1/3-decade steps spanning 4 decades
centred on the task's paper scale c (``Task.paper_scale``: 1 for the image and regression tasks, 40 for the LSTM,
1 for GPT-2, whose paper rule is ``"auto"``), so x = c * 10^(k/3), k = -6..6, seed 0:

* "SGD cosine": SGD with cosine annealing from LR x (the tuned baseline's family);
* "fixed scale": the transferred trajectory (quality's "MLR-SNet transferred, trajectory", meta-trained with
  seed 0 on ``Task.source``) with gamma = x;
* "online scale": the same schedule with its scale learned during the run by Mechanic (``online_scale=
  "mechanic"``): the update uses S_t * p_t / p_1, and neither gamma nor ``learning_rate`` = x enters it, so it is
  run at three x only (both ends and c) to show that they give the same run.

Each run records its final validation and test metric and its mean effective LR (the mean over the steps of the
LR the update used: S_t * lr_t for the online scale). Per task the table gives the best fixed scale on the
validation split (its x and mean LR), the online run's mean LR at x = c, their ratio and whether it is within 2x,
and the validation metric of both; the figure plots the test metric against x for the three families (a flat
curve: the scale needs no choosing). Runs are JSON files under ``--out/scale_<tag>/runs`` (a rerun resumes).
"""

from __future__ import annotations

import argparse
import logging
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from common import RESULTS, SHARED, history  # noqa: E402
from common.harness import job, run_all, score  # noqa: E402
from common.learned import schedule_path  # noqa: E402
from common.tasks import HIGHER_IS_BETTER, QUALITY_TASKS, task_spec  # noqa: E402

logger = logging.getLogger("scale")
SOURCE_ROW = "MLR-SNet meta-trained"
FAMILIES = {  # family: the quality.py row run with lr = x
    "SGD cosine": "SGD cosine",
    "fixed scale": "MLR-SNet transferred, trajectory",
    "online scale": "MLR-SNet transferred, trajectory + online scale (Mechanic)",
}
QUICK_TASKS = ("digits-cnn", "regression-mlp")


def scales(center: float, quick: bool) -> list[float]:
    """x = center * 10^(k/3), k = -6..6 (3 significant digits); quick: k = -3, 0, 3."""
    return [float(f"{center * 10 ** (k / 3):.3g}") for k in ((-3, 0, 3) if quick else range(-6, 7))]


def online_points(grid: list[float], center: float) -> tuple[float, ...]:
    """The x at which the online scale runs: the grid's ends and c (x does not enter its LR)."""
    return (grid[0], float(f"{center:.3g}"), grid[-1])


def mean_lr(record: dict[str, Any]) -> float:
    return statistics.fmean(record["lrs"]) if record.get("lrs") else math.nan


def task_summary(task: str, records: list[dict[str, Any]], grid: list[float]) -> dict[str, Any]:
    """The runs of one task by family and x, and the comparison of the best fixed scale with the online one at c."""
    spec = task_spec(task)
    center = float(f"{spec.paper_scale:.3g}")
    runs = {
        family: [
            {"x": r["lr"], "val": r["val"], "test": r["test"], "mean_lr": mean_lr(r), "error": r.get("error")}
            for x in grid
            for r in records
            if r["task"] == task and r["schedule"] == row and r["lr"] == x
        ]
        for family, row in FAMILIES.items()
    }
    fixed = max(runs["fixed scale"], key=lambda r: score(r, spec.metric))
    online = next(r for r in runs["online scale"] if r["x"] == center)
    sgd = max(runs["SGD cosine"], key=lambda r: score(r, spec.metric))
    ratio = online["mean_lr"] / fixed["mean_lr"] if fixed["mean_lr"] > 0 else math.nan
    return {
        "metric": spec.metric,
        "higher_is_better": HIGHER_IS_BETTER[spec.metric],
        "paper_scale": center,
        "grid": grid,
        "runs": runs,
        "best_fixed": {k: fixed[k] for k in ("x", "mean_lr", "val", "test")},
        "online_at_paper_scale": {k: online[k] for k in ("x", "mean_lr", "val", "test")},
        "best_sgd_cosine": {k: sgd[k] for k in ("x", "mean_lr", "val", "test")},
        "online_to_fixed_lr": ratio,
        "within_2x": bool(0.5 <= ratio <= 2),
    }


def fmt(value: float, metric: str) -> str:
    if not math.isfinite(value):
        return "diverged"
    return f"{value:.1f}" if metric == "perplexity" else f"{value:.4f}"


def to_markdown(results: dict[str, Any]) -> str:
    lines = [
        "| task (val metric) | best fixed scale x (val) | its mean LR | its val | online scale: mean LR at x = c | "
        "its val | online / fixed mean LR | within 2x | best SGD cosine x: val |",
        "|---" * 9 + "|",
    ]
    for task, s in results.items():
        f, o, g, m = s["best_fixed"], s["online_at_paper_scale"], s["best_sgd_cosine"], s["metric"]
        lines.append(
            f"| {task} ({m}) | {f['x']:g} | {f['mean_lr']:.3g} | {fmt(f['val'], m)} | {o['mean_lr']:.3g} (c = "
            f"{o['x']:g}) | {fmt(o['val'], m)} | {s['online_to_fixed_lr']:.3g} | "
            f"{'**yes**' if s['within_2x'] else 'no'} | {g['x']:g}: {fmt(g['val'], m)} |"
        )
    for task, s in results.items():
        m = s["metric"]
        lines += [
            "",
            f"**{task}**: test {m} (val {m}, mean LR) at each x; c = {s['paper_scale']:g}.",
            "",
            "| x | " + " | ".join(FAMILIES) + " |",
            "|---" * (len(FAMILIES) + 1) + "|",
        ]
        for x in s["grid"]:
            cells = []
            for family in FAMILIES:
                r = next((r for r in s["runs"][family] if r["x"] == x), None)
                cells.append("-" if r is None else f"{fmt(r['test'], m)} ({fmt(r['val'], m)}, {r['mean_lr']:.3g})")
            lines.append(f"| {x:g}{' (c)' if x == s['paper_scale'] else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """One panel per task: the final test metric against x (log axis) for the three families."""
    ncol = min(3, len(results))
    nrow = math.ceil(len(results) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.5 * ncol, 3.6 * nrow + 0.5), squeeze=False)
    for ax, (task, s) in zip(axes.flat, results.items(), strict=False):
        for family, style in zip(FAMILIES, ("-o", "-s", "-^"), strict=True):
            points = [(r["x"], r["test"]) for r in s["runs"][family] if math.isfinite(r["test"])]
            if points:
                ax.plot(*zip(*points, strict=True), style, label=family, markersize=4)
        ax.axvline(s["paper_scale"], color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        # diverged runs reach 1e80: show the range where the runs differ, up to 4x the best
        if not s["higher_is_better"]:
            ax.set_yscale("log")
            values = [r["test"] for runs in s["runs"].values() for r in runs if math.isfinite(r["test"])]
            if values:
                ax.set_ylim(min(values) / 1.1, 4 * min(values))
        ax.set_title(f"{task}: test {s['metric']}")
        ax.set_xlabel("x (LR, gamma, or the online scale's base LR)")
    for ax in list(axes.flat)[len(results) :]:
        ax.axis("off")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(FAMILIES), fontsize=9)
    fig.tight_layout(rect=(0, 0.5 / (3.6 * nrow + 0.5), 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=list(QUALITY_TASKS), help="default: all (quick: two)")
    parser.add_argument("--workers", type=int, default=2, help="parallel runs (one CPU thread each)")
    parser.add_argument("--quick", action="store_true", help="a few steps, 3 scales, 2 tasks (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run = history.this_run(args.workers)
    tasks = args.tasks or list(QUICK_TASKS if args.quick else QUALITY_TASKS)
    text = [t for t in tasks if task_spec(t).modality == "text"]
    if text and not (SHARED / "data" / "ptb" / "ptb.valid.txt").is_file():
        parser.error(f"tasks {text} need the Penn Treebank text in {SHARED / 'data' / 'ptb'}: choose others")
    tag = "cpu_quick" if args.quick else "cpu"
    out = args.out / f"scale_{tag}"
    started = time.time()

    def steps(t: str) -> int:
        return 8 if args.quick else task_spec(t).steps

    grids = {t: scales(task_spec(t).paper_scale, args.quick) for t in tasks}
    sources = sorted({task_spec(t).source for t in tasks})
    schedule_dir = {s: out / "schedules" / f"{s}-h1" for s in sources}
    # Phase 1: the source schedules (meta-trained with seed 0, as quality.py's) and the SGD cosine runs.
    first = [job(out, s, SOURCE_ROW, 0, steps(s), args.quick, schedule_dir=str(schedule_dir[s])) for s in sources]
    first += [job(out, t, FAMILIES["SGD cosine"], 0, steps(t), args.quick, x) for t in tasks for x in grids[t]]
    records = run_all(first, args.workers, "source schedules and SGD cosine")
    # Phase 2: the transferred trajectory at every scale, fixed and learned online.
    second = [
        job(out, t, FAMILIES[family], 0, steps(t), args.quick, x, source_task=task_spec(t).source,
            source_schedule=schedule_path(schedule_dir[task_spec(t).source], trajectory=True))
        for t in tasks for family in ("fixed scale", "online scale") for x in grids[t]
        if family == "fixed scale" or x in online_points(grids[t], task_spec(t).paper_scale)
    ]  # fmt: skip
    records += run_all(second, args.workers, "transferred schedule, fixed and online scale")

    results = {t: task_summary(t, records, grids[t]) for t in tasks}
    meta = {
        "families": FAMILIES,
        "tasks": {
            t: {"steps": steps(t), "source": task_spec(t).source, "description": task_spec(t).description}
            for t in tasks
        },
        "seed": 0,
        "machine": f"{platform.processor() or platform.machine()}, {args.workers} worker(s) x 1 thread, "
        f"torch {torch.__version__}",
        "wall_seconds_this_invocation": round(time.time() - started, 1),
        "run_seconds_total": round(sum(r.get("train_seconds", 0.0) for r in records), 1),
    }
    table = to_markdown(results)
    args.out.mkdir(parents=True, exist_ok=True)
    data = history.write_json(args.out / f"scale_{tag}.json", {"meta": meta, "results": results}, run)
    (args.out / f"scale_{tag}.md").write_text(
        f"# The LR scale: fixed vs learned online ({tag})\n\n{history.measured(data['runs'])}\n\nSeed 0; {len(grids[tasks[0]])} scales x = c * "
        "10^(k/3) per task around the paper's scale c. The summary: the best fixed scale (gamma) of the transferred "
        "trajectory on the validation split, beside the online scale (Mechanic) run from x = c; the mean LR is the "
        "mean over the run's steps of the LR its updates used. Then per task: the test metric (validation metric, "
        "mean LR) of every run.\n\n"
        f"{table}\n"
    )
    plot(results, args.out / f"scale_{tag}.png")
    print("\n" + table)
    print(f"\nWrote {args.out / f'scale_{tag}'}.{{json,md,png}} in {meta['wall_seconds_this_invocation']:.0f} s")


if __name__ == "__main__":
    main()
