"""The LR math: an MLR-SNet schedule, its stages and its gamma rules.

``lr_t = gamma * p_t`` where ``p_t`` in (0, 1) is what the current stage's :class:`~mlrsnet_hf.MLRSNet`
predicts from the training loss of step ``t``. A schedule has one or more stages (the released
recipe uses three networks for the three thirds of a run) and one of the gamma rules
(:mod:`mlrsnet_hf.gamma`: a float, ``"auto"``, ``"relative"`` or ``"range_test"``).

The schedule is the artifact (weights and recipe); a run of it is a :class:`~mlrsnet_hf.mlrsnet.run.ScheduleRun`
(what the Trainer glue does every optimizer step)::

    run = schedule.start(num_classes=10)                # zero state, before the first step
    stage = run.stage_at(step, total_steps)
    if stage != run.stage:
        run.enter_stage(stage, average_loss=L)          # L only needed for gamma="auto"
    lr = run.step(loss)                                 # the LR for this optimizer step
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

from ..gamma import BASE_LR_RULES, check_gamma, check_input_normalization, check_relative_max_scale
from ..version import __version__
from .network import MLRSNet
from .run import ScheduleRun
from .schedule_card import MLRSNetScheduleRepo

logger = logging.getLogger(__name__)

MODEL_TYPE = "mlrsnet_schedule"
# what a schedule held of its run before runs were apart from it (now on ScheduleRun)
_RUN_FIELDS = frozenset(
    {"step", "enter_stage", "state", "stage", "gammas", "last_lr", "num_steps", "num_skipped", "num_classes",
     "base_lr", "current_gamma", "max_lr", "lr_at", "predict", "scale", "normalize_loss", "needs_average_loss"}
)  # fmt: skip


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
        gate_layout: ``"ifgo"`` or ``"ifog_shifted"`` (see :data:`mlrsnet_hf.mlrsnet.network.GATE_LAYOUTS`).
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
    # The largest sizes a config.json may ask for (checked before anything is built from it: repo_checks.py).
    config_limits = {"hidden_size": 1024, "num_layers": 8, "num_stages": 64}

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
        for name, value in (("hidden_size", hidden_size), ("num_layers", num_layers), ("num_stages", num_stages)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}.")
        for name, value in (
            ("gamma", gamma), ("input_normalization", input_normalization), ("relative_max_scale", relative_max_scale)
        ):  # fmt: skip
            if value is None:
                raise ValueError(f"{name} must have a value, got None.")
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

    # ------------------------------------------------------------------ config
    def configure(
        self,
        gamma: float | str | None = None,
        input_normalization: str | None = None,
        relative_max_scale: float | None = None,
    ) -> None:
        """Edit the recipe fields that a run may override (None keeps the current value), each validated. A run
        does not call this: it overrides them in its own :class:`~mlrsnet_hf.mlrsnet.run.ScheduleRun`."""
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

    # ------------------------------------------------------------------- runs
    def start(
        self,
        num_classes: int | None = None,
        base_lr: float | None = None,
        *,
        gamma: float | str | None = None,
        input_normalization: str | None = None,
        relative_max_scale: float | None = None,
    ) -> ScheduleRun:
        """A new run of this schedule (zero LSTM state, no stage entered); the schedule itself is not changed.

        Args:
            num_classes: ``C``, needed by ``gamma="auto"`` and ``input_normalization="log_num_classes"``.
            base_lr: the user's learning rate, needed by ``gamma="relative"`` (with ``gamma="range_test"``,
                the measured LR; it may also be given later to ``run.enter_stage``).
            gamma, input_normalization, relative_max_scale: the run's overrides of the recipe (None: its own).
        """
        return ScheduleRun(
            self,
            num_classes,
            base_lr,
            gamma=gamma,
            input_normalization=input_normalization,
            relative_max_scale=relative_max_scale,
        )

    def __getattr__(self, name: str) -> Any:
        if name in _RUN_FIELDS:  # a clear error for code written when the schedule held its run
            raise AttributeError(
                f"MLRSNetSchedule.{name} is the run's now: run = schedule.start(num_classes=..., base_lr=...); "
                f"run.{name} (mlrsnet_hf.mlrsnet.run.ScheduleRun; a driver's is driver.run)."
            )
        return super().__getattr__(name)

    @property
    def uses_base_lr(self) -> bool:
        """True when the recipe's LR scale comes from a base LR (``gamma="relative"`` or ``"range_test"``)."""
        return self.gamma in BASE_LR_RULES

    def stage_boundaries(self, total_steps: int) -> list[int]:
        """The first optimizer step (0-based) of each stage in a run of ``total_steps`` steps."""
        # The epsilon keeps e.g. 300 * (1/3) at 100 despite floating point.
        return [math.floor(s * total_steps + 1e-9) for s in self.stage_starts]

    def stage_at(self, step: int, total_steps: int) -> int:
        """The stage that optimizer step ``step`` (0-based) of a ``total_steps`` run belongs to."""
        return max(k for k, first in enumerate(self.stage_boundaries(total_steps)) if step >= first)

    # ------------------------------------------------------------- previewing
    @torch.no_grad()
    def unroll(
        self, losses: Sequence[float] | torch.Tensor, stage: int = 0, num_classes: int | None = None
    ) -> torch.Tensor:
        """``p_t`` (before gamma) of one stage's network for a sequence of losses, from a zero state.

        The state is carried from one loss to the next, as in training. ``num_classes`` is needed only
        with ``input_normalization="log_num_classes"``.
        """
        if not 0 <= stage < self.num_stages:
            raise ValueError(f"stage must be in [0, {self.num_stages}), got {stage}.")
        run = self.start(num_classes=num_classes)
        net, state = self.stages[stage], run.state
        out = []
        for loss in torch.as_tensor(losses, dtype=torch.float64).tolist():
            p, state = net(run.normalize_loss(loss), state)
            out.append(p)
        return torch.stack(out) if out else torch.empty(0)

    def simulate(
        self, losses: Sequence[float], num_classes: int | None = None, base_lr: float | None = None
    ) -> list[float]:
        """The LR a run of ``len(losses)`` steps would get for this loss curve, stages and gamma included.

        With ``gamma="auto"`` the loss at each stage's first step stands in for the average training
        loss.
        """
        sim = self.start(num_classes=num_classes, base_lr=base_lr)
        lrs = []
        for step, loss in enumerate(losses):
            stage = sim.stage_at(step, len(losses))
            if stage != sim.stage:
                sim.enter_stage(stage, average_loss=loss if sim.needs_average_loss else None)
            lrs.append(sim.step(loss))
        return lrs

    def weights(self) -> dict[str, torch.Tensor]:
        """The learned parameters only (what ``model.safetensors`` holds)."""
        weights = {k: v.detach() for k, v in self.state_dict().items()}
        return {k: (v if v.device.type in ("cpu", "meta") else v.cpu()).contiguous() for k, v in weights.items()}
