"""Pictures of a schedule (its LR response to a loss curve) and of a training run, written to files.

Figures are built with :class:`matplotlib.figure.Figure` directly: no pyplot, no backend chosen or switched, so
the user's matplotlib state is left alone. Imports nothing from the package: each family draws its own schedule
(``mlrsnet_hf.mlrsnet.plotting``, ``mlrsnet_hf.lr_controller.plotting``) with these helpers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter


def format_lr_axis(ax: Axes, values: Sequence[float]) -> None:
    """Scale and label the y axis of LRs: log when the (positive) values span more than a decade, else linear.

    Ticks are plain numbers (``0.3``, ``0.001``) and, on a log axis, only at 1, 2 and 5 times a power of ten
    (1 alone over many decades), so a narrow range never piles up overlapping ``3x10^-1``-style labels.
    """
    finite = [v for v in values if math.isfinite(v)]
    label = FuncFormatter(lambda v, _: f"{v:.3g}")
    if finite and min(finite) > 0 and max(finite) / min(finite) > 10:
        decades = math.log10(max(finite) / min(finite))
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades < 3 else (1.0,)))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(label)


def decaying_loss_curve(start: float, end: float, num_steps: int) -> list[float]:
    """A smooth training-loss curve of ``num_steps`` steps, decaying exponentially from ``start`` to about ``end``."""
    return [end + (start - end) * math.exp(-6.0 * t / num_steps) for t in range(num_steps)]


def typical_loss_curve(num_steps: int = 600, num_classes: int = 10, final_loss: float = 0.01) -> list[float]:
    """A smooth, typical training-loss curve: ``ln C`` (chance level) decaying exponentially to ``final_loss``."""
    return decaying_loss_curve(math.log(num_classes), final_loss, num_steps)


def plot_lr_curve(lrs: Sequence[float], path: str | Path, title: str = "LR used in training") -> None:
    """Plot the LR of every optimizer step of a run."""
    fig = Figure(figsize=(7, 3), layout="constrained")
    ax = fig.subplots()
    ax.plot(range(len(lrs)), lrs, color="tab:blue")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    format_lr_axis(ax, lrs)
    ax.set_title(title)
    fig.savefig(path, dpi=110)


def plot_training_curves(
    log_history: list[dict], path: str | Path, title: str = "Training curves", eval_split: str = "evaluation"
) -> Figure:
    """Losses and every evaluation metric against the optimizer step, from ``trainer.state.log_history``.

    One panel for the losses (training loss, and the loss on ``eval_split``), then one per other evaluation
    metric. An evaluation repeated at the same step (a final ``evaluate()`` after the last periodic one) is
    one point. Returns the figure written.
    """
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    evals = sorted({k for h in log_history for k in h if k.startswith("eval_") and k not in _EVAL_BOOKKEEPING})
    metrics = [k for k in evals if k != "eval_loss"]
    fig = Figure(figsize=(7, 2.2 * (1 + len(metrics)) + 0.6), layout="constrained")
    axes = fig.subplots(1 + len(metrics), 1, sharex=True, squeeze=False)[:, 0]
    if train:
        axes[0].plot(*zip(*train, strict=True), color="tab:gray", label="training loss")
    if "eval_loss" in evals:
        axes[0].plot(
            *zip(*_by_step(log_history, "eval_loss"), strict=True),
            marker="o",
            color="tab:green",
            label=f"{eval_split} loss",
        )
    axes[0].set_ylabel("loss")
    axes[0].legend(fontsize=8)
    for ax, key in zip(axes[1:], metrics, strict=True):
        ax.plot(*zip(*_by_step(log_history, key), strict=True), marker="o", color="tab:green")
        ax.set_ylabel(f"{eval_split} {key.removeprefix('eval_')}")
    axes[-1].set_xlabel("optimizer step")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return fig


def _by_step(log_history: list[dict], key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of ``key`` in the log history, the last value of a step kept, in step order."""
    return sorted({h["step"]: h[key] for h in log_history if key in h and "step" in h}.items())


_EVAL_BOOKKEEPING = {"eval_runtime", "eval_samples_per_second", "eval_steps_per_second"}
