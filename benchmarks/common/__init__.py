"""The benchmarks' shared parts: one concept per module.

- :mod:`common.tasks`: the task registry (data, model factory, metric, step budget; variants are objects);
- :mod:`common.rows`: the row protocol (tuned baselines, untuned rivals, MLR-SNet variants, the PPO controller), each
  row owning its LR grid; :mod:`common.steps`: the callbacks and step-size readers the rows use;
- :mod:`common.training`: one training run (a job) of a row on a task;
- :mod:`common.harness`: jobs, resume, progress, scoring on validation, seeds, incremental results;
- :mod:`common.report`: tables, plots and verdicts; :mod:`common.history`: results files that carry their history.

The scripts in ``benchmarks/`` (``quality.py``, ``robustness.py``, ``select_mlrsnet.py``, ``grid_ends.py``) are thin
command lines over these, and ``examples/demo.py`` runs its jobs through the same harness.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
SHARED = Path(os.environ.get("MLRSNET_SHARED", REPO.parent / "shared"))  # released checkpoints, PTB text
