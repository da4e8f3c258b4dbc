"""Every row of the tables, by label, in the order the tables show them (one registry over :mod:`common.rows` and
:mod:`common.learned`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .learned import CONTROLLER_ROWS, CONTROLLER_TRAINING, MLRSNET_ROWS, SCALE_EXPERIMENTS, MLRSNetRow
from .rows import BASELINES, RIVALS, Baseline, Rival, Row
from .tasks import ALL_TASKS, TASKS, Task

MLRSNET = tuple(MLRSNET_ROWS)
CONTROLLER = tuple(CONTROLLER_ROWS)
TABLE_ROWS: dict[str, Row] = {**MLRSNET_ROWS, **CONTROLLER_ROWS, **BASELINES, **RIVALS}
ROWS: dict[str, Row] = {**TABLE_ROWS, **SCALE_EXPERIMENTS}  # and the scale experiments, run outside the tables


def row_labels() -> list[str]:
    """Every row of the tables, in order: MLR-SNet, the PPO controller, the tuned baselines, the untuned rivals."""
    return list(TABLE_ROWS)


@contextlib.contextmanager
def registered(*entries: Task | Baseline | Rival) -> Iterator[None]:
    """Tasks, tuned baselines and untuned rivals added for the ``with`` block, removed after it (for a test or an
    example; for good, each is one entry of ``TASKS`` in ``common/tasks.py`` or of ``BASELINES`` / ``RIVALS`` in
    ``common/rows.py``). The rows come after the others in the tables. Runs in this process only (``workers=1``)."""
    keys = [e.name if isinstance(e, Task) else e.label for e in entries]
    if taken := [k for k in keys if k in ALL_TASKS or k in ROWS]:
        raise ValueError(f"These names are taken: {taken}")
    targets = [(TASKS, ALL_TASKS) if isinstance(e, Task) else (BASELINES if isinstance(e, Baseline) else RIVALS,
               TABLE_ROWS, ROWS) for e in entries]  # fmt: skip
    for entry, key, dicts in zip(entries, keys, targets, strict=True):
        for d in dicts:
            d[key] = entry
    try:
        yield
    finally:
        for key, dicts in zip(keys, targets, strict=True):
            for d in dicts:
                d.pop(key, None)


def mlrsnet_row(label: str) -> MLRSNetRow | None:
    """The MLR-SNet row (or scale experiment) of ``label``; None for the other rows."""
    return MLRSNET_ROWS.get(label) or SCALE_EXPERIMENTS.get(label)


__all__ = [
    "CONTROLLER",
    "CONTROLLER_TRAINING",
    "MLRSNET",
    "ROWS",
    "TABLE_ROWS",
    "registered",
    "mlrsnet_row",
    "row_labels",
]
