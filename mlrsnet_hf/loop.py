"""``LoopBinding``: a driver in a training loop of your own (PyTorch or ``accelerate``), through the optimizer's hooks.

Every loop sets the LR the same way (:meth:`LoopBinding.hook_steps`): a driver's ``prepare_step`` runs in the
optimizer's step pre-hook, after clipping, whoever calls ``optimizer.step()``. The Trainer then counts the step
with ``lr_scheduler.step()``; in a loop of your own, :meth:`LoopBinding.bind` counts it in the step post-hook. A
step that a ``GradScaler`` skips calls no hook. :class:`~mlrsnet_hf.driver.LRDriver` inherits this.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from . import publishing
from .measurements import loader_batch_size
from .optimizers import unwrap


class LoopBinding:
    """What a driver adds for a loop of your own: :meth:`bind`, :meth:`observe`, a context manager, and saving the
    schedule with this loop's record."""

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
    ) -> LoopBinding:
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
        inner = self._hookable(optimizer)
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
            from transformers.utils import find_labels  # (transformers: not imported by a loop that never asks)

            self.label_names = find_labels(type(getattr(model, "module", model)))
        self.loss_from_forward_hook = loss_from_model
        try:
            self.start(model, optimizer, args, num_training_steps, train_dataloader)
            self._check_loop(loss_from_model, train_dataloader)
        except BaseException:
            self.finish()  # nothing of this driver stays on the optimizer or the model
            raise
        self.hook_steps(optimizer, count_steps=True)
        return self

    def _hookable(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        inner = unwrap(optimizer)
        if not isinstance(inner, torch.optim.Optimizer):
            raise TypeError(
                f"A driver hooks a torch optimizer's step, and {type(inner).__name__} is not one (DeepSpeed's "
                "optimizers are not): under DeepSpeed train with MLRSNetTrainer."
            )
        driver = getattr(inner, "_mlrsnet_driver", None)
        if driver is not None and driver is not self:
            raise RuntimeError("This optimizer is driven by another driver already: call its finish() first.")
        return inner

    def hook_steps(self, optimizer: torch.optim.Optimizer, count_steps: bool) -> None:
        """Set the LR of each step of ``optimizer`` in its step pre-hook: the one LR route of every loop.

        The pre-hook runs inside ``optimizer.step()``, after whatever the caller did before it (clipping; the
        Trainer's ``on_pre_optimizer_step``), and a step that a ``GradScaler`` skips runs no hook, so its losses
        count towards the next step's. ``count_steps``: also count each step taken in the post-hook (a loop of
        your own); the Trainer counts them itself, with ``lr_scheduler.step()`` after each step it took.
        """
        inner = self._hookable(optimizer)
        for hook in self._loop_hooks:  # a run started again on the same optimizer (e.g. after an exception)
            hook.remove()
        inner._mlrsnet_driver = self
        self._loop_hooks = [inner.register_step_pre_hook(lambda *_: self.prepare_step(self.last_epoch))]
        if count_steps:
            self._loop_hooks.append(inner.register_step_post_hook(lambda *_: self.step()))

    def _check_loop(self, loss_from_model: bool, train_dataloader: DataLoader | None) -> None:
        """Refuse, at bind time, what a loop's settings cannot give the family (not at the first step)."""

    def __enter__(self) -> LoopBinding:
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
