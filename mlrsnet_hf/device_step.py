"""``DeviceStep``: a transferred schedule's step at the cost of a built-in schedule.

:meth:`MLRSNetSchedule.step <mlrsnet_hf.MLRSNetSchedule.step>` runs the network's module forward (about 25
small tensor operations) and returns the LR as a Python float, which on a GPU costs a device synchronisation
per optimizer step (the host waits for the loss, then for the LR). In transfer mode the weights are fixed, so
two faster paths exist; both compute the same rule (``gamma * p``, capped in relative mode; a non-finite loss
or LR keeps the LSTM state and the last LR, and is counted):

* on an accelerator, the step stays on the device: the loss is a device tensor, the network runs its fused
  no-grad step (:meth:`MLRSNet.fast_forward <mlrsnet_hf.MLRSNet.fast_forward>`), the LR comes out as a 0-d
  float64 tensor and the guard is a ``torch.where``: nothing is read on the host;
* on a CPU, where reading a loss costs nothing, the whole step is one compiled call when numba is installed
  (:mod:`mlrsnet_hf.cpu_kernel`), else the network steps in NumPy
  (:meth:`MLRSNet.numpy_forward <mlrsnet_hf.MLRSNet.numpy_forward>`, a few times faster than tensor
  operations on 50-wide vectors); the LR is a float.

What the host needs (the last LR, the LSTM state, the steps taken and skipped) is folded into the schedule by
:meth:`DeviceStep.sync`, called at logging, checkpoints, stage switches and the end of a run. Stage entries
(and so the first step, which fixes gamma in relative mode) use the schedule's own ``step``.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from . import cpu_kernel
from .network import MLRSNetState
from .schedule import MLRSNetSchedule

logger = logging.getLogger(__name__)


class DeviceStep:
    """Steps ``schedule`` fast between stage entries; the schedule's host values are up to date after :meth:`sync`."""

    numpy_on_cpu = True  # False: take the accelerator path on a CPU too (the tests check it there)
    compiled_on_cpu = True  # False: the NumPy step even when numba is installed

    def __init__(self, schedule: MLRSNetSchedule) -> None:
        self.schedule = schedule
        self._active = False  # steps taken since the last sync
        self._taken = 0
        self._finite: torch.Tensor | int = 0  # steps with a finite loss and LR since the last sync
        self._last_lr: torch.Tensor | float | None = None
        self._numpy_state: tuple[np.ndarray, np.ndarray] | None = None
        self._compiled_state: tuple[np.ndarray, np.ndarray] | None = None  # (h, c) stacked, and a spare buffer

    def ready(self) -> bool:
        """Whether the next step can run here: a stage entered, its gamma known, a last LR to fall back to."""
        schedule = self.schedule
        return schedule.current_gamma is not None and (self._active or schedule.last_lr is not None)

    def _begin(self) -> None:
        """The first step since the last sync: fix what stays constant until the next one."""
        schedule = self.schedule
        state = schedule.state
        self._network = schedule.stages[schedule.stage]
        self._gamma, self._max_lr = schedule.current_gamma, schedule.max_lr
        self._log_c = math.log(schedule.num_classes) if schedule.input_normalization != "none" else None
        weight = self._network.head.weight
        self._numpy = self.numpy_on_cpu and weight.device.type == "cpu" and weight.dtype == torch.float32
        if self._numpy:
            self._last_lr, self._finite = schedule.last_lr, 0
            self._kernel = cpu_kernel.kernel() if self.compiled_on_cpu else None
            if self._kernel is not None:
                stacked = torch.stack((state.h, state.c)).numpy().copy()
                self._compiled_state = stacked, np.empty_like(stacked)
                # fixed until the next sync: looked up once, not at every step (each lookup costs in a training loop)
                self._weights, self._inner = cpu_kernel.packed_weights(self._network)
                self._divisor = self._log_c if self._log_c is not None else 1.0
                self._cap = self._max_lr if self._max_lr is not None else math.inf
            else:
                self._numpy_state = state.h.numpy().copy(), state.c.numpy().copy()
        else:
            device = state.h.device
            self._last_lr = torch.tensor(schedule.last_lr, dtype=torch.float64, device=device)
            self._finite = torch.zeros((), dtype=torch.int64, device=device)
        self._active, self._taken = True, 0

    def step(self, loss: torch.Tensor) -> torch.Tensor | float:
        """The LR for a step with training loss ``loss``: a 0-d float64 device tensor, or a float on a CPU."""
        if not self._active:
            self._begin()
        self._taken += 1
        if self._compiled_state is not None:
            return self._compiled_step(loss.item())
        if self._numpy:
            return self._numpy_step(loss.item())
        loss = loss.detach()
        if self._log_c is not None:
            loss = loss / self._log_c
        old = self.schedule.state
        p, state = self._network.fast_forward(loss, old)
        lr = (p * self._gamma).double()  # the float32 product, as step() reads it with .item()
        if self._max_lr is not None:
            lr = lr.clamp(max=self._max_lr)
        ok = torch.isfinite(lr * loss)  # float64: finite exactly when both are
        lr = torch.where(ok, lr, self._last_lr)
        self.schedule.state = MLRSNetState(torch.where(ok, state.h, old.h), torch.where(ok, state.c, old.c))
        self._finite.add_(ok)
        self._last_lr = lr
        return lr

    def _compiled_step(self, loss: float) -> float:
        state, spare = self._compiled_state
        lr = self._kernel(
            loss, self._divisor, self._gamma, self._cap, state, spare, self._weights, *state.shape[1:], self._inner
        )
        if lr != lr:  # NaN: the loss or the LR was not finite
            return self._last_lr
        self._compiled_state, self._last_lr = (spare, state), lr
        self._finite += 1
        return lr

    def _numpy_step(self, loss: float) -> float:
        x = loss / self._log_c if self._log_c is not None else loss
        if not math.isfinite(x):
            return self._last_lr
        p, h, c = self._network.numpy_forward(x, *self._numpy_state)
        lr = float(np.float32(self._gamma) * np.float32(p))  # float32, as the tensor path computes it
        if self._max_lr is not None:
            lr = min(lr, self._max_lr)
        if not math.isfinite(lr):
            return self._last_lr
        self._numpy_state, self._last_lr = (h, c), lr
        self._finite += 1
        return lr

    def sync(self) -> None:
        """Fold the steps taken here into the schedule's host values (one read of the device)."""
        if not self._active:
            return
        schedule = self.schedule
        if self._numpy:
            last_lr, finite = self._last_lr, self._finite
            if self._compiled_state is not None:
                h, c = torch.from_numpy(self._compiled_state[0].copy()).unbind()
            else:
                h, c = (torch.from_numpy(a) for a in self._numpy_state)
            schedule.state = MLRSNetState(h, c)
        else:
            last_lr, finite = self._last_lr.item(), int(self._finite.item())
        skipped = self._taken - finite
        schedule.last_lr = last_lr
        schedule.num_steps += finite
        schedule.num_skipped += skipped
        if skipped:
            logger.warning(
                "%d of the last %d steps had a non-finite training loss (or LR): each kept the LSTM state and the "
                "last LR (now %g).", skipped, self._taken, last_lr,
            )  # fmt: skip
        self._active, self._taken, self._last_lr = False, 0, None
        self._numpy_state = self._compiled_state = None
