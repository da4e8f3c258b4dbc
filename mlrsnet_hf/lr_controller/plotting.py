"""Pictures of an LR controller: its LR along a loss curve in the range of its training data."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from torch import nn

from ..plotting import decaying_loss_curve, format_lr_axis, typical_loss_curve


def controller_loss_curve(controller: nn.Module, num_steps: int) -> list[float]:
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


def plot_controller_response(
    controller: nn.Module,
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
