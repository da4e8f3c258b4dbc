"""Drivers: a learned schedule as the Trainer's ``lr_scheduler``.

A driver is shaped like transformers' own adaptive schedulers (``GreedyLR``): the Trainer calls ``step()``
after every optimizer step it takes, logs ``get_last_lr()`` and checkpoints ``state_dict()`` in
``scheduler.pt``. Setting the LR needs the step's training loss, which exists only after the backward
pass, so :class:`~mlrsnet_hf.MLRSNetCallback` calls :meth:`LRDriver.prepare_step` just before
``optimizer.step()`` (after gradient clipping): the schedule reads the loss and the LR is written into every
parameter group. ``get_last_lr()`` then reports exactly the LR used. One route for the LR, one for resume,
for :class:`~mlrsnet_hf.MLRSNetTrainer` and a plain ``Trainer`` alike.

In a training loop of your own (PyTorch or ``accelerate``), :meth:`LRDriver.bind` (what
:meth:`MLRSNetDriver.for_loop` calls) hooks the same two calls onto the optimizer itself: ``prepare_step`` runs
in its step pre-hook (after your clipping) and ``step`` in its post-hook.

:class:`MLRSNetDriver` drives an :class:`~mlrsnet_hf.MLRSNetSchedule` (and meta-trains it with a
:class:`~mlrsnet_hf.meta_training.MetaLearner`); :class:`~mlrsnet_hf.lr_controller_driver.LRControllerDriver`
drives a PPO-trained :class:`~mlrsnet_hf.LRController`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from accelerate.state import PartialState
from accelerate.utils import broadcast_object_list
from torch import nn
from torch.utils.data import DataLoader
from transformers.utils import find_labels

from . import publishing
from .device_step import DeviceStep
from .engines import deepspeed_config
from .loss_meter import LossMeter
from .lr_range_test import RangeTestResult, lr_range_test
from .measurements import average_training_loss, loader_batch_size, ordered_batches
from .meta_gradient import is_sharded
from .meta_training import MetaLearner, trainable_parameters
from .online_scale import MechanicScale
from .optimizers import is_sgd, optimizer_name, tensor_lr_dtype, unwrap
from .options import ScheduleOptions
from .schedule import MLRSNetSchedule

logger = logging.getLogger(__name__)


def default_num_classes(model: nn.Module) -> int | None:
    """C for a model: the vocabulary size of a language model, else ``config.num_labels``."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    get_output = getattr(model, "get_output_embeddings", None)
    is_lm = callable(get_output) and get_output() is not None
    if is_lm and getattr(config, "vocab_size", None):
        return int(config.vocab_size)
    return getattr(config, "num_labels", None)


