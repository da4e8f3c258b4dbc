"""Every row of the tables, by label, in the order the tables show them (one registry over :mod:`common.rows` and
:mod:`common.learned`)."""

from __future__ import annotations

from .learned import CONTROLLER_ROWS, CONTROLLER_TRAINING, MLRSNET_ROWS, SCALE_EXPERIMENTS, MLRSNetRow
from .rows import BASELINES, RIVALS, Baseline, Rival, Row

MLRSNET = tuple(MLRSNET_ROWS)
CONTROLLER = tuple(CONTROLLER_ROWS)
TABLE_ROWS: dict[str, Row] = {**MLRSNET_ROWS, **CONTROLLER_ROWS, **BASELINES, **RIVALS}
ROWS: dict[str, Row] = {**TABLE_ROWS, **SCALE_EXPERIMENTS}  # and the scale experiments, run outside the tables


def row_labels() -> list[str]:
    """Every row of the tables, in order: MLR-SNet, the PPO controller, the tuned baselines, the untuned rivals."""
    return list(TABLE_ROWS)


def add_row(row: Baseline | Rival) -> None:
    """Register a tuned baseline or an untuned rival at run time (in the code: one entry of ``BASELINES`` or
    ``RIVALS`` in ``common/rows.py``); it becomes a row of the tables, after the others."""
    if row.label in ROWS:
        raise ValueError(f"A row is already named {row.label!r}.")
    (BASELINES if isinstance(row, Baseline) else RIVALS)[row.label] = row
    TABLE_ROWS[row.label] = ROWS[row.label] = row


def mlrsnet_row(label: str) -> MLRSNetRow | None:
    """The MLR-SNet row (or scale experiment) of ``label``; None for the other rows."""
    return MLRSNET_ROWS.get(label) or SCALE_EXPERIMENTS.get(label)


__all__ = [
    "CONTROLLER",
    "CONTROLLER_TRAINING",
    "MLRSNET",
    "ROWS",
    "TABLE_ROWS",
    "add_row",
    "mlrsnet_row",
    "row_labels",
]
