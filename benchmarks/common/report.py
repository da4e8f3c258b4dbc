"""The report writer: per task and row, the test metric of the chosen LR over the seeds (:func:`summarise`), and its
markdown table, training-cost table, plot and one-line verdicts; rows carried over from a previous results file.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .harness import Record, score  # noqa: E402
from .learned import CONTROLLER_TRAINING  # noqa: E402
from .registry import MLRSNET, row_labels  # noqa: E402
from .rows import BASELINES, RIVALS  # noqa: E402
from .tasks import HIGHER_IS_BETTER, task_spec  # noqa: E402


def summarise(
    records: list[Record], tasks: list[str], carried: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Per task and row: the test metric of the chosen LR over the seeds, its curves and LRs.

    ``carried`` (task -> label -> entry, from :func:`carry_over`): rows with no run here are copied from
    it, marked ``"carried_over": true``.
    """
    summary: dict[str, Any] = {}
    for name in tasks:
        metric = task_spec(name).metric
        rows: dict[str, Any] = {}
        for r in (r for r in records if r["task"] == name):
            rows.setdefault(r["schedule"], []).append(r)
        entries = {}
        for label in row_labels():
            runs = rows.get(label)
            if not runs:
                if label in (carried or {}).get(name, {}):
                    entries[label] = {**carried[name][label], "carried_over": True}
                continue
            if not any(r["seed"] == 0 for r in runs):  # a partial summary (results as they arrive): not yet
                continue
            grid = {str(r["lr"]): r["val"] for r in runs if r["seed"] == 0}
            best_lr = max((r for r in runs if r["seed"] == 0), key=lambda r: score(r, metric))["lr"]
            chosen = sorted((r for r in runs if r["lr"] == best_lr), key=lambda r: r["seed"])
            tests = [r["test"] for r in chosen]
            finite = [t for t in tests if math.isfinite(t)]
            entries[label] = {
                "best_lr": best_lr,
                "grid_val": grid if label in BASELINES else None,
                "test": tests,
                "mean": statistics.fmean(finite) if len(finite) == len(tests) else None,
                "std": statistics.stdev(finite) if len(finite) == len(tests) and len(finite) > 1 else 0.0,
                "diverged": len(tests) - len(finite),
                "train_seconds": statistics.fmean(r.get("train_seconds", math.nan) for r in chosen),
                "val_curve": chosen[0]["val_curve"],
                "lrs": chosen[0]["lrs"],
            }
            if "test_last_iterate" in chosen[0]:  # DoG: the averaged model is the result, the last iterate beside it
                entries[label]["test_last_iterate"] = [r["test_last_iterate"] for r in chosen]
        summary[name] = {"metric": metric, "higher_is_better": HIGHER_IS_BETTER[metric], "schedules": entries}
    return summary


CARRIED_NOTE = "†: carried over from the previous run (`--reuse`, not rerun here); its code is unchanged."


def to_markdown(summary: dict[str, Any]) -> str:
    tasks = list(summary)
    head = "| schedule | " + " | ".join(f"{t} ({summary[t]['metric']})" for t in tasks) + " |"
    lines = [head, "|---" * (len(tasks) + 1) + "|"]
    labels = row_labels()
    best = {}
    for t in tasks:
        means = {k: v["mean"] for k, v in summary[t]["schedules"].items() if v["mean"] is not None}
        if means:
            best[t] = (max if summary[t]["higher_is_better"] else min)(means, key=means.get)
    for label in labels:
        cells = []
        for t in tasks:
            e = summary[t]["schedules"].get(label)
            if e is None:
                cells.append("-")
                continue
            if e["mean"] is None:
                cell = f"diverged in {e['diverged']}/{len(e['test'])} seeds"
            else:
                digits = 1 if summary[t]["metric"] == "perplexity" else 4
                cell = f"{e['mean']:.{digits}f} ± {e['std']:.{digits}f}"
                if best.get(t) == label:
                    cell = f"**{cell}**"
            if label in RIVALS:
                cell += " (untuned)"
            elif e["grid_val"] is not None:
                cell += f" (lr {e['best_lr']:g})"
            if e.get("carried_over"):
                cell += " †"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if any(e.get("carried_over") for t in tasks for e in summary[t]["schedules"].values()):
        lines += ["", CARRIED_NOTE]
    return "\n".join(lines)