class LRDriver:
    """What every learned schedule needs as the Trainer's ``lr_scheduler``: the loss of each step, the LR bookkeeping.

    Subclasses implement :meth:`_start` (resolve the run's settings, reset or restore their state),
    :meth:`_lr_for_step` (their LR rule) and their runtime state. ``held_out`` is the family's held-out set (the
    meta set, or the LR controller's probe examples); ``held_out_collate_fn`` collates it (default: the training
    loader's); ``label_names`` are the batch keys its loss needs.
    """

    def __init__(
        self,
        schedule: Any,
        options: ScheduleOptions | None = None,
        held_out: Any = None,
        held_out_collate_fn: Any = None,
        label_names: list[str] | None = None,
    ) -> None:
        self.schedule = schedule
        self.options = options or ScheduleOptions()
        self.held_out = held_out
        self.held_out_collate_fn = held_out_collate_fn
        self.label_names = label_names
        self.meter = LossMeter()
        self.optimizer: torch.optim.Optimizer | None = None
        self.last_epoch = 0  # optimizer steps taken (the Trainer's calls to step())
        self.last_lrs: list[float] = []
        self.initial_lrs: list[float] = []
        self.lr_history: list[float] = []  # the LR of every step of this process's run (not checkpointed)
        self._pending_lrs: list[torch.Tensor] = []  # device LRs not yet in lr_history (read at the next sync)
        self._restored: dict[str, Any] | None = None
        self._pending_step: int | None = None
        self._step_lr: float | torch.Tensor | None = None  # the reference LR of the pending step (online scale)
        # The online scale (options.online_scale), which multiplies every update of the optimizer it wraps.
        self.online_scale: MechanicScale | None = None
        # False: the trainer hands each forward's output to meter.record (MLRSNetTrainer.compute_loss)
        self.loss_from_forward_hook = True
        self._loop_hooks: list[Any] = []  # bind(): the optimizer hooks of a loop of the user's own

    # ------------------------------------------------ the Trainer's side
    def step(self) -> None:
        """Called by the Trainer after each optimizer step it took (not after a skipped one)."""
        self.last_epoch += 1
        step, self._pending_step = self._pending_step, None
        if step is not None:
            self._after_step(step)

    def get_last_lr(self) -> list[float]:
        """The LR of the current optimizer step per parameter group (what the Trainer logs).

        Numbers, or 0-d device tensors when the optimizer takes a tensor LR (as ``torch.optim.lr_scheduler``
        reports tensor LRs). A plain ``Trainer`` reads this on the host after every step; MLRSNetTrainer only
        at logging steps.
        """
        if self.last_lrs:
            return list(self.last_lrs)
        return [g["lr"] for g in self.optimizer.param_groups] if self.optimizer is not None else []

    def sync(self) -> None:
        """Bring what the device holds (LRs of past steps, the schedule's counters) to the host: one read."""
        pending, self._pending_lrs = self._pending_lrs, []
        if pending:
            self.lr_history.extend(torch.stack(pending).tolist())

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs, as tensors and plain data (the Trainer reloads it with ``weights_only``).

        Its size does not grow with the run: the LR history is not in it (``log_history`` records the logged LRs).
        """
        self.sync()
        return {
            "family": type(self).__name__,
            "last_epoch": self.last_epoch,
            "last_lrs": [float(v) for v in self.last_lrs],
            "initial_lrs": list(self.initial_lrs),
            **self._runtime_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Keep a checkpoint's state; it is applied when the run starts (:meth:`start`)."""
        family = state.get("family", type(self).__name__)
        if family != type(self).__name__:
            raise ValueError(
                f"The checkpoint's scheduler.pt was written by {family}: cannot resume with {type(self).__name__}."
            )
        self._restored = dict(state)

    # -------------------------------------------------- the callback's side
    def start(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        args: Any,
        num_training_steps: int,
        train_dataloader: DataLoader | None = None,
    ) -> None:
        """Bind to this run (``args``: its ``TrainingArguments``); a state loaded from a checkpoint is applied now."""
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > PartialState().num_processes:
            raise RuntimeError(
                f"{launched} processes were launched (WORLD_SIZE={launched}) but this one trains alone: on a machine "
                "without GPUs pass --use_cpu (TrainingArguments(use_cpu=True)) so that they form one gloo job; "
                "otherwise each process would train the same model alone and write the same output_dir."
            )
        if not (args.learning_rate > 0):
            raise ValueError(
                f"learning_rate must be positive (the reference of the schedule's LR), got {args.learning_rate}."
            )
        self.optimizer = optimizer
        self.model = model
        self.args = args
        self.device = args.device
        self.base_lr = float(args.learning_rate)
        self.max_grad_norm = args.max_grad_norm
        self.average_tokens_across_devices = args.average_tokens_across_devices
        self.num_training_steps = num_training_steps
        self.train_dataloader = train_dataloader
        self.lr_dtype = tensor_lr_dtype(optimizer)
        self.tensor_lr = self.lr_dtype is not None
        self.seed = args.seed
        self.per_device_batch_size = args.per_device_train_batch_size
        restored, self._restored = self._restored, None
        for group in optimizer.param_groups:  # group ratios are kept relative to the LRs the run started from
            group.setdefault("initial_lr", group["lr"])
        self.initial_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_lrs, self.lr_history, self._pending_lrs, self._pending_step = [], [], [], None
        self._start(restored)
        if restored is not None:
            self.last_epoch = int(restored["last_epoch"])
            self.last_lrs = list(restored["last_lrs"])
            self.initial_lrs = list(restored["initial_lrs"])
        else:
            self.last_epoch = 0
        self.meter.attach(model, hook=self.loss_from_forward_hook)

    def prepare_step(self, step: int) -> None:
        """Set the LR of optimizer step ``step`` (0-based global step) from its training loss.

        The loss stays on the device; the LR is written as a device tensor when the optimizer takes one
        without a sync (:func:`tensor_lr_dtype`), else as a number.
        """
        if self._pending_step is not None:  # the last step was not taken (skipped by the Trainer)
            self._skipped(self._pending_step)
        if self._step_lr is not None:  # a step not taken still has its place in the history, at the scale as it is
            self._record(self._step_lr * self.online_scale.scale)
        lr, reference = self._lr_for_step(step, self.meter.step_loss(self.average_tokens_across_devices))
        if isinstance(lr, torch.Tensor) and not self.tensor_lr:
            lr = lr.item()  # this optimizer needs a number: one read per step
        if self.online_scale is None:
            self._record(lr)
        else:
            self._step_lr = lr  # recorded by _scaled_step once the update is applied
        # (a group at the reference LR gets the LR itself: no operation, the same number)
        self.last_lrs = [lr if initial == reference else lr * (initial / reference) for initial in self.initial_lrs]
        for group, value in zip(self.optimizer.param_groups, self.last_lrs, strict=True):
            group["lr"] = value
        self._pending_step = step

    def _scaled_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """Optimizer post-hook after the online scale's: this step's update was applied with ``S_{t+1} * lr_t``.

        The Trainer logs the LR right after ``optimizer.step()``, before ``lr_scheduler.step()``: set it here.
        """
        if self._step_lr is None:
            return
        scale = self.online_scale.scale
        self.last_lrs = [lr * scale for lr in self.last_lrs]
        self._record(self._step_lr * scale)
        self._step_lr = None

    def _record(self, lr: float | torch.Tensor) -> None:
        """Add the LR of a step to ``lr_history``: a number now, a device tensor at the next :meth:`sync`."""
        if isinstance(lr, torch.Tensor):
            self._pending_lrs.append(lr)
            if len(self._pending_lrs) >= 4096:  # keep the device list short when nothing logs
                self.sync()
        else:
            self.lr_history.append(lr)

    def finish(self) -> None:
        self.sync()
        self.meter.detach()
        self._stop_online_scale()
        for hook in self._loop_hooks:
            hook.remove()
        if self._loop_hooks and getattr(unwrap(self.optimizer), "_mlrsnet_driver", None) is self:
            del unwrap(self.optimizer)._mlrsnet_driver
        self._loop_hooks = []

    # ------------------------------------------------- a loop of your own
    def bind(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        num_training_steps: int,
        *,
        train_dataloader: DataLoader | None = None,
        loss_from_model: bool = True,
        max_grad_norm: float | None = None,
        seed: int = 0,
        batch_size: int | None = None,
    ) -> LRDriver:
        """Drive ``optimizer`` in a training loop of your own: each ``optimizer.step()`` gets the schedule's LR.

        The LR of a step is set in the optimizer's step pre-hook, from the mean training loss of the forwards
        since the last step (gradient-accumulation micro-batches, averaged over the processes of a distributed
        run), and the step is counted in its post-hook; call :meth:`finish` after the loop. A checkpoint's
        :meth:`state_dict`, loaded with :meth:`load_state_dict` before ``bind``, continues the LR sequence.

        Args:
            model: the model being trained (an ``accelerate``-prepared one works).
            optimizer: its torch optimizer, or the ``accelerate`` wrapper of one; its first parameter group's
                ``initial_lr`` (set by a previous scheduler), else its ``lr``, is the reference LR (``learning_rate``
                of the Trainer: the base of ``gamma="relative"``).
            num_training_steps: the optimizer steps of the run (the schedule's stages are fractions of it).
            train_dataloader: the training data, for ``gamma="auto"`` (its average loss), ``"range_test"`` and
                the meta batches' collation.
            loss_from_model: read each training-mode forward's loss from the model's output (``output.loss``,
                ``output["loss"]``, or a tuple's first item if it is a scalar tensor); False: hand each micro-batch's
                loss to :meth:`observe` (then ``gamma="auto"``, ``"range_test"`` and meta-training, which evaluate
                the model's own loss on other batches, are refused).
            max_grad_norm: the clipping of your loop, for the range test's steps (None: none).
            seed: the seed of the meta batches' order (meta-training).
            batch_size: the meta batches' size when ``meta_batch_size`` is not set (default: the data loader's).

        A step that a ``GradScaler`` skips calls no hook: its losses count towards the next step's mean. A driver
        is also a context manager: ``with MLRSNetDriver.for_loop(...) as driver:`` calls :meth:`finish` at the end.
        """
        if self._loop_hooks:
            raise RuntimeError("This driver is already bound to an optimizer: call finish() first.")
        inner = unwrap(optimizer)
        if not isinstance(inner, torch.optim.Optimizer):
            raise TypeError(
                f"A loop's driver hooks a torch optimizer's step, and {type(inner).__name__} is not one (DeepSpeed's "
                "optimizers are not): under DeepSpeed train with MLRSNetTrainer."
            )
        if getattr(inner, "_mlrsnet_driver", None) is not None:
            raise RuntimeError("This optimizer is driven by another driver already: call its finish() first.")
        first = inner.param_groups[0]
        args = SimpleNamespace(  # what start() reads off TrainingArguments
            learning_rate=float(first.get("initial_lr", first["lr"])),
            device=next(model.parameters()).device,
            max_grad_norm=max_grad_norm,
            average_tokens_across_devices=False,
            seed=seed,
            per_device_train_batch_size=batch_size or loader_batch_size(train_dataloader),
        )
        if self.options.meta_train and not (self.options.meta_batch_size or args.per_device_train_batch_size):
            raise ValueError("Meta-training needs the meta batches' size: pass meta_batch_size (or batch_size).")
        if self.label_names is None:
            self.label_names = find_labels(type(getattr(model, "module", model)))
        self.loss_from_forward_hook = loss_from_model
        try:
            self.start(model, optimizer, args, num_training_steps, train_dataloader)
            self._check_loop(loss_from_model, train_dataloader)
        except BaseException:
            self.finish()  # nothing of this driver stays on the optimizer or the model
            raise
        inner._mlrsnet_driver = self
        self._loop_hooks = [
            inner.register_step_pre_hook(lambda *_: self.prepare_step(self.last_epoch)),
            inner.register_step_post_hook(lambda *_: self.step()),
        ]
        return self

    def _check_loop(self, loss_from_model: bool, train_dataloader: DataLoader | None) -> None:
        """Refuse, at bind time, what a loop's settings cannot give the family (not at the first step)."""

    def __enter__(self) -> LRDriver:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.finish()

    def save_schedule(
        self, save_directory: str | Path, meta_training: dict[str, Any] | None = None, trajectory: bool | None = None
    ) -> None:
        """Write the schedule as :meth:`MLRSNetTrainer.save_schedule <mlrsnet_hf.MLRSNetTrainer.save_schedule>` does
        (after meta-training, by default its trajectory), recording this loop's run; call it on one process."""
        publishing.save_schedule(self, save_directory, publishing.loop_record(self), meta_training, trajectory)

    def push_schedule_to_hub(
        self, repo_id: str, meta_training: dict[str, Any] | None = None, trajectory: bool | None = None, **kwargs: Any
    ) -> Any:
        """Upload what :meth:`save_schedule` writes to ``repo_id`` (``kwargs`` as for ``MLRSNetSchedule.push_to_hub``)."""
        commit, _ = publishing.push_schedule_to_hub(
            self, repo_id, publishing.loop_record(self), meta_training, trajectory, **kwargs
        )
        return commit

    def observe(self, loss: torch.Tensor | float) -> None:
        """Hand over the training loss of one forward (a micro-batch) in a loop bound with ``loss_from_model=False``:
        a scalar (a tensor of per-example losses counts as its mean), with or without gradients."""
        if self.loss_from_forward_hook:
            raise RuntimeError(
                "This driver reads the losses from the model's outputs; bind it with loss_from_model=False to hand "
                "them over with observe() (else each would count twice)."
            )
        value = torch.as_tensor(loss).detach()
        if not value.is_floating_point():
            value = value.float()
        with torch.enable_grad():  # a loss computed under no_grad is still this step's loss
            self.meter.record(value.mean(), partial=False)

    def _stop_online_scale(self) -> None:
        """Unhook the online scale from the optimizer (its state stays readable)."""
        self._step_lr = None
        if self.online_scale is not None:
            self.online_scale.detach()
            self._scale_hook.remove()

    # ------------------------------------------------------- per family
    def _start(self, restored: dict[str, Any] | None) -> None:
        raise NotImplementedError

    def _lr_for_step(self, step: int, loss: torch.Tensor) -> tuple[float | torch.Tensor, float]:
        """``(lr, reference)``: group ``i`` gets ``lr * initial_lr_i / reference``; ``loss`` is a device tensor."""
        raise NotImplementedError

    def _after_step(self, step: int) -> None:
        pass

    def _skipped(self, step: int) -> None:
        pass

    def _runtime_state(self) -> dict[str, Any]:
        raise NotImplementedError


