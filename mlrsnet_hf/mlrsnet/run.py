"""``ScheduleRun``: one run of an MLR-SNet schedule, apart from the schedule itself.

The schedule (:class:`~mlrsnet_hf.MLRSNetSchedule`) is the artifact: weights and recipe. A run reads it and keeps
what belongs to the run: the recipe as this run overrides it (gamma, input normalisation, cap), ``C`` and the base
LR, the stage, the LSTM state, each stage's gamma, the last LR and the step counters. The driver holds one and
checkpoints it in ``scheduler.pt``; a transfer run leaves the schedule as it was.

    run = ScheduleRun(schedule, num_classes=10)
    stage = run.stage_at(step, total_steps)
    if stage != run.stage:
        run.enter_stage(stage, average_loss=L)     # L only needed for gamma="auto"
    lr = run.step(loss)                            # the LR for this optimizer step
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

from ..gamma import BASE_LR_RULES, auto_gamma, check_gamma, check_input_normalization, check_relative_max_scale
from ..state_checks import CheckpointStateError, check_int, check_number, check_tensor
from .network import MLRSNetState

logger = logging.getLogger(__name__)


class ScheduleRun:
    """The runtime of ``schedule`` in one run.

    Args:
        schedule: the :class:`~mlrsnet_hf.MLRSNetSchedule` whose networks step (read, never changed here).
        num_classes: ``C``, needed by ``gamma="auto"`` and ``input_normalization="log_num_classes"``.
        base_lr: the user's learning rate, needed by ``gamma="relative"`` (with ``gamma="range_test"``, the
            measured LR; it may also be given later to :meth:`enter_stage`).
        gamma, input_normalization, relative_max_scale: this run's overrides of the schedule's recipe (None:
            the schedule's own).
    """

    def __init__(
        self,
        schedule: nn.Module,
        num_classes: int | None = None,
        base_lr: float | None = None,
        *,
        gamma: float | str | None = None,
        input_normalization: str | None = None,
        relative_max_scale: float | None = None,
    ) -> None:
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        if base_lr is not None and not (math.isfinite(base_lr) and base_lr > 0):
            raise ValueError(f"base_lr must be a positive number, got {base_lr}.")
        self.schedule = schedule
        self.gamma = schedule.gamma if gamma is None else check_gamma(gamma)
        self.input_normalization = (
            schedule.input_normalization
            if input_normalization is None
            else check_input_normalization(input_normalization)
        )
        self.relative_max_scale = (
            schedule.relative_max_scale if relative_max_scale is None else check_relative_max_scale(relative_max_scale)
        )
        self.num_classes = num_classes
        self.base_lr = base_lr
        self.stage = -1
        self.state = schedule.stages[0].initial_state()
        self.gammas: list[float | None] = [None] * schedule.num_stages
        self.last_lr: float | None = None
        self.num_steps = 0
        self.num_skipped = 0

    # ----------------------------------------------------------------- recipe
    @property
    def stages(self) -> nn.ModuleList:
        return self.schedule.stages

    @property
    def num_stages(self) -> int:
        return self.schedule.num_stages

    def recipe(self) -> dict[str, Any]:
        """The recipe fields as this run uses them (what a schedule saved from the run records)."""
        return {
            "gamma": self.gamma,
            "input_normalization": self.input_normalization,
            "relative_max_scale": self.relative_max_scale,
        }

    def stage_boundaries(self, total_steps: int) -> list[int]:
        return self.schedule.stage_boundaries(total_steps)

    def stage_at(self, step: int, total_steps: int) -> int:
        return self.schedule.stage_at(step, total_steps)

    @property
    def current_gamma(self) -> float | None:
        """The gamma of the current stage (None until known)."""
        return None if self.stage < 0 else self.gammas[self.stage]

    @property
    def uses_base_lr(self) -> bool:
        """True when the LR scale comes from a base LR (``gamma="relative"`` or ``"range_test"``)."""
        return self.gamma in BASE_LR_RULES

    @property
    def needs_average_loss(self) -> bool:
        """True when :meth:`enter_stage` needs the average training loss (``gamma="auto"``)."""
        return self.gamma == "auto"

    @property
    def max_lr(self) -> float | None:
        """The cap on the LR in relative/range-test mode (``relative_max_scale * base_lr``), else None."""
        return self.relative_max_scale * self.base_lr if self.uses_base_lr and self.base_lr else None

    # ---------------------------------------------------------------- stepping
    def enter_stage(self, stage: int, average_loss: float | None = None, base_lr: float | None = None) -> None:
        """Switch to ``stage`` (the LSTM state carries over) and fix its gamma.

        ``average_loss`` is the average training loss at this moment, required with ``gamma="auto"``;
        ``base_lr`` the LR measured by the range test, used with ``gamma="range_test"`` (else the run's).
        """
        if not 0 <= stage < self.num_stages:
            raise ValueError(f"stage must be in [0, {self.num_stages}), got {stage}.")
        if self.gamma == "auto":
            if average_loss is None:
                raise ValueError('gamma="auto" needs the average training loss at the start of each stage.')
            if self.num_classes is None:
                raise ValueError(
                    'gamma="auto" needs num_classes (C): pass num_classes=... to schedule.start, unroll or simulate.'
                )
            self.gammas[stage] = self._auto_gamma(stage, float(average_loss))
        elif self.uses_base_lr:
            if base_lr is not None:
                if not (math.isfinite(base_lr) and base_lr > 0):
                    raise ValueError(f"base_lr must be a positive number, got {base_lr}.")
                self.base_lr = float(base_lr)
            if self.base_lr is None:
                raise ValueError(
                    f'gamma="{self.gamma}" needs the base learning rate: start the run with base_lr=... or call '
                    "enter_stage(..., base_lr=...) first."
                )
            # Fixed by the first prediction of the run, then kept across stages.
            self.gammas[stage] = next((g for g in self.gammas if g is not None), None)
        else:
            self.gammas[stage] = self.gamma
        self.stage = stage

    def normalize_loss(self, loss: torch.Tensor | float) -> torch.Tensor | float:
        """The network's input: the loss, divided by ``ln C`` with ``input_normalization="log_num_classes"``."""
        if self.input_normalization == "log_num_classes":
            if self.num_classes is None:
                raise ValueError(
                    'input_normalization="log_num_classes" needs num_classes (C): pass num_classes=... to '
                    "schedule.start, unroll or simulate."
                )
            return loss / math.log(self.num_classes)
        return loss

    def predict(
        self, loss: torch.Tensor | float, state: MLRSNetState | None = None, stage: int | None = None
    ) -> tuple[torch.Tensor, MLRSNetState]:
        """``p`` for ``loss`` from ``state`` (default: the current one) with the stage's network, differentiably."""
        stage = self.stage if stage is None else stage
        if stage < 0:
            raise RuntimeError("No stage entered yet: call enter_stage(0, ...) before the first step.")
        return self.stages[stage](self.normalize_loss(loss), self.state if state is None else state)

    def scale(self, p: torch.Tensor, gamma: float | None = None) -> torch.Tensor:
        """``lr = gamma * p`` (default: the current stage's gamma); differentiable in ``p``.

        In relative mode the value is capped at ``relative_max_scale * base_lr`` with a straight-through
        gradient (the gradient of ``gamma * p``), so meta-training still learns while the cap is active.
        """
        gamma = self.current_gamma if gamma is None else gamma
        if gamma is None:
            raise RuntimeError("gamma is not known yet: enter a stage (and take a first step in relative mode).")
        lr = gamma * p
        if self.uses_base_lr:
            lr = lr + (torch.clamp(lr, max=self.max_lr) - lr).detach()
        return lr

    def lr_at(self, loss: float, state: MLRSNetState, stage: int) -> torch.Tensor:
        """The LR that :meth:`step` set for ``loss`` from ``state`` in ``stage``, recomputed differentiably.

        Meta-training over several steps uses this to rebuild each step's graph at the meta update (the
        weights have not changed since): the same operations as :meth:`step`, so the same value.
        """
        gamma = self.gammas[stage]
        if gamma is None:
            raise RuntimeError(f"gamma of stage {stage} is not known yet.")
        p, _ = self.predict(loss, state=state, stage=stage)
        return self.scale(p, gamma)

    def step(self, loss: torch.Tensor | float, differentiable: bool = False) -> float | torch.Tensor:
        """Read the training loss of this optimizer step, advance the LSTM state and return the LR to use.

        With ``differentiable=True`` the LR is returned as a 0-d tensor that carries the graph to this
        stage's parameters (one step from the detached state: what meta-training differentiates);
        otherwise as a float. The stored state is detached either way.

        A non-finite loss is skipped: the state is left as it was and the last LR is returned (as a
        float), with a warning. A non-finite loss at the very first step (no LR yet) is an error.
        """
        loss_value = float(loss)
        if not math.isfinite(loss_value):
            self.num_skipped += 1
            if self.last_lr is None:
                raise ValueError(f"The training loss of the first step is {loss_value}: no learning rate can be set.")
            logger.warning(
                "Non-finite training loss (%s): keeping the LSTM state and the last LR %g.", loss_value, self.last_lr
            )
            return self.last_lr
        with torch.set_grad_enabled(differentiable):
            p, state = self.predict(loss_value)
            if self.uses_base_lr and self.current_gamma is None:
                self.gammas[self.stage] = self.base_lr / p.item()
            lr = self.scale(p)
        value = lr.item()
        if not math.isfinite(value):  # e.g. weights ruined by a bad update: never hand out a NaN LR
            self.num_skipped += 1
            if self.last_lr is None:
                raise ValueError(f"The schedule predicted a non-finite learning rate ({value}) at the first step.")
            logger.warning("The schedule predicted a non-finite LR (%s): keeping the state and the last LR.", value)
            return self.last_lr
        if self.max_lr is not None:
            value = min(value, self.max_lr)  # exact in float64, whatever the tensor's precision
        self.state = state.detach()
        self.last_lr = value
        self.num_steps += 1
        return lr if differentiable else value

    def _auto_gamma(self, stage: int, average_loss: float) -> float:
        """The released rule's gamma; where it is 0 or undefined (``L * C == 1``, a non-finite loss) the previous
        stage's, as a step with a non-finite loss is skipped: an LR of 0 or NaN is never used."""
        gamma = auto_gamma(average_loss, self.num_classes) if math.isfinite(average_loss) and average_loss > 0 else 0.0
        if gamma > 0:
            return gamma
        previous = next((g for g in reversed(self.gammas[:stage]) if g is not None), None)
        if previous is None:
            raise ValueError(
                f'gamma="auto" cannot start stage {stage}: the average training loss is {average_loss} (gamma would '
                "be 0 or undefined) and no earlier stage's gamma can stand in. Check the model's loss, or set a gamma."
            )
        message = (
            'gamma="auto" at stage %d: the average training loss is %s; keeping the previous stage\'s gamma %.4g.'
        )
        logger.warning(message, stage, average_loss, previous)
        return previous

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """The run's state (tensors and plain data only: loads with ``weights_only``)."""
        return {
            **self.recipe(),
            "stage": self.stage,
            "h": self.state.h.clone(),
            "c": self.state.c.clone(),
            "gammas": list(self.gammas),
            "num_classes": self.num_classes,
            "base_lr": self.base_lr,
            "last_lr": self.last_lr,
            "num_steps": self.num_steps,
            "num_skipped": self.num_skipped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (also the runtime state that schedules kept in their ``state_dict`` before
        runs were apart from them, without the recipe fields)."""
        gammas = state["gammas"]
        if not isinstance(gammas, list | tuple) or len(gammas) != self.num_stages:
            raise CheckpointStateError(
                f"run.gammas must hold one gamma per stage ({self.num_stages}), got {str(gammas)[:80]}."
            )
        for name in ("gamma", "input_normalization", "relative_max_scale"):
            if name in state and state[name] != getattr(self, name):
                raise ValueError(
                    f"The checkpoint's run used {name}={state[name]!r}, this run {name}={getattr(self, name)!r}: "
                    "resume with the same setting."
                )
        shape = tuple(self.state.h.shape)
        h, c = (check_tensor(state[k], f"run.{k} (the LSTM state)", shape) for k in ("h", "c"))
        stage = check_int(state["stage"], "run.stage", -1, self.num_stages - 1)
        if stage < 0 and check_int(state["num_steps"], "run.num_steps") > 0:
            raise CheckpointStateError("run.stage is -1 (no stage entered), but the run has taken steps.")
        gammas = [check_number(g, f"run.gammas[{i}]", positive=True, optional=True) for i, g in enumerate(gammas)]
        if stage >= 0 and gammas[stage] is None and self.gamma not in BASE_LR_RULES:
            raise CheckpointStateError(f"run.gammas[{stage}] is missing for the current stage {stage}.")
        num_classes = None if state["num_classes"] is None else check_int(state["num_classes"], "run.num_classes", 1)
        base_lr = check_number(state["base_lr"], "run.base_lr", positive=True, optional=True)
        last_lr = check_number(state["last_lr"], "run.last_lr", optional=True)
        num_steps = check_int(state["num_steps"], "run.num_steps")
        num_skipped = check_int(state["num_skipped"], "run.num_skipped")
        device = self.state.h.device
        self.state = MLRSNetState(h.clone().to(device), c.clone().to(device))
        self.stage, self.gammas, self.num_classes, self.base_lr = stage, gammas, num_classes, base_lr
        self.last_lr, self.num_steps, self.num_skipped = last_lr, num_steps, num_skipped
