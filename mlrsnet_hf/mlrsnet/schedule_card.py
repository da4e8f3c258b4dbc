"""The Hub side of an MLR-SNet schedule: its model card (``hub_cards/mlrsnet_schedule.md``) and pictures.

:class:`MLRSNetScheduleRepo` is the part of :class:`~mlrsnet_hf.MLRSNetSchedule` that :mod:`mlrsnet_hf.hub`
asks of a schedule family (besides ``config`` and ``weights()``, which stay with the LR math).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard
from torch import nn

from ..hub import ScheduleRepoMixin, card_from_template, significant
from ..provenance import range_test_summary
from ..publishing import played_a_part

CARD_TEMPLATE = "mlrsnet_schedule.md"


class MLRSNetScheduleRepo(ScheduleRepoMixin):
    """Pictures and model card of an MLR-SNet schedule (mixed into :class:`~mlrsnet_hf.MLRSNetSchedule`)."""

    def plot_preview(self, path: str | Path) -> None:
        """The repo's picture: the LR response to a typical decreasing loss (``lr_response.png``)."""
        from .plotting import plot_lr_response

        plot_lr_response(self, path)

    def plot_lr_history(self, lrs: list[float], path: str | Path) -> None:
        """The LR of every optimizer step of a run (``lr_used.png``)."""
        from ..plotting import plot_lr_curve

        plot_lr_curve(lrs, path)

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The repo's ``README.md``, rendered from ``hub_cards/mlrsnet_schedule.md``."""
        return render_model_card(self, **kwargs)


# Fields of a meta-training record that the card shows elsewhere (metadata, results) or not as table rows.
_NOT_ROWS = ("results", "benchmark", "license", "license_name", "license_link", "license_note")


def recorded_fields(schedule: nn.Module) -> dict[str, Any]:
    """The meta-training record as the card shows it: floats to 4 significant digits, only what the run used
    (:func:`played_a_part`; records written before that rule may still hold the other fields)."""
    return {
        key: significant(value)
        for key, value in schedule.meta_training.items()
        if key not in _NOT_ROWS and played_a_part(key, value, schedule.gamma)
    }


def render_model_card(schedule: nn.Module, **template_kwargs: Any) -> ModelCard:
    """The model card: the class's Hub metadata (``library_name``, tags, license), datasets, ``model-index``.

    Results are rounded to 4 significant digits and carry the split they were measured on (``eval_split``
    of the record). A record with its own ``license`` (released third-party weights) overrides this library's.
    ``range_test`` (the ``RangeTestResult`` of the run that wrote the card, with ``gamma="range_test"``) adds the
    LR it chose, and why, when the rule's pick was replaced.
    """
    meta = schedule.meta_training
    datasets = [meta["dataset"]] if meta.get("dataset") else None
    results = significant(dict(meta.get("results") or {}))
    model_name = template_kwargs.pop("model_name", None) or meta.get("name") or "mlrsnet-schedule"
    range_test = template_kwargs.pop("range_test", None)
    eval_results = (
        [
            EvalResult(
                task_type=meta.get("task_type", "image-classification"),
                dataset_type=meta["dataset"],
                dataset_name=meta.get("dataset_name", meta["dataset"]),
                dataset_split=meta.get("eval_split"),
                metric_type=metric,
                metric_value=float(value),
            )
            for metric, value in results.items()
        ]
        if datasets and results
        else None
    )
    card_data = {
        "datasets": datasets,
        "metrics": sorted(results) or None,
        "model_name": model_name,
        "eval_results": eval_results,
    }
    for key in ("license", "license_name", "license_link"):
        if meta.get(key):
            card_data[key] = meta[key]
    return card_from_template(
        schedule,
        CARD_TEMPLATE,
        card_data,
        config=schedule.config,
        stages=stage_rows(schedule),
        meta_training=meta,
        recorded=recorded_fields(schedule),
        results=results,
        range_test=None if range_test is None else range_test_summary(range_test),
        **template_kwargs,
    )


def stage_rows(schedule: nn.Module) -> list[dict[str, str]]:
    """One row per stage; for a trajectory schedule, where in its meta-training run each network was recorded."""
    ends = [*schedule.stage_starts[1:], 1.0]
    snapshots = schedule.meta_training.get("snapshots") or {}
    steps, fractions = snapshots.get("steps", []), snapshots.get("fractions", [])
    rows = []
    for k, (start, end) in enumerate(zip(schedule.stage_starts, ends, strict=True)):
        if k < len(steps):
            recorded = f"step {steps[k]} ({fractions[k]:g} of the run)" if k < len(fractions) else f"step {steps[k]}"
        else:
            recorded = "end of the run" if steps else "-"
        rows.append({"index": str(k), "start": f"{start:.3g}", "end": f"{end:.3g}", "recorded": recorded})
    return rows
