"""The quality protocol as jobs: which runs each row needs on each task, in two phases.

Phase 1: the learning steps (MLR-SNet meta-trained on every task and seed, and on the transfer sources with seed 0;
the PPO controller trained with seed 0) and each tuned row's LR grid with seed 0. Phase 2: each tuned row's best
LR (on the validation split) with the other seeds, and every row with no tuning (transferred and released MLR-SNet,
the controller's rows, the rivals) with every seed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .harness import Record, best_lr, job
from .learned import CONTROLLER_METRICS, CONTROLLER_ROWS, CONTROLLER_TRAINING, MLRSNET_ROWS, schedule_path
from .registry import TABLE_ROWS
from .tasks import task_spec

# The protocol as the results files record it ("protocol" in their meta) and quality.py --help shows it.
PROTOCOL = """(the same step budget and batches for every schedule of a task):

* Baselines get a 3- or 4-point LR grid (per task and optimizer family, in ``TASKS``), run with seed 0; the LR
  with the best final validation metric is then run with the other seeds. The test metric is reported.
* MLR-SNet meta-trained on the task (paper Sec. 4.1) learns online from the validation set (its meta set),
  with fixed meta-hyperparameters for every task (``META``); every seed meta-trains its own schedule.
  "horizon 10": the same with ``meta_horizon=10`` (every LR of the 10 steps before a meta update is judged
  by the meta loss at the update).
