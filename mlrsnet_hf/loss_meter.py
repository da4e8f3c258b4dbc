"""``LossMeter``: the training loss of each optimizer step, read from the model's own output.

A forward hook on the model records the loss of every training-mode forward with gradients (not those
inside :meth:`LossMeter.paused`, e.g. meta batches); :class:`~mlrsnet_hf.MLRSNetTrainer` hands each output to
:meth:`LossMeter.record` from its ``compute_loss`` instead (a forward hook slows every call of the model).
:meth:`LossMeter.step_loss` averages the step's
gradient-accumulation micro-batches and then the processes (token-normalised losses, when the Trainer
passes ``num_items_in_batch``, are summed the way the Trainer sums them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from accelerate.state import PartialState
from accelerate.utils import reduce
from torch import nn

from .meta_gradient import model_loss


class LossMeter:
    """Reads the training loss of each optimizer step from the model's forward outputs."""

    def __init__(self) -> None:
        self._hook: Any = None
        self._loss_sum: torch.Tensor | None = None
        self._num_losses = 0
        self._partial = False
        self._paused = False
        self._num_processes = 1

    def attach(self, model: nn.Module, hook: bool = True) -> None:
        """Start reading the model's training losses (anything left from an interrupted run is dropped); with
        ``hook=False`` the caller hands them over (:meth:`record`)."""
        self.detach()
        self._loss_sum, self._num_losses, self._partial = None, 0, False
        self._num_processes = PartialState().num_processes
        if hook:
            self._hook = model.register_forward_hook(self._record, with_kwargs=True)

    def detach(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Forwards inside this block are not training losses (e.g. meta batches, probes, range tests)."""
        self._paused, was = True, self._paused
        try:
            yield
        finally:
            self._paused = was

    def _record(self, module: nn.Module, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        if module.training:
            self.record(output, partial=kwargs.get("num_items_in_batch") is not None)

    def record(self, output: Any, partial: bool) -> None:
        """Record the loss in a training-mode forward's ``output`` (unless paused or without gradients);
        ``partial``: the model was given ``num_items_in_batch`` (its loss is a part of the step's sum)."""
        if self._paused or not torch.is_grad_enabled():
            return
        loss = model_loss(output)
        if loss is None:
            return
        loss = loss.detach()
        if loss.dtype != torch.float32:
            loss = loss.float()
        if loss.dim():
            loss = loss.mean()
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._num_losses += 1
        self._partial = partial

    def step_loss(self, average_tokens_across_devices: bool = True) -> torch.Tensor:
        """The training loss of this optimizer step, averaged over micro-batches and processes; resets the meter.

        A 0-d float32 tensor on the model's device: nothing is read on the host.
        """
        if self._loss_sum is None:
            raise RuntimeError(
                "The learned schedule needs the training loss, but the model returned none during this step. The model must "
                "return a loss (pass labels); with label_smoothing_factor or compute_loss_func a plain Trainer computes "
                "the loss outside the model, which the callback cannot read: use MLRSNetTrainer, which reads it. In a "
                "loop of your own "
                "(MLRSNetDriver.for_loop), pass loss_from_model=False and hand each loss to driver.observe(loss)."
            )
        if self._partial:
            # Token-normalised micro-batch losses (sum / num_items_in_batch) add up to the step loss.
            value = self._loss_sum
            if average_tokens_across_devices and self._num_processes > 1:
                value = value * self._num_processes  # num_items_in_batch counted all processes
        else:
            value = self._loss_sum if self._num_losses == 1 else self._loss_sum / self._num_losses
        self._loss_sum, self._num_losses = None, 0
        if self._num_processes > 1:
            value = reduce(value, reduction="mean")
        return value
