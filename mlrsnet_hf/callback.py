"""The Trainer glue: drive a learned schedule from inside a ``transformers`` training loop.

:class:`LRDriver` holds what both schedule families need (the loss of each step, writing the LR);
:class:`ScheduleController` drives an :class:`MLRSNetSchedule` and :class:`ControllerDriver` a PPO-trained
:class:`~mlrsnet_hf.LRController`. Both are shared by :class:`MLRSNetCallback` (for a plain ``Trainer``)
and :class:`~mlrsnet_hf.MLRSNetTrainer`, so both set exactly the same LR sequence:

* the training loss of a step is read from the model's own output (a forward hook on the model,
  training-mode forwards with gradients only), averaged over the step's gradient-accumulation
  micro-batches and then over processes (token-normalised losses, when the Trainer passes
  ``num_items_in_batch``, are summed the way the Trainer sums them);
* just before ``optimizer.step()`` (``on_pre_optimizer_step``, after gradient clipping) the schedule
  reads that loss and the LR is written into every parameter group; the scheduler's ``get_last_lr()``
  reports it, so the logged ``learning_rate`` is the LR actually used;
* at the first step of each stage with ``gamma="auto"``, the average training loss is taken over the
  first ``auto_gamma_batches`` batches of the training set per process (in order, model in eval mode,
  no gradients), averaged over processes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate.state import PartialState
from accelerate.utils import broadcast_object_list, reduce, send_to_device
from torch import nn
from torch.utils.data import DataLoader
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from .config import parse_gamma
from .lr_controller import LRController, observe
from .lr_range_test import DEFAULT_RULE, RangeTestResult, lr_range_test
from .meta_gradient import model_loss
from .schedule import MLRSNetSchedule, check_relative_max_scale

logger = logging.getLogger(__name__)

SCHEDULE_DIR_NAME = "mlrsnet_schedule"


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


def is_sgd(optimizer: torch.optim.Optimizer) -> bool:
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the optimizer
    return isinstance(inner, torch.optim.SGD)


class LRDriver:
    """What every learned schedule needs from the loop: the training loss of each step, and a place to put the LR.

    Subclasses implement ``configure`` and ``before_optimizer_step`` (their own LR rule) and the runtime
    state; the loss capture and the LR bookkeeping (``last_lrs``, ``lr_history``) are shared.
    """

    def __init__(self) -> None:
        self.last_lrs: list[float] = []
        self.lr_history: list[float] = []
        self.initial_lrs: list[float] = []
        self._hook: Any = None
        self._loss_sum: torch.Tensor | None = None
        self._num_losses = 0
        self._partial = False
        self._paused = False

    def start_bookkeeping(self, optimizer: torch.optim.Optimizer) -> None:
        """Record the groups' initial LRs (their ratios are kept) and forget any earlier run's LRs."""
        self.initial_lrs = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
        self.last_lrs = [group["lr"] for group in optimizer.param_groups]
        self.lr_history = []

    def write_lr(self, optimizer: torch.optim.Optimizer, lr: float, reference: float) -> None:
        """Set the step's LR: parameter groups keep their ratios (group ``i`` gets ``lr * initial_i / reference``)."""
        self.last_lrs = [lr * (initial / reference) for initial in self.initial_lrs]
        for group, value in zip(optimizer.param_groups, self.last_lrs, strict=True):
            group["lr"] = value
        self.lr_history.append(lr)

    def attach(self, model: nn.Module) -> None:
        """Start reading the model's training losses (anything left from an interrupted run is dropped)."""
        self.detach()
        self._loss_sum, self._num_losses, self._partial = None, 0, False
        self._hook = model.register_forward_hook(self._record, with_kwargs=True)

    def detach(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Forwards inside this block are not training losses (e.g. meta batches)."""
        self._paused, was = True, self._paused
        try:
            yield
        finally:
            self._paused = was

    def _record(self, module: nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        if self._paused or not module.training or not torch.is_grad_enabled():
            return
        loss = model_loss(output)
        if loss is None:
            return
        loss = loss.detach().float().mean()
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._num_losses += 1
        self._partial = kwargs.get("num_items_in_batch") is not None

    def step_loss(self, average_tokens_across_devices: bool = True) -> float:
        """The training loss of this optimizer step, averaged over micro-batches and processes; resets the meter."""
        if self._loss_sum is None:
            raise RuntimeError(
                "The learned schedule needs the training loss, but the model returned none during this step. The model must "
                "return a loss (pass labels); with label_smoothing_factor or compute_loss_func the Trainer computes "
                "the loss outside the model, which the schedule cannot read."
            )
        if self._partial:
            # Token-normalised micro-batch losses (sum / num_items_in_batch) add up to the step loss.
            value = self._loss_sum
            if average_tokens_across_devices:
                value = value * PartialState().num_processes  # num_items_in_batch counted all processes
        else:
            value = self._loss_sum / self._num_losses
        self._loss_sum, self._num_losses = None, 0
        if PartialState().num_processes > 1:
            value = reduce(value, reduction="mean")
        return value.item()

    # ------------------------------------------------------ resume
    def runtime_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_runtime_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


class ScheduleController(LRDriver):
    """Feeds an MLR-SNet schedule the training loss of each optimizer step and writes its LR into the optimizer."""

    def __init__(
        self,
        schedule: MLRSNetSchedule,
        gamma: str | float | None = None,
        num_classes: int | None = None,
        input_normalization: str | None = None,
        relative_max_scale: float | None = None,
        auto_gamma_batches: int = 20,
        range_test_steps: int = 60,
        range_test_min_lr: float | None = None,
        range_test_max_lr: float | None = None,
        range_test_rule: str = DEFAULT_RULE,
    ) -> None:
        super().__init__()
        if relative_max_scale is not None:  # configure() writes it into the schedule: checked as the schedule does
            relative_max_scale = check_relative_max_scale(relative_max_scale)
        self.schedule = schedule
        self.gamma = parse_gamma(gamma)
        self.num_classes = num_classes
        self.input_normalization = input_normalization
        self.relative_max_scale = relative_max_scale
        self.auto_gamma_batches = auto_gamma_batches
        self.range_test_options = {
            "num_steps": range_test_steps,
            "min_lr": range_test_min_lr,
            "max_lr": range_test_max_lr,
            "rule": range_test_rule,
        }
        self.range_test: RangeTestResult | None = None  # the curve and choice of gamma="range_test", once run
        self.max_grad_norm: float | None = None
        self.last_step: dict[str, Any] | None = None

    def configure(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        base_lr: float,
        num_training_steps: int,
        max_grad_norm: float | None = None,
    ) -> None:
        """Resolve the schedule options for this run and start the schedule from a zero state.

        ``max_grad_norm`` is the run's gradient clipping, which the LR range test (``gamma="range_test"``) applies too.
        """
        schedule = self.schedule
        if self.gamma is not None:
            schedule.gamma = self.gamma
        elif not is_sgd(optimizer) and not schedule.uses_base_lr:
            logger.warning(
                "%s is not SGD: using gamma='relative' (learning_rate=%g sets the scale, the schedule the shape). "
                "Pass gamma explicitly to override.",
                type(getattr(optimizer, "optimizer", optimizer)).__name__,
                base_lr,
            )
            schedule.gamma = "relative"
        if self.input_normalization is not None:
            schedule.input_normalization = self.input_normalization
        if self.relative_max_scale is not None:
            schedule.relative_max_scale = self.relative_max_scale
        num_classes = self.num_classes or default_num_classes(model)
        if (schedule.gamma == "auto" or schedule.input_normalization == "log_num_classes") and not num_classes:
            raise ValueError(
                "The schedule needs the number of classes C (gamma='auto' or input_normalization='log_num_classes') "
                "and the model's config does not give it: pass num_classes."
            )
        self.num_training_steps = num_training_steps
        self.base_lr = base_lr
        self.max_grad_norm = max_grad_norm
        self.range_test = None
        schedule.start(num_classes=num_classes, base_lr=base_lr if schedule.gamma == "relative" else None)
        self.start_bookkeeping(optimizer)

    def before_optimizer_step(
        self,
        step: int,
        optimizer: torch.optim.Optimizer,
        model: nn.Module,
        train_dataloader: DataLoader | None,
        device: torch.device,
        average_tokens_across_devices: bool = True,
    ) -> None:
        """Set the LR of optimizer step ``step`` (0-based) from its training loss.

        ``last_step`` then holds what meta-training needs to rebuild this LR's graph at the next meta update
        (stage, LSTM state before the step, loss), or None when the schedule skipped the step.
        """
        loss = self.step_loss(average_tokens_across_devices)
        schedule = self.schedule
        stage = schedule.stage_at(step, self.num_training_steps)
        if stage != schedule.stage:
            average = measured = None
            if schedule.needs_average_loss:
                average = average_training_loss(model, train_dataloader, device, self.auto_gamma_batches)
            if schedule.gamma == "range_test" and schedule.base_lr is None:
                with self.paused():
                    measured = self.run_range_test(model, optimizer, train_dataloader, device)
            schedule.enter_stage(stage, average_loss=average, base_lr=measured)
            logger.info("MLR-SNet stage %d from step %d (gamma=%s)", stage, step, schedule.current_gamma)
        state_before, steps_before = schedule.state, schedule.num_steps
        schedule.step(loss)
        self.last_step = (
            {"stage": schedule.stage, "state": state_before, "loss": loss}
            if schedule.num_steps > steps_before
            else None
        )
        # Relative mode scales each group's own initial LR; otherwise the first group gets the schedule's
        # LR and the others in proportion to their initial LRs.
        reference = self.base_lr if schedule.gamma == "relative" else self.initial_lrs[0]
        self.write_lr(optimizer, schedule.last_lr, reference)  # last_lr: the exact float (capped if capped)

    def run_range_test(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_dataloader: DataLoader | None,
        device: torch.device,
    ) -> float:
        """``gamma="range_test"``: the LR chosen by a range test on a copy of the model, the same on every process."""
        if train_dataloader is None:
            raise ValueError("gamma='range_test' needs the training data for its LR range test.")
        self.range_test = lr_range_test(
            model, optimizer, ordered_batches(train_dataloader), max_grad_norm=self.max_grad_norm, device=device,
            **self.range_test_options,
        )  # fmt: skip
        chosen = [self.range_test.lr]
        if PartialState().num_processes > 1:  # rank 0's choice is the one used, whatever the others measured
            broadcast_object_list(chosen, from_process=0)
        return chosen[0]

    def runtime_state(self) -> dict[str, Any]:
        """The schedule's runtime state and the LR bookkeeping, as JSON-friendly plain data."""
        extra = self.schedule.get_extra_state()
        extra["h"], extra["c"] = extra["h"].tolist(), extra["c"].tolist()
        return {"schedule": extra, "last_lrs": list(self.last_lrs), "lr_history": list(self.lr_history)}

    def load_runtime_state(self, state: dict[str, Any]) -> None:
        extra = dict(state["schedule"])
        dtype = self.schedule.stages[0].head.weight.dtype
        extra["h"] = torch.as_tensor(extra["h"], dtype=dtype)
        extra["c"] = torch.as_tensor(extra["c"], dtype=dtype)
        self.schedule.set_extra_state(extra)
        self.last_lrs = list(state["last_lrs"])
        self.lr_history = list(state["lr_history"])


class ControllerDriver(LRDriver):
    """Drives a PPO-trained :class:`~mlrsnet_hf.lr_controller.LRController` from inside the Trainer loop.

    At optimizer steps ``0, K, 2K, ...`` (``K = controller.decision_interval``) it observes the training
    state (the mean training loss of the last ``K`` steps, or the first step's loss at step 0; the model on
    ``probe``, a fixed batch of held-out data) and sets the LR for the next ``K`` steps, starting from
    ``learning_rate``, exactly as in the controller's training environment. Between decisions the LR is
    constant. Parameter groups keep their ratios.
    """

    def __init__(self, controller: LRController, probe: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.schedule = controller
        self.probe = probe
        self.lr = math.nan
        self._interval_losses: list[float] = []
        self._previous_probs: torch.Tensor | None = None

    def configure(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        base_lr: float,
        num_training_steps: int,
        max_grad_norm: float | None = None,
    ) -> None:
        if self.probe is None:
            raise ValueError(
                "The LR controller observes the validation loss: give it held-out data (meta_dataset= for "
                "MLRSNetTrainer, probe_dataset= for MLRSNetCallback)."
            )
        self.lr = float(base_lr)
        self._interval_losses, self._previous_probs = [], None
        self.start_bookkeeping(optimizer)

    def before_optimizer_step(
        self,
        step: int,
        optimizer: torch.optim.Optimizer,
        model: nn.Module,
        train_dataloader: DataLoader | None,
        device: torch.device,
        average_tokens_across_devices: bool = True,
    ) -> None:
        loss = self.step_loss(average_tokens_across_devices)
        interval = self.schedule.decision_interval
        if step % interval == 0:
            train_loss = statistics.fmean(self._interval_losses) if self._interval_losses else loss
            with self.paused():
                features, probs = observe(
                    model, send_to_device(self.probe, device), train_loss, self.lr, self._previous_probs
                )
            if torch.isfinite(features).all():
                self.lr = self.schedule.decide(features, self.lr)
            else:
                logger.warning("Non-finite training state at step %d: the LR controller keeps lr=%g.", step, self.lr)
            self._previous_probs = probs.cpu()
            self._interval_losses = []
        self._interval_losses.append(loss)
        self.write_lr(optimizer, self.lr, self.initial_lrs[0])

    def runtime_state(self) -> dict[str, Any]:
        """The LR, the losses of the current interval, the last predictions and the LR bookkeeping (plain data)."""
        previous = self._previous_probs
        return {
            "lr": self.lr,
            "interval_losses": list(self._interval_losses),
            "previous_probs": None if previous is None else previous.tolist(),
            "last_lrs": list(self.last_lrs),
            "lr_history": list(self.lr_history),
        }

    def load_runtime_state(self, state: dict[str, Any]) -> None:
        self.lr = float(state["lr"])
        self._interval_losses = [float(x) for x in state["interval_losses"]]
        previous = state["previous_probs"]
        self._previous_probs = None if previous is None else torch.tensor(previous, dtype=torch.float32)
        self.last_lrs = list(state["last_lrs"])
        self.lr_history = list(state["lr_history"])


def probe_batch(
    dataset: Any, size: int, collate_fn: Callable[[list], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """The LR controller's fixed probe: the first ``size`` examples of ``dataset``, collated."""
    if dataset is None or len(dataset) == 0:
        raise ValueError("The LR controller needs held-out examples to observe (got none).")
    return collate_fn([dataset[i] for i in range(min(size, len(dataset)))])


def ordered_batches(train_dataloader: DataLoader) -> DataLoader:
    """The training set in order, in this process's batch size and the run's collation; the run's loader is untouched.

    (Under several processes accelerate's loader reports no ``batch_size``; its ``total_batch_size`` counts
    every process, so the per-process size is that divided by the number of processes.)
    """
    batch_size = train_dataloader.batch_size
    if not batch_size:
        total = getattr(train_dataloader, "total_batch_size", None) or 1
        batch_size = max(1, total // PartialState().num_processes)
    return DataLoader(
        train_dataloader.dataset, batch_size=batch_size, collate_fn=train_dataloader.collate_fn, shuffle=False
    )


@torch.no_grad()
def average_training_loss(
    model: nn.Module, train_dataloader: DataLoader | None, device: torch.device, num_batches: int
) -> float:
    """Mean loss over the first ``num_batches`` training batches of this process (in order, eval mode), over processes."""
    if train_dataloader is None:
        raise ValueError("gamma='auto' needs the training data to measure the average loss at stage starts.")
    state = PartialState()
    loader = ordered_batches(train_dataloader)
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    try:
        for index, batch in enumerate(loader):
            if count == num_batches:
                break
            if index % state.num_processes != state.process_index:
                continue
            loss = model_loss(model(**send_to_device(batch, device)))
            if loss is None:
                raise ValueError("The model returned no loss on a training batch: gamma='auto' needs labels.")
            total += loss.double().mean()
            count += 1
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("No training batch available to measure the average loss for gamma='auto'.")
    mean = total / count
    if state.num_processes > 1:
        mean = reduce(mean, reduction="mean")
    return mean.item()


class MLRSNetCallback(TrainerCallback, ExportableState):
    """Give a plain ``transformers.Trainer`` a learned schedule: MLR-SNet, or a PPO-trained LR controller.

    Example::

        trainer = Trainer(model=model, args=args, train_dataset=train,
                          callbacks=[MLRSNetCallback(MLRSNetSchedule.from_pretrained("dir"), gamma=0.1)])

    Takes the same schedule options as :class:`~mlrsnet_hf.MLRSNetConfig` and sets the same LR sequence
    as :class:`~mlrsnet_hf.MLRSNetTrainer` for the same seed and data. The Trainer's own scheduler
    (``lr_scheduler_type``) is overridden: before every ``optimizer.step()`` the schedule's LR is written
    into the optimizer and reported by ``lr_scheduler.get_last_lr()``. Its state is saved in each
    checkpoint (``trainer_state.json``), so ``resume_from_checkpoint`` continues the LR sequence
    exactly; the schedule in use is saved to ``output_dir/mlrsnet_schedule`` at the start of a run so that a
    resumed run reloads exactly it.

    With an :class:`~mlrsnet_hf.LRController`, pass ``probe_dataset``: the held-out examples whose loss and
    predictions it observes (the first ``controller.probe_size``, collated like the training batches);
    ``learning_rate`` is the LR it starts from. The MLR-SNet options do not apply to it.
    """

    def __init__(
        self,
        schedule: MLRSNetSchedule | LRController | str,
        gamma: str | float | None = None,
        num_classes: int | None = None,
        input_normalization: str | None = None,
        relative_max_scale: float | None = None,
        auto_gamma_batches: int = 20,
        range_test_steps: int = 60,
        range_test_min_lr: float | None = None,
        range_test_max_lr: float | None = None,
        range_test_rule: str = DEFAULT_RULE,
        probe_dataset: Any = None,
    ) -> None:
        if isinstance(schedule, (str, Path)):
            from .hub import load_any_schedule

            schedule = load_any_schedule(str(schedule))
        if not isinstance(schedule, (MLRSNetSchedule, LRController)):
            raise TypeError(
                f"schedule must be an MLRSNetSchedule, an LRController or a path/repo id, got {type(schedule).__name__}."
            )
        self.schedule = schedule
        self.options = {
            "gamma": gamma,
            "num_classes": num_classes,
            "input_normalization": input_normalization,
            "relative_max_scale": relative_max_scale,
            "auto_gamma_batches": auto_gamma_batches,
            "range_test_steps": range_test_steps,
            "range_test_min_lr": range_test_min_lr,
            "range_test_max_lr": range_test_max_lr,
            "range_test_rule": range_test_rule,
        }
        self.probe_dataset = probe_dataset
        if isinstance(schedule, LRController):
            self.controller: LRDriver = ControllerDriver(schedule)
        else:
            self.controller = ScheduleController(schedule, **self.options)
        self.runtime: dict[str, Any] | None = None  # set by the Trainer when resuming from a checkpoint

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        if isinstance(self.controller, ControllerDriver):
            if self.probe_dataset is None:
                raise ValueError(
                    "An LRController observes the validation loss: pass probe_dataset= (held-out data) to "
                    "MLRSNetCallback (and leave restore_callback_states_from_checkpoint off: the callback restores "
                    "its own state from the checkpoint)."
                )
            loader = kwargs.get("train_dataloader")
            collate = getattr(loader, "collate_fn", None) or torch.utils.data.default_collate
            self.controller.probe = probe_batch(self.probe_dataset, self.schedule.probe_size, collate)
        self.controller.configure(
            model, optimizer, args.learning_rate, state.max_steps, max_grad_norm=args.max_grad_norm
        )
        # The schedule exactly as used (weights, stages, resolved gamma...), for a resumed run to reload.
        self._saved_path = str(Path(args.output_dir) / SCHEDULE_DIR_NAME)
        if state.is_world_process_zero and state.global_step == 0:
            self.schedule.save_pretrained(self._saved_path)
        if state.global_step > 0:  # resuming: the checkpoint's trainer_state.json holds our state
            saved = state.stateful_callbacks.get(type(self).__name__)
            saved = saved[0] if isinstance(saved, list) else saved
            runtime = self.runtime or (saved or {}).get("attributes", {}).get("runtime")
            if runtime is None:
                raise ValueError(
                    f"Resuming at step {state.global_step}, but the checkpoint holds no {type(self).__name__} state."
                )
            self.controller.load_runtime_state(runtime)
        self.controller.attach(model)
        self._lr_scheduler = lr_scheduler

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.controller.before_optimizer_step(
            state.global_step,
            optimizer,
            model,
            kwargs.get("train_dataloader"),
            args.device,
            average_tokens_across_devices=args.average_tokens_across_devices,
        )
        scheduler = getattr(self, "_lr_scheduler", None)
        if scheduler is not None:
            scheduler._last_lr = list(self.controller.last_lrs)  # what the Trainer logs as learning_rate

    def on_train_end(self, args, state, control, **kwargs):
        self.controller.detach()

    def state(self) -> dict[str, Any]:
        if isinstance(self.schedule, LRController):
            return {
                "args": {"schedule": getattr(self, "_saved_path", None) or self.schedule.name_or_path},
                "attributes": {"runtime": self.controller.runtime_state()},
            }
        return {
            "args": {
                "schedule": getattr(self, "_saved_path", None) or self.schedule.name_or_path,
                **self.options,
                "gamma": self.schedule.gamma,
                "input_normalization": self.schedule.input_normalization,
                "relative_max_scale": self.schedule.relative_max_scale,
            },
            "attributes": {"runtime": self.controller.runtime_state()},
        }