class MLRSNetDriver(LRDriver):
    """Feeds an MLR-SNet schedule the training loss of each optimizer step; with ``meta_train``, learns it online.

    Args:
        schedule: the schedule (its runtime state, and with meta-training its weights, change during a run).
        options: the run's :class:`~mlrsnet_hf.options.ScheduleOptions`.
        held_out: the meta set of meta-training (``options.meta_train``); ``held_out_collate_fn`` and
            ``label_names`` as for :class:`LRDriver`.
    """

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
        self.meta: MetaLearner | None = None
        self.range_test: RangeTestResult | None = None  # the curve and choice of gamma="range_test", once run
        self.last_step: dict[str, Any] | None = None
        self.device_step: DeviceStep | None = None  # transfer mode: steps between stage entries stay on the device

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
        gamma = options.gamma
        if options.online_scale:
            # The LR is S * shape_t, shape_t the schedule's LR relative to its first (1 at the first step) and S
            # learned: neither gamma nor learning_rate sets it (learning_rate keeps the parameter groups' ratios).
            if gamma not in (None, "relative"):
                logger.warning(
                    "online_scale=%r learns the LR's scale: gamma=%r is not used (the schedule gives the shape only).",
                    options.online_scale,
                    gamma,
                )
            gamma = "relative"
        elif gamma is None and not is_sgd(self.optimizer) and not schedule.uses_base_lr:
            logger.warning(
                "%s is not SGD: using gamma='relative' (learning_rate=%g sets the scale, the schedule the shape). "
                "Pass gamma explicitly to override.",
                optimizer_name(self.optimizer),
                self.base_lr,
            )
            gamma = "relative"
        schedule.configure(gamma, options.input_normalization, options.relative_max_scale)
        if schedule.gamma == "range_test" and is_sharded(trainable_parameters(self.model)):
            raise ValueError(
                "gamma='range_test' runs its range test on a copy of the model, and a sharded (FSDP2) model has no "
                "whole copy on one process: run the range test without sharding (`mlrsnet_hf.lr_range_test`) and pass "
                "the LR it finds as learning_rate with gamma='relative', or use gamma='auto'."
            )
        num_classes = options.num_classes or default_num_classes(self.model)
        if (schedule.gamma == "auto" or schedule.input_normalization == "log_num_classes") and not num_classes:
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
            self.device_step = DeviceStep(schedule, self.lr_dtype or torch.float64, options.step_backend)
            self.device_step.path(schedule.stages[0])  # a backend this device cannot run is refused now
        # With online_scale the shape's unit is 1: the optimizer is given shape_t, and S * shape_t is applied.
        unit = 1.0 if options.online_scale else self.base_lr
        schedule.start(num_classes=num_classes, base_lr=unit if schedule.gamma == "relative" else None)
        self.meta = None
        if options.meta_train:
            collate = self.held_out_collate_fn or getattr(self.train_dataloader, "collate_fn", None)
            if collate is None:
                collate = torch.utils.data.default_collate
            batch_size = options.meta_batch_size or self.per_device_batch_size
            self.meta = MetaLearner(
                schedule,
                options,
                self.held_out,
                collate,
                batch_size,
                seed=self.seed,
                label_names=self.label_names,
            )
            self.meta.start(self.optimizer, self.num_training_steps)
        self._start_online_scale(restored)
        if restored is not None:
            schedule.load_state_dict(restored["schedule"])
            if self.device_step is not None and schedule.stage >= 0:
                self.device_step.prepare()  # a resumed run steps fast from its first step: capture before it
            if self.meta is not None:
                if restored.get("meta") is None:
                    raise ValueError(
                        "The checkpoint was written without meta-training: cannot resume with meta_train=True."
                    )
                self.meta.load_state_dict(restored["meta"])

    def _start_online_scale(self, restored: dict[str, Any] | None) -> None:
        """``options.online_scale``: wrap the run's optimizer with the scale (restored from a checkpoint's state)."""
        self._stop_online_scale()
        self.online_scale = None
        saved = None if restored is None else restored.get("online_scale")
        if not self.options.online_scale:
            if saved is not None:
                raise ValueError(
                    "The checkpoint's scheduler.pt holds an online scale (the run was started with "
                    f"online_scale={saved.get('method')!r}): resume with the same online_scale."
                )
            return
        if deepspeed_config(self.args) is not None or is_sharded(trainable_parameters(self.model)):
            raise ValueError(
                "online_scale needs the whole parameters in one torch optimizer (its inner products run over them); "
                "DeepSpeed and FSDP2 shard them: train without online_scale there, or under DDP."
            )
        logger.info(
            "online_scale=%r: the LR of each step is S * shape_t, S learned by Mechanic over %s (two parameter-sized "
            "buffers); the logged learning_rate is that product.",
            self.options.online_scale,
            optimizer_name(self.optimizer),
        )
        self.online_scale = MechanicScale()
        self.online_scale.attach(self.optimizer)  # its hook first: _scaled_step reads the S it computed
        self._scale_hook = self.online_scale.optimizer.register_step_post_hook(self._scaled_step)
        if restored is not None:
            if saved is None:
                raise ValueError(
                    "The checkpoint's scheduler.pt holds no online scale (the run was started without one): "
                    "resume without online_scale."
                )
            self.online_scale.load_state_dict(saved)

    def _check_loop(self, loss_from_model: bool, train_dataloader: DataLoader | None) -> None:
        schedule = self.schedule
        reads_data = [
            name
            for name, needed in (
                ('gamma="auto"', schedule.needs_average_loss),
                ('gamma="range_test"', schedule.gamma == "range_test"),
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
        schedule = self.schedule
        # Relative mode scales each group's own initial LR; otherwise the first group gets the schedule's
        # LR and the others in proportion to their initial LRs.
        reference = self.base_lr if schedule.gamma == "relative" else self.initial_lrs[0]
        stage = schedule.stage if step not in self._stage_firsts else schedule.stage_at(step, self.num_training_steps)
        if stage == schedule.stage and self.device_step is not None and self.device_step.ready():
            return self.device_step.step(loss), reference
        self.sync()
        if stage != schedule.stage:
            average = measured = None
            if schedule.needs_average_loss:
                average = average_training_loss(
                    self.model, self.train_dataloader, self.device, self.options.auto_gamma_batches
                )
            if schedule.gamma == "range_test" and schedule.base_lr is None:
                with self.meter.paused():
                    measured = self._run_range_test()
            schedule.enter_stage(stage, average_loss=average, base_lr=measured)
            logger.info("MLR-SNet stage %d from step %d (gamma=%s)", stage, step, schedule.current_gamma)
        loss = loss.item()
        state_before, steps_before = schedule.state, schedule.num_steps
        schedule.step(loss)
        # What meta-training needs to rebuild this LR's graph at the next meta update, or None when skipped.
        self.last_step = (
            {"stage": schedule.stage, "state": state_before, "loss": loss}
            if schedule.num_steps > steps_before
            else None
        )
        if self.meta is not None:
            self.meta.before_step(step, self.model, self.last_step)
        if self.device_step is not None:
            self.device_step.prepare()  # here, where the host waits anyway: on CUDA, capture the next steps' graph
        return schedule.last_lr, reference  # last_lr: the exact float (capped if capped)

    def _after_step(self, step: int) -> None:
        if self.meta is not None:
            self.meta.after_step(step, self.model, self.schedule.last_lr, self.device, self.meter)

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

    def _runtime_state(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule.state_dict(),
            "meta": None if self.meta is None else self.meta.state_dict(),
            "online_scale": None if self.online_scale is None else self.online_scale.state_dict(),
        }