def merge_reused(files: list[dict[str, Any]]) -> dict[str, Any]:
    """Previous results JSONs as one (empty for none): each task's entries, steps, seeds and PPO training cost come
    from the first file that has the task (e.g. the last full run, then a run of tasks it lacks)."""
    if not files:
        return {}
    merged: dict[str, Any] = {"meta": {"tasks": {}, "seeds": {}, "training_cost_seconds": {}}, "results": {}}
    for data in files:
        meta = data.get("meta", {})
        for t, entry in data.get("results", {}).items():
            if t in merged["results"]:
                continue
            merged["results"][t] = entry
            merged["meta"]["tasks"][t] = meta.get("tasks", {}).get(t, {})
            merged["meta"]["seeds"][t] = meta.get("seeds")
            if t in meta.get("training_cost_seconds", {}):
                merged["meta"]["training_cost_seconds"][t] = meta["training_cost_seconds"][t]
    return merged


def carry_over(reused: dict[str, Any], tasks: list[str], skip: set[str]) -> tuple[dict, dict]:
    """The skipped rows' entries and the PPO training cost, per task, from a previous results JSON."""
    results, costs = reused.get("results", {}), reused.get("meta", {}).get("training_cost_seconds", {})
    entries = {t: {k: v for k, v in results.get(t, {}).get("schedules", {}).items() if k in skip} for t in tasks}
    training = {t: costs[t][CONTROLLER_TRAINING] for t in tasks
                if CONTROLLER_TRAINING in skip and CONTROLLER_TRAINING in costs.get(t, {})}  # fmt: skip
    return entries, training


COST_COLUMNS = (
    CONTROLLER_TRAINING,
    "MLR-SNet meta-training (one run, model trained too)",
    "a baseline run (SGD fixed)",
)


def training_costs(
    summary: dict[str, Any], controller_seconds: dict[str, float], carried_seconds: dict[str, float]
) -> tuple[dict[str, dict[str, float]], set[tuple[str, str]]]:
    """What learning each schedule cost per task (wall seconds of one worker), and the carried-over cells."""
    costs: dict[str, dict[str, float]] = {}
    carried: set[tuple[str, str]] = set()
    for t, s in summary.items():
        costs[t] = {}
        if t in controller_seconds:
            costs[t][CONTROLLER_TRAINING] = controller_seconds[t]
        elif t in carried_seconds:
            costs[t][CONTROLLER_TRAINING] = carried_seconds[t]
            carried.add((t, CONTROLLER_TRAINING))
        for column, label in zip(COST_COLUMNS[1:], ("MLR-SNet meta-trained", "SGD fixed"), strict=True):
            if label in s["schedules"]:
                costs[t][column] = s["schedules"][label]["train_seconds"]
                if s["schedules"][label].get("carried_over"):
                    carried.add((t, column))
    return costs, carried


