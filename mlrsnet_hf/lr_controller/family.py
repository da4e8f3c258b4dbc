"""The PPO LR controller family as the core sees it: its description, CLI text and picture, its registration."""

from __future__ import annotations

from pathlib import Path

from ..families import ScheduleFamily, register_family
from .controller import LRController
from .driver import LRControllerDriver


def describe_controller(controller: LRController, name: str) -> str:
    """A human-readable summary of a PPO LR controller."""
    lines = [f"LR controller (PPO): {name}"]
    lines += [
        f"  {key}: {value}"
        for key, value in controller.config.items()
        if key.startswith(("action", "max", "decision", "hidden", "probe", "min"))
    ]
    lines += [f"  trained: {key}={value}" for key, value in controller.training_run.items()]
    return "\n".join(lines)


def plot_controller(
    controller: LRController,
    out: str | Path,
    *,
    losses: list[float] | None = None,
    num_classes: int | None = None,
    base_lr: float | None = None,
) -> list[float]:
    """``mlrsnet plot``: the LR along ``losses`` from ``base_lr`` (default: the initial LRs it was trained from)."""
    if num_classes is not None:
        raise ValueError("--num-classes is for an MLR-SNet schedule's gamma='auto'; an LR controller takes none.")
    from .plotting import plot_controller_response  # (matplotlib: only for a picture)

    initial = [base_lr] if base_lr is not None else None
    return plot_controller_response(controller, out, losses=losses, initial_lrs=initial)


LR_CONTROLLER = register_family(
    ScheduleFamily(
        model_type=LRController.model_type,
        schedule_class=LRController,
        driver_class=LRControllerDriver,
        tag="lr-controller",
        description="a PPO-trained LR controller (Xu et al., 2019) that acts on the LR every few steps",
        describe=describe_controller,
        plot=plot_controller,
        record_field="training_run",
        held_out_defaults_to_eval=True,
    )
)
