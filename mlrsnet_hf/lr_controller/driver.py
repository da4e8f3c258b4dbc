"""``LRControllerDriver``: a PPO-trained :class:`~mlrsnet_hf.LRController` as the Trainer's ``lr_scheduler``."""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable
from typing import Any

import torch
from accelerate.utils import send_to_device

from ..driver import LRDriver
from ..measurements import check_labels
from ..state_checks import check_number, check_tensor, restoring
from .controller import LRController, observe

logger = logging.getLogger(__name__)


def probe_batch(
    dataset: Any, size: int, collate_fn: Callable[[list], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """The LR controller's fixed probe: the first ``size`` examples of ``dataset``, collated."""
    if dataset is None or len(dataset) == 0:
        raise ValueError("The LR controller needs held-out examples to observe (got none).")
    return collate_fn([dataset[i] for i in range(min(size, len(dataset)))])


class LRControllerDriver(LRDriver):
    """Drives a PPO-trained LR controller from inside the Trainer loop.

    At optimizer steps ``0, K, 2K, ...`` (``K = controller.decision_interval``) it observes the training
    state (the mean training loss of the last ``K`` steps, or the first step's loss at step 0; the model on
    the probe, a fixed batch of held-out data) and sets the LR for the next ``K`` steps, starting from
    ``learning_rate``, exactly as in the controller's training environment. Between decisions the LR is
    constant. Parameter groups keep their ratios.

    Args:
        controller: the trained controller.
        held_out: held-out examples; the first ``controller.probe_size`` are the probe.
        held_out_collate_fn: collates them (default: the training loader's).
        label_names: the batch keys the probe's loss needs (checked when the run starts).
    """

    def __init__(
        self,
        controller: LRController,
        held_out: Any = None,
        held_out_collate_fn: Callable[[list], dict[str, torch.Tensor]] | None = None,
        label_names: list[str] | None = None,
    ) -> None:
        super().__init__(controller, None, held_out, held_out_collate_fn, label_names)
        if held_out is None:
            raise ValueError(
                "An LRController observes the validation loss: give it held-out data (meta_dataset= for "
                "MLRSNetTrainer, probe_dataset= for MLRSNetCallback)."
            )
        self.probe: dict[str, torch.Tensor] | None = None
        self.lr = math.nan
        self._interval_losses: list[float | torch.Tensor] = []  # device tensors until the next decision
        self._previous_probs: torch.Tensor | None = None

    @classmethod
    def from_options(
        cls, schedule: LRController, options: dict[str, Any] | None = None, held_out: Any = None
    ) -> LRControllerDriver:
        """An LR controller takes no run options (it sets the LR itself) and is not meta-trained online."""
        if (options or {}).get("meta_train"):
            raise ValueError(
                "An LRController is trained with PPO (mlrsnet_hf.experiments.controller_env.train_controller), not "
                "meta-trained online: use it with meta_train=False."
            )
        if options:
            raise ValueError(
                f"An LRController takes no schedule options (got {sorted(options)}): it sets the LR itself."
            )
        return cls(schedule, held_out)

    def _start(self, restored: dict[str, Any] | None) -> None:
        collate = self.held_out_collate_fn or getattr(self.train_dataloader, "collate_fn", None)
        self.probe = probe_batch(self.held_out, self.schedule.probe_size, collate or torch.utils.data.default_collate)
        check_labels(self.probe, self.label_names or ["labels"], "probe")
        self.lr, self._interval_losses, self._previous_probs = self.base_lr, [], None
        if restored is not None:
            with restoring(self.checkpoint_name):
                runtime = restored["controller"]
                lr = check_number(runtime["lr"], "controller.lr", positive=True)
                losses = [float(x) for x in runtime["interval_losses"]]
                previous = runtime["previous_probs"]
                if previous is not None:
                    check_tensor(previous, "controller.previous_probs")
            self.lr = min(max(lr, self.schedule.min_lr), self.schedule.max_lr)
            self._interval_losses = losses
            self._previous_probs = None if previous is None else previous.clone()

    def _lr_for_step(self, step: int, loss: torch.Tensor) -> tuple[float, float]:
        interval = self.schedule.decision_interval
        if step % interval == 0:  # the losses are read on the host at decisions only
            losses = [float(x) for x in self._interval_losses]
            train_loss = statistics.fmean(losses) if losses else loss.item()
            with self.meter.paused():
                features, probs = observe(
                    self.model, send_to_device(self.probe, self.device), train_loss, self.lr, self._previous_probs
                )
            if torch.isfinite(features).all():
                self.lr = self.schedule.decide(features, self.lr)
            else:
                logger.warning("Non-finite training state at step %d: the LR controller keeps lr=%g.", step, self.lr)
            self._previous_probs = probs.cpu()
            self._interval_losses = []
        self._interval_losses.append(loss.detach())
        return self.lr, self.initial_lrs[0]

    def _runtime_state(self) -> dict[str, Any]:
        """The LR, the losses of the current interval and the last predictions (bounded by the decision interval)."""
        previous = self._previous_probs
        return {
            "controller": {
                "lr": self.lr,
                "interval_losses": [float(x) for x in self._interval_losses],
                "previous_probs": None if previous is None else previous.clone(),
            }
        }
