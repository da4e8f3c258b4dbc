"""The MLR-SNet family as the core sees it: its description, its CLI text and picture, its registration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..families import ScheduleFamily, register_family
from ..hub import significant
from .driver import MLRSNetDriver
from .schedule import MLRSNetSchedule
from .schedule_card import recorded_fields


def describe_schedule(schedule: MLRSNetSchedule, name: str) -> str:
    """A human-readable summary of a schedule: stages, gamma rule and provenance."""
    lines = [
        f"schedule: {name}",
        f"  stages: {schedule.num_stages} (start at fractions {[round(s, 4) for s in schedule.stage_starts]})",
        f"  gamma rule: {schedule.gamma}"
        + (f" (relative_max_scale={schedule.relative_max_scale})" if schedule.uses_base_lr else ""),
        f"  input normalisation: {schedule.input_normalization}",
        f"  network: hidden_size={schedule.hidden_size}, num_layers={schedule.num_layers}, "
        f"gate_layout={schedule.gate_layout}",
        f"  parameters: {sum(p.numel() for p in schedule.parameters())}",
    ]
    if schedule.meta_training:
        lines.append("  meta-trained on:")  # what its card shows: only what the run used, rounded
        lines += [f"    {key}: {value}" for key, value in recorded_fields(schedule).items()]
        results = significant(schedule.meta_training.get("results") or {})
        if results:
            split = schedule.meta_training.get("eval_split", "split not recorded")
            lines.append(f"  results ({split}): " + ", ".join(f"{k}={v}" for k, v in results.items()))
    else:
        lines.append("  meta-trained on: not recorded")
    return "\n".join(lines)


def plot_schedule(
    schedule: MLRSNetSchedule,
    out: str | Path,
    *,
    losses: list[float] | None = None,
    num_classes: int | None = None,
    base_lr: float | None = None,
) -> list[float]:
    """``mlrsnet plot``: the LR response to ``losses``; ``base_lr`` only where the gamma rule reads it."""
    if base_lr is not None and not schedule.uses_base_lr:
        raise ValueError(
            f"--base-lr is used only by gamma='relative' or 'range_test'; this schedule's gamma is "
            f"{schedule.gamma!r}, so its LRs do not depend on it (--gamma relative --base-lr LR: what a run with "
            "an optimizer other than SGD at learning_rate LR gets)."
        )
    from .plotting import plot_lr_response  # (matplotlib: only for a picture)

    return plot_lr_response(schedule, out, losses=losses, num_classes=num_classes, base_lr=base_lr)


def new_schedule(args: Any) -> MLRSNetSchedule:
    """A fresh schedule to meta-train, from an :class:`~mlrsnet_hf.MLRSNetConfig` (its weights drawn from the
    caller's random stream)."""
    return MLRSNetSchedule(hidden_size=args.schedule_hidden_size, num_stages=args.schedule_num_stages, gamma=1.0)


MLRSNET = register_family(
    ScheduleFamily(
        model_type=MLRSNetSchedule.model_type,
        schedule_class=MLRSNetSchedule,
        driver_class=MLRSNetDriver,
        tag="mlrsnet",
        description="MLR-SNet: an LSTM that reads the training loss and sets the LR (Shu et al.)",
        describe=describe_schedule,
        plot=plot_schedule,
        new_schedule=new_schedule,
    ),
    default=True,
)
