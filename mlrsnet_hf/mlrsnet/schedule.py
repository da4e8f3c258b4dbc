"""The LR math: an MLR-SNet schedule, its stages and its gamma rules.

``lr_t = gamma * p_t`` where ``p_t`` in (0, 1) is what the current stage's :class:`~mlrsnet_hf.MLRSNet`
predicts from the training loss of step ``t``. A schedule has one or more stages (the released
recipe uses three networks for the three thirds of a run) and one of the gamma rules
(:mod:`mlrsnet_hf.gamma`: a float, ``"auto"``, ``"relative"`` or ``"range_test"``).

Runtime use (what the Trainer glue does every optimizer step)::

    schedule.start(num_classes=10)                      # zero state, before the first step
    stage = schedule.stage_at(step, total_steps)
    if stage != schedule.stage:
        schedule.enter_stage(stage, average_loss=L)     # L only needed for gamma="auto"
    lr = schedule.step(loss)                            # the LR for this optimizer step
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from ..gamma import BASE_LR_RULES, auto_gamma, check_gamma, check_input_normalization, check_relative_max_scale
from ..version import __version__
from .network import MLRSNet, MLRSNetState
from .schedule_card import MLRSNetScheduleRepo

logger = logging.getLogger(__name__)

MODEL_TYPE = "mlrsnet_schedule"


def default_stage_starts(num_stages: int) -> list[float]:
    """Equal parts of the run: ``[0, 1/n, 2/n, ...]`` (the released recipe: thirds)."""
    return [k / num_stages for k in range(num_stages)]


class MLRSNetSchedule(
    nn.Module,
    MLRSNetScheduleRepo,  # save / load / card / pictures (schedule_card.py)
    PyTorchModelHubMixin,
    library_name="mlrsnet_hf",
    license="apache-2.0",
    tags=["mlrsnet", "learning-rate-schedule", "meta-learning"],
    paper_url="https://arxiv.org/abs/2007.14546",
):
    """A learned LR schedule: one :class:`MLRSNet` per stage plus the rule that scales its output.

    Args:
        hidden_size: LSTM width of every stage's network.
        num_layers: stacked cells per network.
        gate_layout: ``"ifgo"`` or ``"ifog_shifted"`` (see :data:`mlrsnet_hf.network.GATE_LAYOUTS`).
        num_stages: number of networks used one after another.
        stage_starts: fraction of the run at which each stage starts; ``[0.0, ...]``, increasing.
            Defaults to equal parts.
        gamma: a float, ``"auto"``, ``"relative"`` or ``"range_test"`` (see the module docstring).
        input_normalization: ``"none"`` (the raw loss is the input) or ``"log_num_classes"`` (the loss
            divided by ``ln C``, the released setting for language models).
        relative_max_scale: with ``gamma="relative"`` or ``"range_test"``, the bound on ``lr / base_lr``.
        meta_training: what the schedule was meta-trained on (``dataset``, ``model``, ``epochs``,
            ``optimizer``, ``num_classes``, ``results``...); recorded in ``config.json`` and the card.
    """

    model_type = MODEL_TYPE

    def __init__(
        self,
        hidden_size: int = 50,
        num_layers: int = 1,
        gate_layout: str = "ifgo",
        num_stages: int = 1,
        stage_starts: list[float] | None = None,
        gamma: float | str = "auto",
        input_normalization: str = "none",
        relative_max_scale: float = 1.0,
        meta_training: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if num_stages < 1:
            raise ValueError(f"num_stages must be >= 1, got {num_stages}.")
        stage_starts = default_stage_starts(num_stages) if stage_starts is None else [float(s) for s in stage_starts]
        if len(stage_starts) != num_stages:
            raise ValueError(f"stage_starts has {len(stage_starts)} entries but num_stages={num_stages}.")
        if not all(math.isfinite(s) for s in stage_starts):
            raise ValueError(f"stage_starts must be finite fractions of the run, got {stage_starts}.")
        if stage_starts[0] != 0.0 or any(b <= a for a, b in itertools.pairwise(stage_starts)):
            raise ValueError(f"stage_starts must start at 0.0 and increase strictly, got {stage_starts}.")
        if stage_starts[-1] >= 1.0:
            raise ValueError(f"stage_starts must be fractions of the run below 1.0, got {stage_starts}.")
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.gate_layout = gate_layout
        self.num_stages = num_stages
        self.stage_starts = stage_starts
        self.configure(gamma=gamma, input_normalization=input_normalization, relative_max_scale=relative_max_scale)
        self.meta_training = dict(meta_training or {})
        self.name_or_path: str | None = None  # where it was loaded from (set by from_pretrained)
        self.stages = nn.ModuleList(MLRSNet(hidden_size, num_layers, gate_layout) for _ in range(num_stages))
        self.start()

    # ------------------------------------------------------------------ config
    def configure(
        self,
        gamma: float | str | None = None,
        input_normalization: str | None = None,
        relative_max_scale: float | None = None,
    ) -> None:
        """Set the recipe fields that a run may override (None keeps the current value), each validated."""
        if gamma is not None:
            self.gamma = check_gamma(gamma)
        if input_normalization is not None:
            self.input_normalization = check_input_normalization(input_normalization)
        if relative_max_scale is not None:
            self.relative_max_scale = check_relative_max_scale(relative_max_scale)

    @property
    def config(self) -> dict[str, Any]:
        """The architecture and recipe, as written to ``config.json``."""
        return {
            "model_type": MODEL_TYPE,
            "library_name": "mlrsnet_hf",
            "library_version": __version__,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "gate_layout": self.gate_layout,
            "num_stages": self.num_stages,
            "stage_starts": list(self.stage_starts),
            "gamma": self.gamma,
            "input_normalization": self.input_normalization,
            "relative_max_scale": self.relative_max_scale,
            "meta_training": copy.deepcopy(self.meta_training),
        }

    def extra_repr(self) -> str:
        return (
            f"hidden_size={self.hidden_size}, num_layers={self.num_layers}, num_stages={self.num_stages}, "
            f"stage_starts={self.stage_starts}, gamma={self.gamma!r}"
        )

    # ----------------------------------------------------------------- runtime
    def start(self, num_classes: int | None = None, base_lr: float | None = None) -> None:
        """Reset the runtime state for a new run: zero LSTM state, no stage entered, no gamma yet.

        Args:
            num_classes: ``C``, needed by ``gamma="auto"`` and ``input_normalization="log_num_classes"``.
            base_lr: the user's learning rate, needed by ``gamma="relative"`` (with ``gamma="range_test"``,
                the measured LR; it may also be given later to :meth:`enter_stage`).
        """
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        if base_lr is not None and not (math.isfinite(base_lr) and base_lr > 0):
            raise ValueError(f"base_lr must be a positive number, got {base_lr}.")
        self.num_classes = num_classes
        self.base_lr = base_lr
        self.stage = -1
        self.state = self.stages[0].initial_state()
        self.gammas: list[float | None] = [None] * self.num_stages
        self.last_lr: float | None = None
        self.num_steps = 0
        self.num_skipped = 0

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

    def stage_boundaries(self, total_steps: int) -> list[int]:
        """The first optimizer step (0-based) of each stage in a run of ``total_steps`` steps."""
        # The epsilon keeps e.g. 300 * (1/3) at 100 despite floating point.
        return [math.floor(s * total_steps + 1e-9) for s in self.stage_starts]

    def stage_at(self, step: int, total_steps: int) -> int:
        """The stage that optimizer step ``step`` (0-based) of a ``total_steps`` run belongs to."""
        return max(k for k, first in enumerate(self.stage_boundaries(total_steps)) if step >= first)

    def enter_stage(self, stage: int, average_loss: float | None = None, base_lr: float | None = None) -> None:
        """Switch to ``stage`` (the LSTM state carries over) and fix its gamma.

        ``average_loss`` is the average training loss at this moment, required with ``gamma="auto"``;
        ``base_lr`` the LR measured by the range test, used with ``gamma="range_test"`` (else ``start``'s).
        """
        if not 0 <= stage < self.num_stages:
            raise ValueError(f"stage must be in [0, {self.num_stages}), got {stage}.")
        if self.gamma == "auto":
            if average_loss is None:
                raise ValueError('gamma="auto" needs the average training loss at the start of each stage.')
            if self.num_classes is None:
                raise ValueError('gamma="auto" needs num_classes: call start(num_classes=...) first.')
            self.gammas[stage] = auto_gamma(float(average_loss), self.num_classes)
            if self.gammas[stage] == 0.0:
                logger.warning("gamma='auto' gave 0 for stage %d (L * C == 1): the LR is 0 in this stage.", stage)
        elif self.uses_base_lr:
            if base_lr is not None:
                if not (math.isfinite(base_lr) and base_lr > 0):
                    raise ValueError(f"base_lr must be a positive number, got {base_lr}.")
                self.base_lr = float(base_lr)
            if self.base_lr is None:
                raise ValueError(
                    f'gamma="{self.gamma}" needs the base learning rate: call start(base_lr=...) or '
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
                    'input_normalization="log_num_classes" needs num_classes: call start(num_classes=...).'
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

    def scale(self, p: torch.Tensor) -> torch.Tensor:
        """``lr = gamma * p`` for the current stage; differentiable in ``p``.

        In relative mode the value is capped at ``relative_max_scale * base_lr`` with a straight-through
        gradient (the gradient of ``gamma * p``), so meta-training still learns while the cap is active.
        """
        gamma = self.current_gamma
        if gamma is None:
            raise RuntimeError("gamma is not known yet: enter a stage (and take a first step in relative mode).")
        return self._scale(p, gamma)

    def _scale(self, p: torch.Tensor, gamma: float) -> torch.Tensor:
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
        return self._scale(p, gamma)

    @property
    def max_lr(self) -> float | None:
        """The cap on the LR in relative/range-test mode (``relative_max_scale * base_lr``), else None."""
        return self.relative_max_scale * self.base_lr if self.uses_base_lr and self.base_lr else None

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

    # ------------------------------------------------------------- previewing
    @torch.no_grad()
    def unroll(
        self, losses: Sequence[float] | torch.Tensor, stage: int = 0, num_classes: int | None = None
    ) -> torch.Tensor:
        """``p_t`` (before gamma) of one stage's network for a sequence of losses, from a zero state.

        The state is carried from one loss to the next, as in training. ``num_classes`` is needed only
        with ``input_normalization="log_num_classes"``. Does not touch the runtime state.
        """
        if not 0 <= stage < self.num_stages:
            raise ValueError(f"stage must be in [0, {self.num_stages}), got {stage}.")
        net = self.stages[stage]
        saved = self.num_classes
        self.num_classes = num_classes if num_classes is not None else saved
        try:
            state = net.initial_state()
            out = []
            for loss in torch.as_tensor(losses, dtype=torch.float64).tolist():
                p, state = net(self.normalize_loss(loss), state)
                out.append(p)
        finally:
            self.num_classes = saved
        return torch.stack(out) if out else torch.empty(0)

    def simulate(
        self, losses: Sequence[float], num_classes: int | None = None, base_lr: float | None = None
    ) -> list[float]:
        """The LR a run of ``len(losses)`` steps would get for this loss curve, stages and gamma included.

        With ``gamma="auto"`` the loss at each stage's first step stands in for the average training
        loss. Runs on a copy: the runtime state of this schedule is not touched.
        """
        sim = copy.deepcopy(self)
        sim.start(num_classes=num_classes, base_lr=base_lr)
        lrs = []
        for step, loss in enumerate(losses):
            stage = sim.stage_at(step, len(losses))
            if stage != sim.stage:
                sim.enter_stage(stage, average_loss=loss if sim.needs_average_loss else None)
            lrs.append(sim.step(loss))
        return lrs

    # ------------------------------------------------------- state for resume
    def get_extra_state(self) -> dict[str, Any]:
        """Runtime state, part of ``state_dict()`` (tensors and plain data only: loads with ``weights_only``)."""
        return {
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

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if len(state["gammas"]) != self.num_stages:
            raise ValueError(
                f"Runtime state is for {len(state['gammas'])} stages, this schedule has {self.num_stages}."
            )
        self.stage = int(state["stage"])
        self.state = MLRSNetState(state["h"].clone(), state["c"].clone())
        self.gammas = list(state["gammas"])
        self.num_classes = state["num_classes"]
        self.base_lr = state["base_lr"]
        self.last_lr = state["last_lr"]
        self.num_steps = int(state["num_steps"])
        self.num_skipped = int(state["num_skipped"])

    def weights(self) -> dict[str, torch.Tensor]:
        """The learned parameters only (what ``model.safetensors`` holds)."""
        weights = {k: v.detach() for k, v in self.state_dict().items() if not k.endswith("_extra_state")}
        return {k: (v if v.device.type in ("cpu", "meta") else v.cpu()).contiguous() for k, v in weights.items()}
