"""Drivers: a learned schedule as the Trainer's ``lr_scheduler``, or in a training loop of your own.

A driver is shaped like transformers' adaptive schedulers: the Trainer calls ``step()`` after every optimizer step
it takes, logs ``get_last_lr()`` and checkpoints ``state_dict()`` in ``scheduler.pt``. The LR of a step needs its
training loss, which exists only after the backward pass: :meth:`LRDriver.prepare_step` runs in the optimizer's
step pre-hook (after clipping; :mod:`mlrsnet_hf.loop`) and writes it into every parameter group, for
:class:`~mlrsnet_hf.MLRSNetTrainer`, a plain ``Trainer`` and a loop of your own alike.

Each family has its driver, registered with the family (:mod:`mlrsnet_hf.families`):
:class:`~mlrsnet_hf.mlrsnet.driver.MLRSNetDriver` drives (and meta-trains) an :class:`~mlrsnet_hf.MLRSNetSchedule`,
:class:`~mlrsnet_hf.lr_controller.driver.LRControllerDriver` a PPO-trained :class:`~mlrsnet_hf.LRController`.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from .engines import check_one_job, check_online_scale_engine, deepspeed_config
from .loop import LoopBinding
from .loss_meter import LossMeter
from .meta_gradient import is_sharded, trainable_parameters
from .online_scale import MechanicScale
from .optimizers import is_sgd, optimizer_name, tensor_lr_dtype, unwrap
from .options import ScheduleOptions
from .state_checks import CheckpointStateError, check_driver_state, restoring

logger = logging.getLogger(__name__)

MAX_FIRST_LR_RATIO = 10.0
"""With an optimizer other than SGD, a first LR more than this many times ``learning_rate``, set by a scale that is
not ``learning_rate`` (a fixed or ``"auto"`` gamma), is refused (:meth:`LRDriver.check_first_lr`)."""


# TrainingArguments' LR-schedule settings, with their defaults: a learned schedule sets every step's LR, so none of
# them is used (the command line's help leaves them out too).
DEFAULT_LEARNING_RATE = 5e-5  # TrainingArguments' default (tested): not named as unused, the user may not have set it
LR_SCHEDULE_SETTINGS = {
    "lr_scheduler_type": "linear",
    "lr_scheduler_kwargs": None,
    "warmup_steps": 0,
    "warmup_ratio": 0,
}


def unused_lr_settings(args: Any) -> list[str]:
    """The settings of :data:`LR_SCHEDULE_SETTINGS` that ``args`` sets away from their defaults, as ``name=value``."""
    settings = []
    for name, default in LR_SCHEDULE_SETTINGS.items():
        value = getattr(args, name, default)
        value = getattr(value, "value", value)  # (lr_scheduler_type is an enum)
        if value and value != default:
            settings.append(f"{name}={value:g}" if isinstance(value, (int, float)) else f"{name}={value!r}")
    return settings


class LRDriver(LoopBinding):
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
        self.num_training_steps: int | None = None  # the run's length (start())
        self.last_lrs: list[float] = []
        self.initial_lrs: list[float] = []
        self.lr_history: list[float] = []  # the LR of every step of this process's run (not checkpointed)
        self._pending_lrs: list[torch.Tensor] = []  # device LRs not yet in lr_history (read at the next sync)
        self._restored: dict[str, Any] | None = None
        self.checkpoint_name = "the checkpoint's scheduler.pt"  # (MLRSNetTrainer names its path)
        self._pending_step: int | None = None
        self._step_lr: float | torch.Tensor | None = None  # the reference LR of the pending step (online scale)
        self.online_scale: MechanicScale | None = None  # options.online_scale: it scales every update it wraps
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
            "num_training_steps": self.num_training_steps,  # (a resume with another max_steps is told)
            "last_lrs": [float(v) for v in self.last_lrs],
            "initial_lrs": list(self.initial_lrs),
            **self._runtime_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Keep a checkpoint's state; it is applied when the run starts (:meth:`start`)."""
        family = state.get("family", type(self).__name__) if isinstance(state, dict) else "another program"
        if family != type(self).__name__:
            raise CheckpointStateError(
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
        check_one_job()
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
        if not (math.isfinite(self.initial_lrs[0]) and self.initial_lrs[0] > 0):
            raise ValueError(
                f"The first parameter group's LR is {self.initial_lrs[0]}: the schedule sets the other groups' LRs in "
                "proportion to it, so it must be a positive number (put a group that trains first)."
            )
        if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
            raise ValueError(
                f"learning_rate must be positive (the reference of the schedule's LR), got {args.learning_rate}."
            )
        self.last_lrs, self.lr_history, self._pending_lrs, self._pending_step = [], [], [], None
        self.last_epoch, kept = 0, None
        self._first_lr_checked = restored is not None  # (a resumed run was checked when it started)
        if restored is not None:
            with restoring(self.checkpoint_name):
                kept = check_driver_state(restored, len(optimizer.param_groups))
        self._start(restored)
        if kept is not None:
            self.last_epoch, self.last_lrs, self.initial_lrs = kept
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
        if not self._first_lr_checked:
            self._first_lr_checked = True
            self.check_first_lr(float(lr) * self.initial_lrs[0] / reference)
        if isinstance(lr, torch.Tensor) and not self.tensor_lr:
            lr = lr.item()  # this optimizer needs a number: one read per step
        # (a group at the reference LR gets the LR itself: no operation, the same number)
        self.last_lrs = [lr if initial == reference else lr * (initial / reference) for initial in self.initial_lrs]
        # The history holds the first group's LR, the one the optimizer uses (as the Trainer logs it).
        if self.online_scale is None:
            self._record(self.last_lrs[0])
        else:
            self._step_lr = self.last_lrs[0]  # recorded by _scaled_step once the update is applied
        for group, value in zip(self.optimizer.param_groups, self.last_lrs, strict=True):
            group["lr"] = value
        self._pending_step = step

    def check_first_lr(self, first_lr: float) -> None:
        """At the first step of a run: say which of the user's LR settings the run does not use, naming the LR it uses
        instead (one warning), and refuse a first LR far above ``learning_rate`` with an optimizer other than SGD.

        ``first_lr`` is the first parameter group's LR at the first step. Only the scale's source, given by the family
        (:meth:`lr_scale_source`), tells whether ``learning_rate`` set it.
        """
        source, checked = self.lr_scale_source()
        unused = unused_lr_settings(self.args) + self.unused_options()
        if source is not None:
            # The LR the user gave: learning_rate, or the LR of an optimizer built by the user (its first group's).
            user_lr = self.initial_lrs[0]
            own = user_lr != self.base_lr
            setting = f"optimizer's lr={user_lr:g}" if own else f"learning_rate={user_lr:g}"
            ratio = first_lr / user_lr
            knob = "the optimizer's lr" if own else "learning_rate"
            if checked and not is_sgd(self.optimizer) and ratio > MAX_FIRST_LR_RATIO:
                raise ValueError(
                    f"{optimizer_name(self.optimizer)} would start at LR {first_lr:.4g}, {ratio:.0f}x the {setting} you "
                    f"set, because {source}: a scale for SGD (the paper's optimizer). With this optimizer leave gamma "
                    "unset (gamma='relative': learning_rate is the first step's LR and the schedule shapes it), use "
                    "gamma='range_test' or online_scale='mechanic', or pass optim='sgd'. To train at this LR anyway, "
                    f"set {knob} to at least {first_lr / MAX_FIRST_LR_RATIO:.4g}."
                )
            if own or user_lr != DEFAULT_LEARNING_RATE:  # (not the default the user may never have set)
                unused.insert(0, f"the {setting}" if own else setting)
        if unused:
            reason = f" ({source})" if source is not None else ""
            # under an online scale the optimizer is given the shape; the LR applied is S times it
            first = f"S x {first_lr:.4g}" if self.online_scale is not None else f"{first_lr:.4g}"
            logger.warning(
                "The learned schedule sets every step's LR: %s %s not used. The first step's LR is %s%s.",
                ", ".join(unused),
                "is" if len(unused) == 1 else "are",
                first,
                reason,
            )

    def unused_options(self) -> list[str]:
        """The family's run options that this run sets but does not use, as ``name=value`` (the first-step warning
        names them)."""
        return []

    def lr_scale_source(self) -> tuple[str | None, bool]:
        """What sets the run's LR scale in place of ``learning_rate`` (None: ``learning_rate`` sets it), and whether it is
        a scale given for SGD, refused with other optimizers when it starts far above ``learning_rate``."""
        return None, False

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
        check_online_scale_engine(
            deepspeed=deepspeed_config(self.args) is not None, sharded=is_sharded(trainable_parameters(self.model))
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

    def _stop_online_scale(self) -> None:
        """Unhook the online scale from the optimizer (its state stays readable)."""
        self._step_lr = None
        if self.online_scale is not None:
            self.online_scale.detach()
            self._scale_hook.remove()

    # ------------------------------------------------------- per family
    options_class: type | None = None  # the run options this family takes (None: none)

    @classmethod
    def from_options(cls, schedule: Any, options: dict[str, Any] | None = None, held_out: Any = None) -> LRDriver:
        """The driver of a run of ``schedule`` with ``options`` (keyword arguments of :attr:`options_class`; the
        ones set differently from their defaults) and the held-out data ``held_out``."""
        options = dict(options or {})
        if cls.options_class is None:
            if options:
                raise ValueError(
                    f"A {type(schedule).__name__} takes no schedule options (got {sorted(options)}): it sets the LR "
                    "itself."
                )
            return cls(schedule, None, held_out)
        return cls(schedule, cls.options_class.from_kwargs(options), held_out)

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

    def published_schedule(self, trajectory: bool = False) -> Any:
        """A copy of the schedule to publish; ``trajectory=True``: what meta-training produced along the run."""
        if trajectory:
            raise ValueError("trajectory=True needs a meta-training run with snapshot_fractions set.")
        return copy.deepcopy(self.schedule)