* MLR-SNet transferred (Sec. 4.2) uses the schedule meta-trained (seed 0) on another task (``source``),
  with no tuning at all. MLR-SNet's gamma is the paper's (1 for images, 40 with loss / ln V for the
  LSTM), except on GPT-2, where SGD at LR ~20 diverges (measured: LR 10 gives perplexity 3e6), so the
  released rule ``gamma="auto"`` (from the loss and C at the start; ~0.9 here) is used. The rows separate
  the changes of issue 10: the final network alone (what ``save_schedule`` wrote before) vs the
  trajectory (networks recorded at 0.005, 0.5 and 1.0 of the source run, played in thirds: today's
  default); the trajectory with its scale measured by an LR range test (``gamma="range_test"``, rule
  ``min_loss_div_3``, the best rule on the validation splits); the trajectory of a source meta-trained
  with a 10-step horizon. Which variants exist, and their defaults, were chosen on the validation splits
  only (``benchmarks/select_mlrsnet.py``, ``results/selection_cpu.md``). The scale learned during the run
  (issue 32; ``gamma="relative"``: the schedule gives the shape ``p_t / p_1``): "online scale (Mechanic)" uses
  ``online_scale="mechanic"`` (Mechanic wraps the optimizer, SGD, and learns a scalar S: the update uses
  S_t * lr_t) from ``learning_rate`` = the paper's gamma as a number (GPT-2's "auto": 1); "Prodigy scale" trains
  with Prodigy (lr 1, ``safeguard_warmup=True``, the task's weight decay) and ``learning_rate`` 1: the shape
  is Prodigy's LR multiplier. Their recorded LR is the step size used: S_t * lr_t, and d * lr_t.
  The regression task uses the paper's image gamma, 1.
* The released MLR-SNet checkpoints (CIFAR-10 / ResNet-18) with the released 3-stage recipe (``gamma="auto"``;
  on the regression task, which has no classes C, the paper's gamma 1).
* The PPO controller observes the probabilities the model gives the true labels: it runs on every task but the
  regression task, where its rows are left empty.
* Untuned rivals (``RIVALS``): what a user who does not tune picks today, run with one fixed setting (no LR
  grid) for every seed. The parameter-free optimizers at the settings their packages recommend, with the
  task's weight decay: Prodigy and D-Adaptation Adam / SGD at lr 1 with cosine annealing (Prodigy without
  bias correction or warm-up safeguard, its README's advice when there is no warm-up nor restart;
  D-Adaptation Adam with decoupled, AdamW-style weight decay; D-Adaptation SGD without momentum, its
  default), and DoG at lr 1 with a constant schedule (reps_rel 1e-6, or 1e-4 with batch norm), whose
  polynomial-decay iterate average (gamma 8) is the model evaluated at the end. Beside them, the defaults
  people start from: AdamW at lr 1e-3 (weight decay 0.01) and SGD at lr 0.1, both with cosine annealing;
  and the same two wrapped by Mechanic (``mechanic_pytorch.mechanize``, its defaults), which learns a scale S of
  their updates. Their recorded LR is the step size the optimizer used (d * lr; d * lr / |g_0| for
  D-Adaptation SGD; eta for DoG; S * lr for Mechanic).
* All SGD runs use plain SGD (momentum 0, the paper's optimizer); gradients are clipped as in ``TASKS``."""
OFFICIAL = ("mlr_snet_1.pth", "mlr_snet_100.pth", "mlr_snet_200.pth")  # the released checkpoints, in shared/official


@dataclasses.dataclass
class Plan:
    """The jobs of a quality run: ``tasks`` x the rows not in ``skip``, ``seeds`` seeds, under ``out``."""

    out: Path
    tasks: list[str]
    seeds: range
    skip: set[str]
    quick: bool = False

    def runs(self, label: str) -> bool:
        return label not in self.skip

    def steps(self, task: str) -> int:
        return 8 if self.quick else task_spec(task).steps

    def job(self, task: str, label: str, seed: int, lr: float | None = None, **extra: Any) -> dict[str, Any]:
        return job(self.out, task, label, seed, self.steps(task), self.quick, lr, **extra)

    @property
    def sources(self) -> set[str]:
        return {task_spec(t).source for t in self.tasks}

    def schedule_dir(self, task: str, horizon: int) -> Path:
        """Where the schedule meta-trained on ``task`` with ``horizon`` is saved (seed 0)."""
        return self.out / "schedules" / f"{task}-h{horizon}"

    def controller_dir(self, task: str) -> Path:
        return self.out / "controllers" / task

    @property
    def released_dir(self) -> Path:
        return self.out / "schedules" / "released"

    @property
    def meta_rows(self) -> dict[int, str]:
        return {r.horizon: r.label for r in MLRSNET_ROWS.values() if r.kind == "meta-trained"}

    @property
    def transfer_rows(self) -> list:
        return [r for r in MLRSNET_ROWS.values() if r.kind == "transferred" and self.runs(r.label)]

    @property
    def controlled(self) -> list[str]:
        """The PPO controller's tasks (it observes class probabilities)."""
        return [t for t in self.tasks if task_spec(t).metric in CONTROLLER_METRICS]

    @property
    def controller_tasks(self) -> set[str]:
        """Where the controller is trained: its tasks, and their sources if the transferred row runs."""
        if not self.runs(CONTROLLER_TRAINING):
            return set()
        sources = {task_spec(t).source for t in self.controlled}
        return set(self.controlled) | (sources if self.runs("PPO controller transferred") else set())

    def missing(self) -> list[str]:
        """The rows that run but need a learning step that is skipped and not on disk."""
        meta, controller_sources = self.meta_rows, {task_spec(t).source for t in self.controlled}
        needs = [(r.label, [Path(schedule_path(self.schedule_dir(s, r.horizon), r.trajectory)) for s in self.sources],
                  not self.runs(meta[r.horizon])) for r in self.transfer_rows]  # fmt: skip
        needs += [("PPO controller trained", [self.controller_dir(t) for t in self.controlled],
                   not self.runs(CONTROLLER_TRAINING)),
                  ("PPO controller transferred", [self.controller_dir(s) for s in controller_sources],
                   not self.runs(CONTROLLER_TRAINING))]  # fmt: skip
        return [f"{label} needs {d}" for label, dirs, skipped in needs if self.runs(label) and skipped
                for d in dirs if not (d / "config.json").is_file()]  # fmt: skip

    def first(self) -> list[dict[str, Any]]:
        """Phase 1: meta-training (every seed; seed 0 on a source), controller training, the tuned rows' grids."""
        meta = {(t, h) for h, label in self.meta_rows.items() if self.runs(label) for t in self.tasks}
        meta |= {
            (s, r.horizon) for r in self.transfer_rows if self.runs(self.meta_rows[r.horizon]) for s in self.sources
        }
        jobs = [self.job(t, self.meta_rows[h], s, schedule_dir=str(self.schedule_dir(t, h))) for t, h in sorted(meta)
                for s in (self.seeds if t in self.tasks and self.runs(self.meta_rows[h]) else [0])]  # fmt: skip
        jobs += [self.job(t, row.label, 0, lr) for t in self.tasks for row in TABLE_ROWS.values()
                 if row.tuned and self.runs(row.label) for lr in row.grid(task_spec(t), self.quick)]  # fmt: skip
        jobs += [self.job(t, CONTROLLER_TRAINING, 0, schedule_dir=str(self.controller_dir(t)))
                 for t in sorted(self.controller_tasks)]  # fmt: skip
        return jobs

    def second(self, records: list[Record] | None) -> list[dict[str, Any]]:
        """Phase 2, from phase 1's records (None: only to count the jobs, with the tuned rows' LRs unknown)."""
        jobs = []
        for t in self.tasks:
            source = task_spec(t).source
            for label, row in TABLE_ROWS.items():
                if not self.runs(label):
                    continue
                if row.tuned:
                    lr = best_lr(records, t, label) if records is not None else None
                    jobs += [self.job(t, label, s, lr) for s in self.seeds if s != 0]
                elif label in MLRSNET_ROWS and row.kind == "transferred":
                    path = schedule_path(self.schedule_dir(source, row.horizon), row.trajectory)
                    jobs += [self.job(t, label, s, source_schedule=path, source_task=source) for s in self.seeds]
                elif label in CONTROLLER_ROWS and t in self.controlled:
                    if row.transferred:
                        extra = {"source_schedule": str(self.controller_dir(source)), "source_task": source}
                    else:
                        extra = {"source_schedule": str(self.controller_dir(t))}
                    jobs += [self.job(t, label, s, **extra) for s in self.seeds]
                elif label in MLRSNET_ROWS and row.kind == "released" and self.released_dir.is_dir():
                    jobs += [self.job(t, label, s, source_schedule=str(self.released_dir)) for s in self.seeds]
                elif label not in MLRSNET_ROWS and label not in CONTROLLER_ROWS:  # untuned: its one setting
                    jobs += [
                        self.job(t, label, s, lr) for lr in row.grid(task_spec(t), self.quick) for s in self.seeds
                    ]
        return jobs
