"""The demo's report (``examples/demo.py``, ``make demo``): each baseline's LR chosen on the validation split, the
results so far per task with a one-line verdict, results.md / results.json, and the picture of every schedule."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mlrsnet_hf.plotting import format_lr_axis  # noqa: E402

from . import history  # noqa: E402
from .report import verdict  # noqa: E402

LEARNED = ("MLR-SNet (meta-trained online)", "MLR-SNet (transferred)", "MLR-SNet (transferred from images)")


def choose(runs: list[dict], grid: list[float], best) -> dict:
    """Of one schedule's runs over its grid, the LR best on the validation split (``best``: ``max`` or ``min`` of
    the metric; ties broken by the lower validation loss)."""
    sign = 1 if best is max else -1
    chosen = max(runs, key=lambda r: (finite_or_worst(sign * r["validation"]), finite_or_worst(-r["val_loss"])))
    return {
        "final": chosen["final"],
        "validation": chosen["validation"],
        "lr": chosen["lr"],
        "interior": len(grid) > 2 and grid[0] < chosen["lr"] < grid[-1],
        "curve": chosen["curve"],
        "lrs": chosen["lrs"],
        "grid": {str(r["lr"]): {"validation": r["validation"], "test": r["final"]} for r in runs},
    }


def finite_or_worst(score: float) -> float:
    """A score to maximise, a diverged run's (NaN / inf) counted as the worst."""
    return score if math.isfinite(score) else -math.inf


def plot(results: dict, path: Path) -> None:
    """Per task: the test metric against the step (top) and the LR of every step (bottom), for every schedule."""
    tasks = list(results)
    fig, axes = plt.subplots(2, len(tasks), figsize=(6 * len(tasks), 7), squeeze=False)
    for col, name in enumerate(tasks):
        task = results[name]
        all_lrs = []
        for label, r in task["runs"].items():
            axes[0, col].plot(*zip(*r["curve"], strict=True), marker=".", label=label)
            axes[1, col].plot(range(1, len(r["lrs"]) + 1), r["lrs"], label=label)
            all_lrs += r["lrs"]
        axes[0, col].set_title(f"{name}: test {task['metric']}")
        axes[0, col].set_xlabel("optimizer step")
        axes[0, col].legend(fontsize=7)
        axes[1, col].set_title(f"{name}: learning rate of every step")
        axes[1, col].set_xlabel("optimizer step")
        format_lr_axis(axes[1, col], all_lrs)
        axes[1, col].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def selection_notes(results: dict, grids: dict[str, list[float]]) -> str:
    """How the baselines' LRs were chosen, and whether each chosen LR lies inside its grid."""
    lines = [
        "Baselines: each hand-designed schedule trained with every LR of its task's grid; the LR kept is the one with",
        "the best metric on the validation split (the held-out meta set, which the test set never overlaps; ties",
        "broken by validation loss). The test metric plays no part in the choice. MLR-SNet got no tuning.",
        "",
        "| task | schedule | LR grid | chosen LR | validation | inside the grid |",
        "|---|---|---|---|---|---|",
    ]
    for name, task in results.items():
        for label, r in task["runs"].items():
            if "grid" in r:
                grid = " / ".join(f"{lr:g}" for lr in grids[name])
                inside = "yes" if r["interior"] else "no: at an end of the grid"
                kind = label.split(" (")[0]
                lines.append(f"| {name} | {kind} | {grid} | {r['lr']:g} | {r['validation']:.4g} | {inside} |")
    return "\n".join(lines)


def summarise(records: dict[str, dict], plan: list[dict], grids: dict[str, list[float]]) -> dict:
    """The results so far, per task: the learned schedule's run, each baseline at its LR chosen on validation, and
    a verdict (the learned schedule's test metric and its 1 run against the best tuned one's, with its grid's size)."""
    results: dict = {}
    for job in plan:
        record = records.get(job["path"])
        if record is None:
            continue
        task = results.setdefault(job["task"], {"metric": job["metric"], "runs": {}})
        if job["label"] in LEARNED:
            task["runs"][job["label"]] = {k: v for k, v in record.items() if k not in ("task", "schedule", "lr")}
    for name, task in results.items():
        best = max if task["metric"] == "accuracy" else min
        for kind in dict.fromkeys(j["label"] for j in plan if j["task"] == name and j["label"] not in LEARNED):
            runs = [
                records[j["path"]] for j in plan if j["task"] == name and j["label"] == kind and j["path"] in records
            ]
            if runs:
                chosen = choose(runs, grids[name], best)
                task["runs"][f"{kind} (best lr {chosen['lr']:g})"] = chosen
        learned = next(((k, r) for k, r in task["runs"].items() if k in LEARNED), None)
        tuned = {k: (r["final"], len(r["grid"])) for k, r in task["runs"].items() if "grid" in r}
        if learned and tuned:
            task["verdict"] = verdict(name, task["metric"], (learned[0], learned[1]["final"], 1), tuned)
    return results


def write(out: Path, results: dict, title: str, grids: dict, run: dict, done: str) -> str:
    """results.json and results.md (the table, the verdicts, how the baselines were chosen); returns the table."""
    lines = ["| task | schedule | final test metric |", "|---|---|---|"]
    for name, task in results.items():
        for label, r in task["runs"].items():
            lines.append(f"| {name} | {label} | {task['metric']} {r['final']:.4g} |")
    table = "\n".join(lines)
    verdicts = "\n".join(f"- {t['verdict']}" for t in results.values() if "verdict" in t)
    (out / "results.md").write_text(
        f"# {title}\n\n{history.measured([run])} {done}\n\n{table}\n\nVerdicts (test metric; the learned schedule took one run, a tuned "
        f"one a run per LR of its grid):\n\n{verdicts}\n\n{selection_notes(results, grids)}\n"
    )
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    return table
