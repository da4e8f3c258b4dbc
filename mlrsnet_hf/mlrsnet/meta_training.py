"""``MetaLearner``: the online hypergradient step of a schedule (paper Algorithm 1), one object for every route.

It owns the meta optimizer (Adam on the schedule's weights), the meta batches, the ``w_t`` buffer of each
step of the meta horizon and the trajectory snapshots. The driver (:class:`~mlrsnet_hf.driver.MLRSNetDriver`)
calls it around every optimizer step; the math is in :mod:`mlrsnet_hf.meta_gradient`.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from accelerate.state import PartialState
from accelerate.utils import reduce, send_to_device
from torch import nn

from ..measurements import check_labels
from ..meta_gradient import (
    MetaBatches,
    is_dtensor,
    is_sharded,
    lr_derivatives,
    meta_loss,
    step_delta,
    trainable_parameters,
)
from ..optimizers import LR_LINEAR_OPTIMIZERS, is_lr_linear, optimizer_name
from ..options import ScheduleOptions
from ..state_checks import (
    CheckpointStateError,
    check_finite_tree,
    check_int,
    check_number,
    check_optimizer_state,
    check_tensor,
    check_weights,
)
from .network import MLRSNetState
from .run import ScheduleRun
from .schedule import MLRSNetSchedule

logger = logging.getLogger(__name__)


class MetaLearner:
    """Learns the schedule's weights online: every ``meta_update_interval`` steps, one hypergradient step.

    Args:
        schedule: the schedule being learned (its weights are updated in place).
        options: the meta-training options (``meta_update_interval``, ``meta_horizon``, ``meta_learning_rate``...).
        dataset: the held-out meta set, already stripped of the columns the model does not take.
        collate_fn: collates its examples into a model batch.
        batch_size: meta batch size per process.
        seed: the meta batches' shuffling seed.
        label_names: the batch keys the loss needs (checked on the first example at :meth:`start`).
    """

    def __init__(
        self,
        run: ScheduleRun,
        options: ScheduleOptions,
        dataset: Any,
        collate_fn: Callable[[list[Any]], Any],
        batch_size: int,
        seed: int = 0,
        label_names: list[str] | None = None,
    ) -> None:
        self.run, self.schedule = run, run.schedule
        self.options = options
        state = PartialState()
        self.batches = MetaBatches(
            dataset,
            batch_size=batch_size,
            collate_fn=collate_fn,
            seed=seed,
            rank=state.process_index,
            world_size=state.num_processes,
        )
        if len(dataset) > 0:
            check_labels(collate_fn([dataset[0]]), label_names, "meta dataset")
        self.optimizer = torch.optim.Adam(
            run.schedule.parameters(), lr=options.meta_learning_rate, weight_decay=options.meta_weight_decay
        )
        self.snapshots: list[dict[str, Any]] = []  # {"step", "weights"}: the network at snapshot_fractions of the run
        self.snapshot_steps: list[int] = []
        self.last_hypergradient: dict[str, torch.Tensor] | None = None
        self.losses: list[float] = []  # meta losses since the last log
        self.num_updates = 0  # meta updates taken (skipped non-finite ones not counted)
        self._horizon: list[dict[str, Any]] = []  # the steps of the current horizon (inputs, LR, w_s - w_{s+1})
        self._before: list[torch.Tensor] | None = None  # w_t of the step in progress
        # w_t buffers whose horizon is spent, refilled in place at the next one: on a CPU a fresh parameter-sized
        # allocation pays its page faults at every meta update (88 MiB: 20 ms into a fresh buffer, 7.5 ms into a kept one)
        self._spare: list[list[torch.Tensor]] = []

    def start(self, optimizer: torch.optim.Optimizer, num_training_steps: int) -> None:
        """Check the optimizer and fix the snapshot steps of a run of ``num_training_steps`` steps."""
        if not is_lr_linear(optimizer):
            raise ValueError(
                f"Meta-training reads the update direction off the real step, which needs an optimizer whose update "
                f"is linear in the LR ({', '.join(LR_LINEAR_OPTIMIZERS)}); got {optimizer_name(optimizer)}."
            )
        self.schedule.train()
        # The global step after which each snapshot is taken (at least 1: after the first step).
        self.snapshot_steps = [max(1, round(f * num_training_steps)) for f in self.options.snapshot_fractions or []]

    def is_meta_step(self, step: int) -> bool:
        return (step + 1) % self.options.meta_update_interval == 0

    def in_horizon(self, step: int) -> bool:
        """Whether step ``step``'s LR is differentiated at the next meta update (the last ``meta_horizon`` steps)."""
        interval = self.options.meta_update_interval
        return step % interval >= interval - self.options.meta_horizon

    def before_step(self, step: int, model: nn.Module, inputs: dict[str, Any] | None) -> None:
        """Keep ``w_t`` when step ``step``'s LR is in the horizon (``inputs``: what rebuilds its LR; None: skipped)."""
        self._release(self._before)
        self._before = None
        if inputs is not None and self.in_horizon(step):
            self._before = self._snapshot(trainable_parameters(model))
            self._inputs = inputs

    def _snapshot(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """``w_t``: copied into a spare buffer of the same layout when one is kept, else into a new one."""
        while self._spare:
            buffers = self._spare.pop()
            if len(buffers) == len(params) and all(
                is_dtensor(b) == is_dtensor(p) and b.shape == p.shape and b.dtype == p.dtype and b.device == p.device
                for b, p in zip(buffers, params, strict=True)
            ):
                for b, p in zip(buffers, params, strict=True):
                    b.copy_(p.detach())
                return buffers
        return [p.detach().clone() for p in params]

    def _release(self, buffers: list[torch.Tensor] | None) -> None:
        """Keep a spent ``w_t`` buffer for the next horizon (at most ``meta_horizon`` of them)."""
        if buffers is not None and len(self._spare) < self.options.meta_horizon:
            self._spare.append(buffers)

    def skipped(self, step: int) -> None:
        """Optimizer step ``step`` was not taken (e.g. an fp16 overflow): nothing to learn from it."""
        self._release(self._before)
        self._before = None
        if self.is_meta_step(step):
            for entry in self._horizon:
                self._release(entry["delta"])
            self._horizon = []

    def after_step(self, step: int, model: nn.Module, lr: float, device: torch.device, meter: Any) -> None:
        """After optimizer step ``step`` (taken with ``lr``): record its move, update theta when due, snapshot."""
        before, self._before = self._before, None
        if before is not None and lr != 0.0:
            inputs = self._inputs
            self._horizon.append(
                {
                    "stage": inputs["stage"],
                    "h": inputs["state"].h,
                    "c": inputs["state"].c,
                    "loss": inputs["loss"],
                    "lr": lr,
                    "delta": step_delta(before, trainable_parameters(model)),
                }
            )
        else:
            self._release(before)
        if self.is_meta_step(step):
            horizon, self._horizon = self._horizon, []
            if horizon:
                with meter.paused():
                    self.update(horizon, model, device)
        while len(self.snapshots) < len(self.snapshot_steps) and step + 1 >= self.snapshot_steps[len(self.snapshots)]:
            network = self.schedule.stages[max(self.run.stage, 0)]
            weights = {k: v.detach().clone() for k, v in network.state_dict().items()}
            self.snapshots.append({"step": step + 1, "weights": weights})

    def update(self, horizon: list[dict[str, Any]], model: nn.Module, device: torch.device) -> None:
        """One update of theta: the meta loss at ``w_{T+1}``, differentiated through the horizon's LRs."""
        params = trainable_parameters(model)
        for p in params:
            p.grad = None  # the training gradients are spent; free them before the meta backward
        loss = meta_loss(model, send_to_device(self.batches.next(), device))
        dlrs = lr_derivatives(loss, params, [e["delta"] for e in horizon], [e["lr"] for e in horizon])
        for entry in horizon:
            self._release(entry.pop("delta"))
        mean_loss = loss.detach().float()
        if PartialState().num_processes > 1:
            # the same hypergradient, hence the same theta, on every rank (shards: already summed over processes)
            mean_loss = reduce(mean_loss, reduction="mean")
            if not is_sharded(params):
                dlrs = reduce(dlrs, reduction="mean")
        values = torch.cat([dlrs, mean_loss.double().reshape(1)]).cpu()  # one read of the device per update
        dlrs, mean_loss = values[:-1], float(values[-1])
        if not torch.isfinite(values).all():
            logger.warning("Non-finite meta loss or meta-gradient (%s): skipping this meta update.", mean_loss)
            return
        self.optimizer.zero_grad(set_to_none=True)
        lrs = torch.stack(
            [self.run.lr_at(e["loss"], MLRSNetState(e["h"], e["c"]), e["stage"]).reshape(()) for e in horizon]
        )
        lrs.backward(dlrs.to(device=lrs.device, dtype=lrs.dtype))
        self.last_hypergradient = {
            n: p.grad.detach().clone() for n, p in self.schedule.named_parameters() if p.grad is not None
        }
        self.optimizer.step()
        self.num_updates += 1
        self.losses.append(mean_loss)

    def trajectory(self) -> MLRSNetSchedule:
        """What meta-training produced: one stage per snapshot network, played in equal parts of a later run.

        Snapshots not yet taken (a run stopped early) are replaced by the current network, once.
        """
        current = self.schedule
        weights = [s["weights"] for s in self.snapshots]
        if len(weights) < len(self.snapshot_steps):
            weights.append(current.stages[max(self.run.stage, 0)].state_dict())
        schedule = MLRSNetSchedule(
            hidden_size=current.hidden_size,
            num_layers=current.num_layers,
            gate_layout=current.gate_layout,
            num_stages=len(weights),
            **self.run.recipe(),
            meta_training=copy.deepcopy(current.meta_training),
        ).to(dtype=current.stages[0].head.weight.dtype)
        for stage, state in zip(schedule.stages, weights, strict=True):
            stage.load_state_dict(state)
        schedule.meta_training["snapshots"] = {
            "fractions": list(self.options.snapshot_fractions or [])[: len(self.snapshots)],
            "steps": [s["step"] for s in self.snapshots],
        }
        return schedule

    def finish(self) -> None:
        """Drop what a final, partial horizon left (unused deltas) and the spare buffers."""
        self._horizon, self._before, self._spare = [], None, []

    def state_dict(self) -> dict[str, Any]:
        """Meta optimizer, meta-data position, the current horizon's steps (deltas on the CPU) and the snapshots."""
        horizon = self._horizon
        if horizon and is_sharded(horizon[0]["delta"]):
            # The Trainer writes scheduler.pt from the main process only, which holds only its own shards of the
            # steps' moves: the steps of a horizon in progress are not checkpointed (a resume meets a shorter one).
            horizon = []
        return {
            "optimizer": self.optimizer.state_dict(),
            "batches": self.batches.state_dict(),
            # copies on the CPU: a resume may run on other devices, and the buffers are refilled after the meta update
            "horizon": [{**e, "delta": [d.to("cpu", copy=True) for d in e["delta"]]} for e in horizon],
            "horizon_steps": len(self._horizon),
            "snapshots": [dict(snapshot) for snapshot in self.snapshots],
            "num_updates": self.num_updates,
        }

    def _check_horizon_entry(self, entry: Any, field: str, params: list[torch.Tensor] | None) -> None:
        keys = {"stage", "h", "c", "loss", "lr", "delta"}
        if not isinstance(entry, dict) or set(entry) != keys:
            raise CheckpointStateError(f"{field} must hold {sorted(keys)}.")
        check_int(entry["stage"], f"{field}['stage']", 0, self.run.num_stages - 1)
        for key in ("h", "c"):
            check_tensor(entry[key], f"{field}[{key!r}]", tuple(self.run.state.h.shape))
        loss = entry["loss"]
        if isinstance(loss, torch.Tensor):
            check_tensor(loss, f"{field}['loss']", ())
        elif isinstance(loss, bool) or not isinstance(loss, int | float) or not math.isfinite(loss):
            raise CheckpointStateError(f"{field}['loss'] must be a finite number, got {str(loss)[:40]}.")
        check_number(entry["lr"], f"{field}['lr']", positive=True)
        delta = entry["delta"]
        sharded = params is not None and is_sharded(params)
        shapes = None if params is None or sharded else [tuple(p.shape) for p in params]
        if not isinstance(delta, list) or (shapes is not None and len(delta) != len(shapes)):
            raise CheckpointStateError(f"{field}['delta'] must hold one step per trainable parameter.")
        for j, d in enumerate(delta):
            check_tensor(d, f"{field}['delta'][{j}]", None if shapes is None else shapes[j])

    def load_state_dict(self, state: dict[str, Any], params: list[torch.Tensor] | None = None) -> None:
        """Restore :meth:`state_dict`, each value checked (:mod:`mlrsnet_hf.state_checks`) before any is applied;
        ``params``: the model's trainable parameters, the shapes of a horizon's steps."""
        check_optimizer_state(state["optimizer"], self.optimizer, "meta.optimizer")
        check_finite_tree(state["optimizer"], "meta.optimizer")
        for key in ("epoch", "index"):
            check_int(state["batches"][key], f"meta.batches[{key!r}]")
        stage_weights = self.run.stages[0].state_dict()
        for i, snapshot in enumerate(state.get("snapshots", [])):
            check_int(snapshot["step"], f"meta.snapshots[{i}]['step']")
            check_weights(snapshot["weights"], stage_weights, f"meta.snapshots[{i}]['weights']")
        for i, entry in enumerate(state.get("horizon", [])):
            self._check_horizon_entry(entry, f"meta.horizon[{i}]", params)
        num_updates = check_int(state.get("num_updates", 0), "meta.num_updates")
        horizon_steps = check_int(state.get("horizon_steps", len(state.get("horizon", []))), "meta.horizon_steps")
        self.optimizer.load_state_dict(state["optimizer"])
        self.batches.load_state_dict(state["batches"])
        self._horizon = [dict(entry) for entry in state.get("horizon", [])]
        if horizon_steps > len(self._horizon):
            logger.warning(
                "Resumed inside a meta horizon under sharded parameters (FSDP2): the %d steps of it taken before the "
                "checkpoint were not saved, so the next meta update differentiates only the steps taken since.",
                horizon_steps,
            )
        self.snapshots = [dict(snapshot) for snapshot in state.get("snapshots", [])]
        self.num_updates = num_updates
