"""Pictures of an MLR-SNet schedule: its LR response to a loss curve."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from torch import nn

from ..plotting import format_lr_axis, typical_loss_curve


def default_preview_settings(schedule: nn.Module) -> tuple[int, float]:
    """``(num_classes, base_lr)`` for a preview: the meta-training task's classes (else 10) and base LR 1."""
    return int(schedule.meta_training.get("num_classes") or 10), 1.0


def plot_lr_response(
    schedule: nn.Module,
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
