"""``DeviceStep``: a transferred schedule's step with nothing read on the host.

:meth:`MLRSNetSchedule.step <mlrsnet_hf.MLRSNetSchedule.step>` returns the LR as a Python float, which on a GPU
costs a device synchronisation per optimizer step (the host waits for the loss, then for the LR). In transfer
mode the schedule's weights are fixed, so the step can stay on the device: the loss is a device tensor, the
network runs its fused no-grad step (:meth:`MLRSNet.fast_forward <mlrsnet_hf.MLRSNet.fast_forward>`), the LR
comes out as a 0-d float64 tensor, and the non-finite guard (keep the state and the last LR) is a
``torch.where``. What the host needs (the last LR, the number of steps taken and skipped) is folded into
the schedule by :meth:`DeviceStep.sync`, called at logging, checkpoints, stage switches and the end of a run.

Stage entries (and so the first step, which fixes gamma in relative mode) use the schedule's own ``step``.
"""

from __future__ import annotations

import logging

import torch

from .network import MLRSNetState
from .schedule import MLRSNetSchedule

logger = logging.getLogger(__name__)


class DeviceStep:
    """Steps ``schedule`` on its device; the schedule's host values are up to date after :meth:`sync`."""

    def __init__(self, schedule: MLRSNetSchedule) -> None:
        self.schedule = schedule
        self._last_lr: torch.Tensor | None = None  # the LR of the last step (device), while not synced
        self._skipped: torch.Tensor | None = None  # non-finite steps since the last sync (device)
        self._taken = 0  # device steps since the last sync

    def ready(self) -> bool:
        """Whether the next step can run on the device: a stage entered, its gamma known, a last LR to fall back to."""
        schedule = self.schedule
        return schedule.current_gamma is not None and (self._last_lr is not None or schedule.last_lr is not None)

    @torch.no_grad()
    def step(self, loss: torch.Tensor) -> torch.Tensor:
        """The LR for a step with training loss ``loss`` (a device tensor), as a 0-d float64 tensor on the device.

        The same rule as :meth:`MLRSNetSchedule.step`: ``gamma * p`` (capped in relative mode); a non-finite
        loss or LR keeps the LSTM state and the last LR (counted, and reported at the next :meth:`sync`).
        """
        schedule = self.schedule
        network = schedule.stages[schedule.stage]
        ref = network.head.weight
        loss = loss.detach().to(device=ref.device)
        p, state = network.fast_forward(schedule.normalize_loss(loss.to(ref.dtype)), schedule.state)
        lr = (schedule.current_gamma * p).double()  # the float32 product, as step() reads it with .item()
        if schedule.max_lr is not None:
            lr = lr.clamp(max=schedule.max_lr)
        if self._last_lr is None:
            self._last_lr = torch.tensor(schedule.last_lr, dtype=torch.float64, device=ref.device)
            self._skipped = torch.zeros((), dtype=torch.int64, device=ref.device)
        ok = torch.isfinite(lr) & torch.isfinite(loss)
        lr = torch.where(ok, lr, self._last_lr)
        schedule.state = MLRSNetState(
            torch.where(ok, state.h, schedule.state.h), torch.where(ok, state.c, schedule.state.c)
        )
        self._skipped += ~ok
        self._last_lr = lr
        self._taken += 1
        return lr

    def sync(self) -> None:
        """Fold the device steps into the schedule's host values (one read of the device)."""
        if self._last_lr is None:
            return
        last_lr, skipped = self._last_lr.item(), int(self._skipped.item())
        schedule = self.schedule
        schedule.last_lr = last_lr
        schedule.num_steps += self._taken - skipped
        schedule.num_skipped += skipped
        if skipped:
            logger.warning(
                "%d of the last %d steps had a non-finite training loss (or LR): each kept the LSTM state and the "
                "last LR (now %g).", skipped, self._taken, last_lr,
            )  # fmt: skip
        self._last_lr, self._skipped, self._taken = None, None, 0
