"""Are the quality benchmark's tuned baselines tuned? One LR past each grid end that a baseline chose.

``quality.py`` gives every tuned baseline the best LR of a 3-4 point grid, chosen on the validation split. A baseline
whose best LR is an end of its grid may do better past it, and then its row understates it. For every such choice in
a results JSON, this runs the next LR of the grid's progression past that end (seed 0, as the grid runs are) and
records whether the validation metric improves: ``benchmarks/results/grid_ends_<device>.{md,json}``.

    python benchmarks/grid_ends.py            # about 3 min on 2 CPU cores
    python benchmarks/grid_ends.py --quick    # a few steps, two choices (smoke test)
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from common import RESULTS, history
from common.harness import job, run_all, score
from common.tasks import task_spec


def grid_end_choices(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each tuned baseline whose chosen LR is an end of its grid, with the LR one step past that end."""
    choices = []
    for task, entry in results.items():
        for label, row in entry["schedules"].items():
            grid = row.get("grid_val")
            if not grid or len(grid) < 2:
                continue
            lrs = sorted(float(lr) for lr in grid)
            best = float(row["best_lr"])
            if best not in (lrs[0], lrs[-1]):
                continue
            ratio = lrs[-1] / lrs[-2] if best == lrs[-1] else lrs[1] / lrs[0]
            past = best * ratio if best == lrs[-1] else best / ratio
            choices.append({
                "task": task, "label": label, "metric": entry["metric"], "end": "top" if best == lrs[-1] else "bottom",
                "grid_lr": best, "grid_val": grid[str(row["best_lr"])], "lr": float(f"{past:.3g}"),
            })  # fmt: skip
    return choices


def to_markdown(rows: list[dict[str, Any]], source: str, runs: list[dict[str, Any]] | None = None) -> str:
    improved = [r for r in rows if r["better"]]
    lines = [
        "# Past the grid ends (seed 0, validation split)",
        "",
        history.measured(runs or []),
        "",
        f"Tuned baselines of `{source}` whose chosen LR is an end of their grid, run once more one LR past that end. "
        f"{len(improved)} of {len(rows)} do better on the validation split there: their rows in the quality table "
        "understate them.",
        "",
        "| task | baseline | grid end | its val | one past | val there | better |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['label']} | {r['grid_lr']:g} ({r['end']}) | {r['grid_val']:.4g} | {r['lr']:g} | "
            f"{r['val']:.4g} | {'**yes**' if r['better'] else 'no'} |"
        )
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS / "quality_cpu.json", help="a quality.py JSON")
    parser.add_argument("--workers", type=int, default=2, help="parallel runs (one CPU thread each)")
    parser.add_argument("--quick", action="store_true", help="a few steps, two choices (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run = history.this_run(args.workers)
    choices = grid_end_choices(json.loads(args.results.read_text())["results"])
    if args.quick:
        choices = choices[:2]
    name = "grid_ends_cpu" + ("_quick" if args.quick else "")
    runs = args.out / name
    jobs = [
        job(runs, c["task"], c["label"], 0, 8 if args.quick else task_spec(c["task"]).steps, args.quick, c["lr"])
        for c in choices
    ]
    records = run_all(jobs, args.workers, "one LR past the grid ends")
    rows = [
        {
            **c,
            "val": r["val"],
            "test": r["test"],
            "better": score(r, c["metric"]) > score({"val": c["grid_val"]}, c["metric"]),
        }
        for c, r in zip(choices, records, strict=True)
    ]
    data = history.write_json(args.out / f"{name}.json", {"source": str(args.results), "rows": rows}, run)
    markdown = to_markdown(rows, args.results.name, data["runs"])
    (args.out / f"{name}.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