def cost_table(costs: dict[str, dict[str, float]], carried: set[tuple[str, str]]) -> str:
    columns = [c for c in COST_COLUMNS if any(c in v for v in costs.values())]
    if not columns:
        return "(none here: their rows were skipped)"
    lines = ["| task | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for t, row in costs.items():
        cells = [f"{row[c]:.0f} s" + (" †" if (t, c) in carried else "") if c in row else "-" for c in columns]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    if carried:
        lines += ["", CARRIED_NOTE]
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> None:
    tasks = list(summary)
    width = 5 * len(tasks) + 2
    ncol = max(2, min(7, width // 3))  # legend columns ~3 inches wide
    legend = 0.2 * math.ceil(max(len(summary[t]["schedules"]) for t in tasks) / ncol) + 0.3  # inches
    fig, axes = plt.subplots(2, len(tasks), figsize=(width, 8 + legend), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for col, t in enumerate(tasks):
        for i, (label, e) in enumerate(summary[t]["schedules"].items()):
            style = {"color": cmap(i % 20), "linewidth": 2.2 if label in MLRSNET else 1.0, "label": label,
                     "linestyle": "--" if label in RIVALS else "-"}  # fmt: skip
            if e["val_curve"]:
                axes[0, col].plot(*zip(*e["val_curve"], strict=True), **style)
            if e["lrs"]:
                lrs = e["lrs"]
                axes[1, col].plot(range(1, len(lrs) + 1), [lr / max(max(lrs), 1e-30) for lr in lrs], **style)
        axes[0, col].set_title(f"{t}: validation {summary[t]['metric']} (seed 0)")
        axes[0, col].set_xlabel("optimizer step")
        if not summary[t]["higher_is_better"]:  # perplexity, MSE
            axes[0, col].set_yscale("log")
        axes[1, col].set_title(f"{t}: LR / largest LR (seed 0)")
        axes[1, col].set_xlabel("optimizer step")
        axes[1, col].set_yscale("log")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8)
    fig.tight_layout(rect=(0, legend / (8 + legend), 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def verdict(task: str, metric: str, learned: tuple[str, float, int], tuned: dict[str, tuple[float, int]]) -> str:
    """One line: the learned schedule (label, test metric, runs it took) against the best tuned row (its test metric,
    and the size of its LR grid: the runs its tuning took)."""
    label, value, runs = learned
    finite = {k: v for k, v in tuned.items() if math.isfinite(v[0])}
    if not finite:
        return f"{task}: {label} {metric} {value:.4g} ({runs} run); no tuned schedule finished"
    higher = HIGHER_IS_BETTER[metric]
    best = (max if higher else min)(finite, key=lambda k: finite[k][0])
    best_value, grid = finite[best]
    better = math.isfinite(value) and (value > best_value if higher else value < best_value)
    tie = math.isfinite(value) and math.isclose(value, best_value, rel_tol=1e-9)
    word = "ties" if tie else "beats" if better else "trails"
    return (f"{task}: {label} {word} the best tuned schedule: {metric} {value:.4g} ({runs} run{'s' * (runs != 1)}) "
            f"vs {best} {best_value:.4g} (a grid of {grid} run{'s' * (grid != 1)})")  # fmt: skip


def quality_verdicts(summary: dict[str, Any]) -> list[str]:
    """Per task, a line: MLR-SNet meta-trained (one run per seed) against the best tuned baseline (its mean test
    metric, and the runs its LR grid took)."""
    lines = []
    for task, s in summary.items():
        rows = s["schedules"]
        learned = rows.get("MLR-SNet meta-trained")
        if learned is None or learned["mean"] is None:
            continue
        tuned = {
            k: (e["mean"], len(e["grid_val"] or {}))
            for k, e in rows.items()
            if k in BASELINES and e["mean"] is not None
        }
        lines.append(verdict(task, s["metric"], ("MLR-SNet meta-trained", learned["mean"], 1), tuned))
    return lines


def quality_markdown(data: dict[str, Any], tag: str) -> str:
    """The quality results file's markdown: when and where measured, the table, the verdicts, the training costs."""
    from .history import measured

    meta, summary = data["meta"], data["results"]
    carried = {tuple(c.split(": ", 1)) for c in meta.get("carried_over", {}).get("training_cost_seconds", [])}
    verdicts = "\n".join(f"- {line}" for line in quality_verdicts(summary))
    return (
        f"# Quality benchmark ({tag.removeprefix('quality_')})\n\n{measured(data.get('runs', []))}\n\n"
        f"Test metric, mean ± std over {meta['seeds']} seed(s); best mean in bold; (lr x): the baseline's LR chosen "
        f"on the validation set; (untuned): one fixed setting, no LR grid.\n\n{to_markdown(summary)}\n\n"
        f"MLR-SNet meta-trained (one run per seed, no tuning) against the best tuned baseline (one run per LR of its "
        f"grid, then the other seeds):\n\n{verdicts}\n\nTraining cost of the learned schedules (wall time, one worker "
        f"thread, while the other worker ran):\n\n{cost_table(meta['training_cost_seconds'], carried)}\n"
    )
