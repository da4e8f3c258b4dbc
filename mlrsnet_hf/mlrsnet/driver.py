"""``MLRSNetDriver``: an MLR-SNet schedule as the Trainer's ``lr_scheduler`` (transfer, meta-training, online scale),
and in a loop of your own (:meth:`MLRSNetDriver.for_loop`)."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from accelerate.state import PartialState
from accelerate.utils import broadcast_object_list
from torch import nn
from torch.utils.data import DataLoader

from ..driver import LRDriver
from ..engines import check_range_test_engine
from ..gamma import BASE_LR_RULES, check_gamma, run_gamma
from ..lr_range_test import RangeTestResult, lr_range_test
from ..measurements import average_training_loss, default_num_classes, ordered_batches
from ..meta_gradient import is_sharded, trainable_parameters
from ..options import ScheduleOptions
from ..state_checks import check_weights, restoring
from .device_step import DeviceStep
from .meta_training import MetaLearner
from .run import ScheduleRun
from .schedule import MLRSNetSchedule

logger = logging.getLogger(__name__)


class MLRSNetDriver(LRDriver):
    """Feeds an MLR-SNet schedule the training loss of each optimizer step; with ``meta_train``, learns it online.

    Args:
        schedule: the schedule (with meta-training its weights change during the run; the run's state is
            ``driver.run``, a :class:`~mlrsnet_hf.mlrsnet.run.ScheduleRun`).
        options: the run's :class:`~mlrsnet_hf.options.ScheduleOptions`.
        held_out: the meta set of meta-training (``options.meta_train``); ``held_out_collate_fn`` and
            ``label_names`` as for :class:`LRDriver`.
    """

    options_class = ScheduleOptions

    def __init__(
        self,
        schedule: MLRSNetSchedule,
        options: ScheduleOptions | None = None,
        held_out: Any = None,
        held_out_collate_fn: Any = None,
        label_names: list[str] | None = None,
    ) -> None:
        super().__init__(schedule, options, held_out, held_out_collate_fn, label_names)
        if self.options.meta_train and held_out is None:
            raise ValueError("meta_train=True needs meta_dataset: held-out training data for the meta updates.")
        if not self.options.meta_train and held_out is not None:
            logger.warning(
                "meta_dataset is read only to meta-train the schedule (meta_train=True); this run transfers it and "
                "does not use meta_dataset."
            )
        self.meta: MetaLearner | None = None
        self.range_test: RangeTestResult | None = None  # the curve and choice of gamma="range_test", once run
        self.last_step: dict[str, Any] | None = None
        self.device_step: DeviceStep | None = None
        self.run: ScheduleRun | None = (
            None  # this run of the schedule (from start(); what scheduler.pt holds)  # transfer mode: steps between stage entries stay on the device
        )

    @classmethod
    def for_loop(
        cls,
        schedule: MLRSNetSchedule | str,
        optimizer: torch.optim.Optimizer,
        model: nn.Module,
        num_training_steps: int,
        *,
        train_dataloader: DataLoader | None = None,
        meta_dataset: Any = None,
        meta_collate_fn: Any = None,
        state: dict[str, Any] | None = None,
        loss_from_model: bool = True,
        max_grad_norm: float | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        label_names: list[str] | None = None,
        **options: Any,
    ) -> MLRSNetDriver:
        """``schedule`` driving ``optimizer`` in a training loop of your own (PyTorch or ``accelerate``).

        Example::

            driver = MLRSNetDriver.for_loop(schedule, optimizer, model, num_training_steps=1000, gamma=1.0)
            for batch in loader:
                loss = model(**batch).loss  # the driver reads it from the model's output
                loss.backward()
                optimizer.step()  # its LR was set from this step's loss just before the update
                optimizer.zero_grad()
            driver.finish()

        ``schedule`` is an :class:`~mlrsnet_hf.MLRSNetSchedule`, or the directory or Hub id of one. ``options`` are
        the fields of :class:`~mlrsnet_hf.options.ScheduleOptions` (``gamma``, ``num_classes``, ``meta_train``, ...),
        as in :class:`~mlrsnet_hf.MLRSNetConfig`; ``meta_dataset`` (and ``meta_collate_fn``, default: the training
        loader's) is the held-out set of ``meta_train=True``; ``state`` is a ``driver.state_dict()`` saved with a
        checkpoint, to resume its LR sequence exactly. The other arguments are :meth:`bind`'s. With the Trainer's
        data order, clipping and parameter groups, the LRs (and a meta-trained schedule) are exactly those of
        :class:`~mlrsnet_hf.MLRSNetTrainer`.
        """
        if isinstance(schedule, (str, os.PathLike)):
            schedule = MLRSNetSchedule.from_pretrained(schedule)
        driver = cls(schedule, ScheduleOptions.from_kwargs(options), meta_dataset, meta_collate_fn, label_names)
        if state is not None:
            driver.load_state_dict(state)
        driver.bind(
            model,
            optimizer,
            num_training_steps,
            train_dataloader=train_dataloader,
            loss_from_model=loss_from_model,
            max_grad_norm=max_grad_norm,
            seed=seed,
            batch_size=batch_size,
        )
        return driver

    def _start(self, restored: dict[str, Any] | None) -> None:
        schedule, options = self.schedule, self.options
        gamma = run_gamma(options.gamma, options.online_scale, schedule.gamma, self.optimizer, self.base_lr)
        # The run's recipe: the schedule's own, overridden by this run's options (the schedule is not changed).
        rule = schedule.gamma if gamma is None else check_gamma(gamma)
        normalization = options.input_normalization or schedule.input_normalization
        if rule == "range_test":
            check_range_test_engine(sharded=is_sharded(trainable_parameters(self.model)))
        num_classes = options.num_classes or default_num_classes(self.model)
        if (rule == "auto" or normalization == "log_num_classes") and not num_classes:
            raise ValueError(
                "The schedule needs the number of classes C (gamma='auto' or input_normalization='log_num_classes') "
                "and the model's config does not give it: pass num_classes."
            )
        self.range_test, self.last_step = None, None
        self._stage_firsts = set(schedule.stage_boundaries(self.num_training_steps))
        if options.meta_train:
            # Meta-training reads every step's loss on the host (its LR graph is rebuilt from it), so the schedule
            # steps there: on a GPU its ~25 tiny kernels per step, and the hundreds of its meta step (LSTM backward,
            # Adam), would each be a launch; the hypergradient comes from the device as one number per horizon step.
            schedule.to("cpu")
            self.device_step = None
        else:
            schedule.to(self.device)  # the schedule steps where the loss is: no copy to the host
        # With online_scale the shape's unit is 1: the optimizer is given shape_t, and S * shape_t is applied.
        unit = 1.0 if options.online_scale else self.base_lr
        self.run = schedule.start(
            num_classes,
            unit if rule == "relative" else None,
            gamma=gamma,
            input_normalization=options.input_normalization,
            relative_max_scale=options.relative_max_scale,
        )
        if not options.meta_train:
            self.device_step = DeviceStep(self.run, self.lr_dtype or torch.float64, options.step_backend)
            self.device_step.path(schedule.stages[0])  # a backend this device cannot run is refused now
        self.meta = None
        if options.meta_train:
            collate = self.held_out_collate_fn or getattr(self.train_dataloader, "collate_fn", None)
            if collate is None:
                collate = torch.utils.data.default_collate
            batch_size = options.meta_batch_size or self.per_device_batch_size
            self.meta = MetaLearner(
                self.run,
                options,
                self.held_out,
                collate,
                batch_size,
                seed=self.seed,
                label_names=self.label_names,
            )
            self.meta.start(self.optimizer, self.num_training_steps)
        if restored is None:
            self._start_online_scale(None)
            return
        with restoring(self.checkpoint_name):
            self._start_online_scale(restored)
            weights = dict(restored["schedule"])
            # before runs were apart from schedules, the run's state was the schedule's "_extra_state"
            legacy = weights.pop("_extra_state", None)
            schedule.load_state_dict(check_weights(weights, schedule.state_dict(), "schedule"))
            saved = restored.get("run") or legacy
            if saved is None:
                raise ValueError("it holds no run state: the LR sequence cannot be continued.")
            self.run.load_state_dict(saved)
            if self.meta is not None:
                if restored.get("meta") is None:
                    raise ValueError("it was written without meta-training: cannot resume with meta_train=True.")
                self.meta.load_state_dict(restored["meta"], trainable_parameters(self.model))
        saved_total = restored.get("num_training_steps")
        if isinstance(saved_total, int) and saved_total != self.num_training_steps:
            # As Trainer's own schedulers do on such a resume, the stages follow the new length: the next step
            # enters the stage it belongs to now (the LSTM state carries over, as across any stage switch).
            next_step = int(restored["last_epoch"])
            self._stage_firsts.add(next_step)
            logger.warning(
                "Resuming a run of %d optimizer steps as one of %d: the schedule's stages follow the new length "
                "(step %d is in stage %d, it was in stage %d).",
                saved_total,
                self.num_training_steps,
                next_step + 1,
                self.run.stage_at(next_step, self.num_training_steps),
                self.run.stage,
            )
        if self.device_step is not None and self.run.stage >= 0:
            self.device_step.prepare()  # a resumed run steps fast from its first step: capture before it

    def unused_options(self) -> list[str]:
        scale = self.options.relative_max_scale
        if scale is not None and self.run.gamma not in BASE_LR_RULES:  # (a bound on lr / base LR)
            return [f"relative_max_scale={scale:g} (gamma={self.run.gamma!r})"]
        return []

    def lr_scale_source(self) -> tuple[str | None, bool]:
        run, online = self.run, self.options.online_scale
        if online:
            return f"online_scale={online!r} learns the LR's scale S", False
        if run.gamma == "relative":
            return None, False
        if run.gamma == "range_test":
            return f"gamma='range_test' measured the LR on this task: {run.base_lr:.4g}", False
        if run.gamma == "auto":
            return (
                f"gamma='auto' (the released rule) gives gamma={run.current_gamma:.4g}, times the schedule's output",
                True,
            )
        return f"gamma={run.gamma:g} is fixed, times the schedule's output", True

    def _check_loop(self, loss_from_model: bool, train_dataloader: DataLoader | None) -> None:
        run = self.run
        reads_data = [
            name
            for name, needed in (
                ('gamma="auto"', run.needs_average_loss),
                ('gamma="range_test"', run.gamma == "range_test"),
            )
            if needed
        ]
        needs = reads_data + (["meta_train=True"] if self.options.meta_train else [])
        if needs and not loss_from_model:
            raise ValueError(
                f"{' and '.join(needs)} evaluate the model's own loss on other batches: with loss_from_model=False "
                "the model returns none. Use a model that returns its loss, or a fixed gamma."
            )
        if reads_data and train_dataloader is None:
            raise ValueError(f"{' and '.join(reads_data)} reads the training data: pass train_dataloader.")

    def _lr_for_step(self, step: int, loss: torch.Tensor) -> tuple[float | torch.Tensor, float]:
        run = self.run
        # Relative mode scales each group's own initial LR; otherwise the first group gets the schedule's
        # LR and the others in proportion to their initial LRs.
        reference = self.base_lr if run.gamma == "relative" else self.initial_lrs[0]
        stage = run.stage if step not in self._stage_firsts else run.stage_at(step, self.num_training_steps)
        if stage == run.stage and self.device_step is not None and self.device_step.ready():
            return self.device_step.step(loss), reference
        self.sync()
        if stage != run.stage:
            average = measured = None
            if run.needs_average_loss:
                average = average_training_loss(
                    self.model, self.train_dataloader, self.device, self.options.auto_gamma_batches
                )
            if run.gamma == "range_test" and run.base_lr is None:
                with self.meter.paused():
                    measured = self._run_range_test()
            run.enter_stage(stage, average_loss=average, base_lr=measured)
            logger.info("MLR-SNet stage %d from step %d (gamma=%s)", stage, step, run.current_gamma)
        loss = loss.item()
        state_before, steps_before = run.state, run.num_steps
        run.step(loss)
        # What meta-training needs to rebuild this LR's graph at the next meta update, or None when skipped.
        self.last_step = (
            {"stage": run.stage, "state": state_before, "loss": loss} if run.num_steps > steps_before else None
        )
        if self.meta is not None:
            self.meta.before_step(step, self.model, self.last_step)
        if self.device_step is not None:
            self.device_step.prepare()  # here, where the host waits anyway: on CUDA, capture the next steps' graph
        return run.last_lr, reference  # last_lr: the exact float (capped if capped)

    def _after_step(self, step: int) -> None:
        if self.meta is not None:
            self.meta.after_step(step, self.model, self.run.last_lr, self.device, self.meter)

    def _skipped(self, step: int) -> None:
        if self.meta is not None:
            self.meta.skipped(step)

    def sync(self) -> None:
        super().sync()
        if self.device_step is not None:
            self.device_step.sync()

    def _run_range_test(self) -> float:
        """``gamma="range_test"``: the LR chosen by a range test on a copy of the model, the same on every process."""
        if self.train_dataloader is None:
            raise ValueError("gamma='range_test' needs the training data for its LR range test.")
        options = self.options
        self.range_test = lr_range_test(
            self.model,
            self.optimizer,
            ordered_batches(self.train_dataloader),
            max_grad_norm=self.max_grad_norm,
            device=self.device,
            num_steps=options.range_test_steps,
            min_lr=options.range_test_min_lr,
            max_lr=options.range_test_max_lr,
            rule=options.range_test_rule,
        )
        chosen = [self.range_test.lr]
        if PartialState().num_processes > 1:  # rank 0's choice is the one used, whatever the others measured
            broadcast_object_list(chosen, from_process=0)
        return chosen[0]

    def finish(self) -> None:
        super().finish()  # syncs the device steps too
        if self.meta is not None:
            self.meta.finish()

    def published_schedule(self, trajectory: bool = False) -> MLRSNetSchedule:
        """A copy of the schedule (or its trajectory) with the recipe as this run used it."""
        if trajectory:
            if self.meta is None:
                raise ValueError("trajectory=True needs a meta-training run with snapshot_fractions set.")
            return self.meta.trajectory()
        schedule = super().published_schedule()
        if self.run is not None:  # (before training: the schedule as it was given)
            schedule.configure(**self.run.recipe())
        return schedule

    def _runtime_state(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule.state_dict(),
            "run": None if self.run is None else self.run.state_dict(),
            "meta": None if self.meta is None else self.meta.state_dict(),
            "online_scale": None if self.online_scale is None else self.online_scale.state_dict(),
        }
