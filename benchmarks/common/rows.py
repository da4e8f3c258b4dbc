"""The row protocol: what a row of the tables is, and the rows that are hand-designed or LR-free optimizers.

A row (:class:`Row`) owns its LR grid (:meth:`Row.grid`: a tuned baseline's grid on a task, a rival's one setting)
and builds the Trainer of one run (:meth:`Row.build`); :func:`common.training.run_job` does the rest, the same for
every row. The learned rows (MLR-SNet, the PPO controller) are in :mod:`common.learned`; :data:`ROWS` holds them all.
Adding a rival is one entry in :data:`RIVALS` (docs/benchmarks.md shows one).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import Trainer, TrainingArguments

from .steps import (
    HypergradientDescent,
    IterateAveraging,
    LambdaScheduleTrainer,
    LRRecorder,
    MechanicRecorder,
    d_times_lr,
    dadapt_sgd_step,
    dog_eta,
    dog_kwargs,
    import_object,
    lr_lambda,
)
from .tasks import Data, Task

ERRORS: tuple[type[Exception], ...] = (RuntimeError, ValueError, OverflowError)  # a diverged run is a result


@dataclasses.dataclass
class Run:
    """One run of a row on a task, as its row builds it: the job, the task's data, a fresh model, the LR recorder and
    the Trainer's common arguments (datasets, metrics, callbacks). A row may change these while it builds."""

    job: dict[str, Any]
    task: Task
    data: Data
    model: torch.nn.Module
    recorder: LRRecorder
    common: dict[str, Any]
    context: Any = dataclasses.field(default_factory=contextlib.nullcontext)  # entered around trainer.train()
    quiet: bool = False  # its optimizer prints its settings: train with stdout caught
    errors: tuple[type[Exception], ...] = ERRORS  # what counts as a diverged run
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # recorded beside the results
    after: Callable[[Trainer, dict[str, Any]], None] | None = None  # before the test evaluation (e.g. averaging)

    def args(self, **overrides: Any) -> dict[str, Any]:
        """The training arguments every row shares (the task's budget, batch, clipping, weight decay), overridden."""
        out = Path(self.job["path"]).with_suffix("")
        return training_args(self.task, out, self.job["seed"], self.job["steps"], **overrides)


