"""Pictures of a schedule (its LR response to a loss curve) and of a training run, written to files.

Figures are built with :class:`matplotlib.figure.Figure` directly: no pyplot, no backend chosen or switched, so
the user's matplotlib state is left alone. Imports nothing from the package at runtime (the schedules come in
as arguments).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

if TYPE_CHECKING:
    from .lr_controller import LRController
    from .schedule import MLRSNetSchedule


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


def controller_loss_curve(controller: LRController, num_steps: int) -> list[float]:
    """A loss curve in the range of the data an LR controller was trained on.

    From the first to the last training loss of its last complete training episode (``train_loss_range`` of
    its training record); for a controller trained before that was recorded, mean +- one standard deviation
    of the training loss in its frozen observation statistics; for an untrained one, :func:`typical_loss_curve`.
    """
    recorded = controller.training_run.get("train_loss_range")
    if recorded:
        return decaying_loss_curve(float(recorded[0]), float(recorded[1]), num_steps)
    mean, std = float(controller.obs_mean[0]), math.sqrt(max(float(controller.obs_var[0]), 0.0))
    if mean > 0 and std > 0:
        return decaying_loss_curve(mean + std, max(mean - std, mean / 10), num_steps)
    return typical_loss_curve(num_steps)


def default_preview_settings(schedule: MLRSNetSchedule) -> tuple[int, float]:
    """``(num_classes, base_lr)`` for a preview: the meta-training task's classes (else 10) and base LR 1."""
    return int(schedule.meta_training.get("num_classes") or 10), 1.0


def plot_lr_response(
    schedule: MLRSNetSchedule,
    path: str | Path,
    losses: Sequence[float] | None = None,
    num_classes: int | None = None,
    base_lr: float | None = None,
    title: str | None = None,
) -> list[float]:
    """Plot the loss fed in (top) and the LR the schedule sets (bottom) to ``path``; return the LRs.

    Uses :meth:`MLRSNetSchedule.simulate`, so stage switches and gamma are those of a real run of
    ``len(losses)`` steps. ``losses`` defaults to :func:`typical_loss_curve`.
    """
    default_classes, default_base_lr = default_preview_settings(schedule)
    num_classes = num_classes or default_classes
    base_lr = base_lr or default_base_lr
    losses = list(losses) if losses is not None else typical_loss_curve(num_classes=num_classes)
    lrs = schedule.simulate(losses, num_classes=num_classes, base_lr=base_lr)

    fig = Figure(figsize=(7, 5), layout="constrained")
    ax_loss, ax_lr = fig.subplots(2, 1, sharex=True)
    steps = range(len(losses))
    ax_loss.plot(steps, losses, color="tab:gray")
    ax_loss.set_ylabel("training loss (input)")
    ax_lr.plot(steps, lrs, color="tab:blue")
    ylabel = {"relative": "LR / learning_rate", "range_test": "LR / range-test LR"}.get(str(schedule.gamma))
    ax_lr.set_ylabel(ylabel or "learning rate")
    ax_lr.set_xlabel("optimizer step")
    format_lr_axis(ax_lr, lrs)
    snapshot_steps = (schedule.meta_training.get("snapshots") or {}).get("steps", [])
    for stage, first in enumerate(schedule.stage_boundaries(len(losses))):
        if stage > 0:
            for ax in (ax_loss, ax_lr):
                ax.axvline(first, color="k", linestyle="--", linewidth=0.8)
        if stage < len(snapshot_steps):  # a trajectory schedule: say where each network comes from
            ax_lr.annotate(
                f"net from step {snapshot_steps[stage]} of meta-training",
                (first, 0.02),
                xycoords=("data", "axes fraction"),
                xytext=(4, 0),
                textcoords="offset points",
                fontsize=8,
            )
    gamma = schedule.gamma if isinstance(schedule.gamma, str) else f"{schedule.gamma:g}"
    ax_loss.set_title(
        title or f"MLR-SNet LR response ({schedule.num_stages} stage(s), gamma={gamma}, C={num_classes})"
    )
    fig.savefig(path, dpi=110)
    return lrs


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


def plot_controller_response(
    controller: LRController,
    path: str | Path,
    num_steps: int | None = None,
    losses: Sequence[float] | None = None,
    initial_lrs: Sequence[float] | None = None,
) -> list[float]:
    """Plot an LR controller's LR along a loss curve, from each initial LR; return the LRs from the last one.

    ``losses`` defaults to :func:`controller_loss_curve` (the range of its training data) of ``num_steps``
    steps (default: the length of its training episodes, else 1000); ``initial_lrs`` to the initial LRs it
    was trained with (else 1e-3).
    """
    if losses is None:
        num_steps = num_steps or int(controller.training_run.get("episode_steps") or 1000)
        losses = controller_loss_curve(controller, num_steps)
    losses = list(losses)
    steps = range(len(losses))
    initial = list(initial_lrs or controller.training_run.get("initial_lrs") or [1e-3])
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax_loss, ax_lr = fig.subplots(2, 1, sharex=True)
    ax_loss.plot(steps, losses, color="tab:gray")
    ax_loss.set_ylabel("training loss (input)")
    lrs: list[float] = []
    every: list[float] = []
    for base_lr in initial:
        lrs = controller.simulate(losses, base_lr)
        every += lrs
        ax_lr.plot(steps, lrs, label=f"from {base_lr:g}")
    format_lr_axis(ax_lr, every)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.legend(fontsize=8)
    ax_loss.set_title("LR controller along a training-loss curve (other features at training means)", fontsize=10)
    fig.savefig(path, dpi=110)
    return lrs
