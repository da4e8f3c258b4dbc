"""Every row of the tables, by label, in the order the tables show them (one registry over :mod:`common.rows` and
:mod:`common.learned`)."""

from __future__ import annotations

from .learned import CONTROLLER_ROWS, CONTROLLER_TRAINING, MLRSNET_ROWS, SCALE_EXPERIMENTS, MLRSNetRow
from .rows import BASELINES, RIVALS, Row

MLRSNET = tuple(MLRSNET_ROWS)
CONTROLLER = tuple(CONTROLLER_ROWS)
TABLE_ROWS: dict[str, Row] = {**MLRSNET_ROWS, **CONTROLLER_ROWS, **BASELINES, **RIVALS}
ROWS: dict[str, Row] = {**TABLE_ROWS, **SCALE_EXPERIMENTS}  # and the scale experiments, run outside the tables


def row_labels() -> list[str]:
    """Every row of the tables, in order: MLR-SNet, the PPO controller, the tuned baselines, the untuned rivals."""
    return list(TABLE_ROWS)


def mlrsnet_row(label: str) -> MLRSNetRow | None:
    """The MLR-SNet row (or scale experiment) of ``label``; None for the other rows."""
    return MLRSNET_ROWS.get(label) or SCALE_EXPERIMENTS.get(label)


__all__ = ["CONTROLLER", "CONTROLLER_TRAINING", "MLRSNET", "ROWS", "TABLE_ROWS", "mlrsnet_row", "row_labels"]