def training_args(task: Task, out: Path, seed: int, steps: int, **overrides: Any) -> dict[str, Any]:
    """The training arguments of every run on ``task``: its budget, batch, clipping, weight decay; ``overrides``."""
    eval_steps = max(steps // 10, 1)
    defaults = dict(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=task.batch, per_device_eval_batch_size=200,
        eval_strategy="steps", eval_steps=eval_steps, logging_steps=eval_steps, save_strategy="no", report_to="none",
        use_cpu=True, seed=seed, data_seed=seed, disable_tqdm=True, remove_unused_columns=False, max_grad_norm=task.clip,
        weight_decay=task.weight_decay, metric_for_best_model="val_loss",
        train_sampling_strategy="sequential" if task.modality == "text" else "random",
    )  # fmt: skip
    return {**defaults, **overrides}


@dataclasses.dataclass(frozen=True)
class Row:
    """A row of the tables. ``tuned``: its LR is chosen on the validation split from :meth:`grid` (seed 0), then run
    with the other seeds; otherwise every LR of its grid (one setting) runs with every seed."""

    label: str
    tuned: ClassVar[bool] = False

    def grid(self, task: Task, quick: bool) -> tuple[float | None, ...]:
        """The LRs this row runs on ``task`` (None: the row sets its own)."""
        return (None,)

    def build(self, run: Run) -> Trainer:
        """The Trainer of one run."""
        raise NotImplementedError

    def lrs(self, run: Run, trainer: Trainer) -> list[float]:
        """The LR (step size) of every step, for the record."""
        return run.recorder.lrs

    def describe(self) -> dict[str, Any]:
        """The row's settings, for the results file."""
        return {}


@dataclasses.dataclass(frozen=True)
class Baseline(Row):
    """A hand-designed schedule, its LR tuned on a grid (the task's range for its optimizer family)."""

    optim: str = "sgd"
    family: str = "sgd"  # which LR grid: "sgd" or "adam"
    scheduler: str = "constant"  # a transformers lr_scheduler_type, or "exponential" / "multistep"
    kwargs: Callable[[int, float], dict] = lambda steps, lr: {}
    weight_decay: float | None = None  # None: the task's
    warmup: float = 0.0  # fraction of the steps
    hypergradient: bool = False
    tuned: ClassVar[bool] = True

    def grid(self, task: Task, quick: bool) -> tuple[float | None, ...]:
        g = task.lr_range(self.family)
        return g[1:2] if quick else g

    def build(self, run: Run) -> Trainer:
        steps, lr = run.job["steps"], run.job["lr"]
        args = run.args(
            optim=self.optim, learning_rate=lr, warmup_steps=int(self.warmup * steps),
            lr_scheduler_type="constant" if self.scheduler in ("exponential", "multistep") else self.scheduler,
            lr_scheduler_kwargs=self.kwargs(steps, lr),
            **({} if self.weight_decay is None else {"weight_decay": self.weight_decay}),
        )  # fmt: skip
        if self.hypergradient:
            run.common["callbacks"] = [HypergradientDescent(), run.recorder]
        if self.scheduler in ("exponential", "multistep"):
            return LambdaScheduleTrainer(model=run.model, args=TrainingArguments(**args),
                                         lr_lambda=lr_lambda(self.scheduler, steps), **run.common)  # fmt: skip
        return Trainer(model=run.model, args=TrainingArguments(**args), **run.common)

    def describe(self) -> dict[str, Any]:
        return {"optim": self.optim, "scheduler": self.scheduler, "kwargs": self.kwargs(1000, 1.0),
                "warmup": self.warmup, "grid": self.family}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Rival(Row):
    """A row run with one fixed, untuned setting (no LR grid) for every seed: what a user starts from."""

    lr: float = 1.0
    scheduler: str = "cosine"  # a transformers lr_scheduler_type
    optim: str | None = None  # a transformers optim name (when ``optimizer`` is None)
    optimizer: str | None = None  # "module.Class" of an optimizer from another package, imported at run time
    wrap: str | None = None  # "module.function" taking that class, returning the class used (Mechanic's mechanize)
    kwargs: Callable[[torch.nn.Module], dict] = lambda model: {}  # its keyword arguments besides lr, weight decay
    weight_decay: float | None = None  # None: the task's
    one_group: bool = False  # every parameter in one group (else the Trainer's: no decay on biases and norms)
    averaging: bool = False  # DoG's polynomial-decay iterate averaging: the averaged model is evaluated
    step_size: Callable[[dict, dict], float] | None = None  # the LR recorded; None: the group's lr
    recorder: type[LRRecorder] | None = None  # None: LRRecorder(step_size)
    recorded: str = "lr"  # what ``step_size`` (or ``recorder``) records, for the JSON

    @property
    def optimizer_name(self) -> str | None:
        """The optimizer, for the JSON: a transformers optim name, "module.Class", or "wrapper(module.Class)"."""
        return f"{self.wrap}({self.optimizer})" if self.wrap else self.optimizer or self.optim

    def grid(self, task: Task, quick: bool) -> tuple[float | None, ...]:
        return (self.lr,)

    def build(self, run: Run) -> Trainer:
        run.recorder.step_size = self.step_size
        if self.recorder is not None:
            run.recorder = self.recorder()
            run.common["callbacks"] = [run.recorder]
        run.quiet, run.errors = True, ERRORS + (AssertionError, ZeroDivisionError)  # DoG asserts; D-Adapt SGD divides
        if self.optimizer:
            run.extra["optimizer_kwargs"] = self.kwargs(run.model)
        args = TrainingArguments(**run.args(
            learning_rate=self.lr, lr_scheduler_type=self.scheduler,
            weight_decay=run.task.weight_decay if self.weight_decay is None else self.weight_decay,
            **({"optim": self.optim} if self.optim else {}),
        ))  # fmt: skip
        trainer = self._trainer(run.model, args, run.common)
        if self.averaging:
            averaging = IterateAveraging(run.model)
            trainer.add_callback(averaging)
            run.after = lambda trainer, record: self._averaged(run, averaging, trainer, record)
        return trainer

    def _trainer(self, model: torch.nn.Module, args: TrainingArguments, common: dict) -> Trainer:
        """A transformers optimizer, or another package's at its recommended settings."""
        if self.optimizer is None:
            return Trainer(model=model, args=args, **common)
        cls = import_object(self.optimizer)
        if self.wrap:
            cls = import_object(self.wrap)(cls)
        kwargs = {"lr": args.learning_rate, "weight_decay": args.weight_decay, **self.kwargs(model)}
        if self.one_group:
            return Trainer(model=model, args=args, optimizers=(cls(model.parameters(), **kwargs), None), **common)
        return Trainer(model=model, args=args, optimizer_cls_and_kwargs=(cls, kwargs), **common)

    @staticmethod
    def _averaged(run: Run, averaging: IterateAveraging, trainer: Trainer, record: dict[str, Any]) -> None:
        """The curve is the last iterate's; the result the average's (evaluated on validation here, test next)."""
        key = run.task.metric
        iterate = trainer.evaluate(eval_dataset=run.data["test"], metric_key_prefix="test")
        record.update(val_last_iterate=record["val"], test_last_iterate=iterate[f"test_{key}"])
        trainer.model.load_state_dict(averaging.averager.averaged_model.state_dict())
        val = trainer.evaluate(eval_dataset=run.data["val"], metric_key_prefix="averaged_val")
        record["val"] = val[f"averaged_val_{key}"]

    def describe(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer_name, "lr": self.lr, "scheduler": self.scheduler,
                "weight_decay": "task" if self.weight_decay is None else self.weight_decay,
                "param_groups": "one" if self.one_group else "trainer", "iterate_averaging": self.averaging,
                "lrs_record": self.recorded}  # fmt: skip


BASELINES = {
    b.label: b
    for b in (
        Baseline("SGD fixed", "sgd", "sgd"),
        Baseline("SGD exponential", "sgd", "sgd", "exponential"),
        Baseline("SGD multi-step", "sgd", "sgd", "multistep"),
        Baseline("SGD cosine", "sgd", "sgd", "cosine"),
        Baseline("SGD linear decay", "sgd", "sgd", "linear"),
        Baseline("SGD SGDR (4 restarts)", "sgd", "sgd", "cosine_with_restarts", lambda s, lr: {"num_cycles": 4}),
        Baseline("SGD warmup-stable-decay", "sgd", "sgd", "warmup_stable_decay",
                 lambda s, lr: {"num_decay_steps": s // 5}, warmup=0.05),
        Baseline("SGD greedy", "sgd", "sgd", "greedy",
                 lambda s, lr: {"patience": 1, "min_lr": lr / 1000, "max_lr": 10 * lr}),
        Baseline("SGD reduce-on-plateau", "sgd", "sgd", "reduce_lr_on_plateau", lambda s, lr: {"patience": 1}),
        Baseline("SGD hypergradient descent", "sgd", "sgd", hypergradient=True),
        Baseline("Adam fixed", "adamw_torch", "adam", weight_decay=0.0),
        Baseline("AdamW cosine", "adamw_torch", "adam", "cosine", weight_decay=0.01),
        Baseline("schedule-free SGD", "schedule_free_sgd", "sgd"),
        Baseline("schedule-free AdamW", "schedule_free_adamw", "adam", weight_decay=0.01),
    )
}  # fmt: skip

RIVALS = {
    r.label: r
    for r in (
        Rival("Prodigy", 1.0, optimizer="prodigyopt.Prodigy", step_size=d_times_lr, recorded="d * lr"),
        Rival("D-Adaptation Adam", 1.0, optimizer="dadaptation.DAdaptAdam", kwargs=lambda m: {"decouple": True},
              step_size=d_times_lr, recorded="d * lr"),
        # DAdaptSGD applies group 0's weight decay (the task's) to every group: biases and norms decay too.
        Rival("D-Adaptation SGD", 1.0, optimizer="dadaptation.DAdaptSGD", step_size=dadapt_sgd_step,
              recorded="d * lr / |g_0|"),
        # DoG's step size is one per param group ("all layers as one long vector"): one group.
        Rival("DoG", 1.0, "constant", optimizer="dog.DoG", kwargs=dog_kwargs, one_group=True, averaging=True,
              step_size=dog_eta, recorded="eta"),
        Rival("AdamW 1e-3 cosine (untuned default)", 1e-3, optim="adamw_torch", weight_decay=0.01),
        Rival("SGD 0.1 cosine (untuned default)", 0.1, optim="sgd"),
        # Mechanic (Cutkosky et al., 2023) learns a scale S of the wrapped optimizer's updates: its README's use,
        # mechanize(cls)(params, lr=...), at the defaults people start from (SGD 0.1, AdamW 1e-3) with cosine.
        Rival("Mechanic SGD cosine (untuned)", 0.1, optimizer="torch.optim.SGD", wrap="mechanic_pytorch.mechanize",
              recorder=MechanicRecorder, recorded="S * lr"),
        Rival("Mechanic AdamW cosine (untuned)", 1e-3, optimizer="torch.optim.AdamW", wrap="mechanic_pytorch.mechanize",
              weight_decay=0.01, recorder=MechanicRecorder, recorded="S * lr"),
    )
}  # fmt: skip
