"""``ScheduleOptions``: how a learned schedule is driven in a run, declared once.

:class:`~mlrsnet_hf.MLRSNetConfig` inherits these fields (so ``HfArgumentParser`` and the command line see
them) and :class:`~mlrsnet_hf.MLRSNetCallback` takes them as keyword arguments: both build their driver from
the same object, validated here and nowhere else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from .gamma import GAMMA_RULES, check_gamma, check_input_normalization, check_relative_max_scale
from .lr_range_rules import DEFAULT_RULE
from .lr_range_rules import RULES as RANGE_TEST_RULES
from .online_scale import ONLINE_SCALES


def parse_gamma(value: str | float | None) -> str | float | None:
    """None, or a gamma as :func:`~mlrsnet_hf.gamma.check_gamma` takes it; numbers may come as strings (command line)."""
    if value is None:
        return None
    if isinstance(value, str) and value not in GAMMA_RULES:
        with contextlib.suppress(ValueError):  # "0.1" from the command line; anything else is refused below
            value = float(value)
    return check_gamma(value)


STEP_BACKENDS = ("auto", "numpy", "tensor", "cuda_graph")
"""How a transferred MLR-SNet schedule steps (:class:`~mlrsnet_hf.mlrsnet.device_step.DeviceStep`): "auto" picks "numpy"
for a float32 network on a CPU, "cuda_graph" on CUDA, else "tensor"."""


def check_step_backend(backend: str) -> str:
    if backend not in STEP_BACKENDS:
        raise ValueError(f"step_backend must be one of {', '.join(map(repr, STEP_BACKENDS))}, got {backend!r}.")
    return backend


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


@dataclass
class ScheduleOptions:
    """The options of a learned schedule in a run: its LR scale, and (``meta_train=True``) how it is meta-trained.

    ``gamma``, ``input_normalization`` and ``relative_max_scale`` left at None keep the schedule's own.
    """

    gamma: str | None = field(
        default=None,
        metadata={
            "help": "LR scale: 'auto' (released rule from the loss and the number of classes at each stage start), "
            "'relative' (learning_rate sets the scale), 'range_test' (an LR range test on a copy of the model "
            "before the first step sets the scale: no LR to choose), or a number (lr = gamma * p). Default: the "
            "schedule's own rule with SGD, 'relative' with other optimizers; 1.0 for a fresh schedule with SGD."
        },
    )
    num_classes: int | None = field(
        default=None,
        metadata={
            "help": "C for gamma='auto' and input_normalization='log_num_classes'. Default: the model config's "
            "num_labels, or vocab_size for language models."
        },
    )
    input_normalization: str | None = field(
        default=None,
        metadata={
            "help": "'none' or 'log_num_classes' (the loss divided by ln C, the released setting for language "
            "models). Default: the schedule's own."
        },
    )
    relative_max_scale: float | None = field(
        default=None,
        metadata={
            "help": "With gamma='relative': the bound on lr / learning_rate. Default: the schedule's own (1.0)."
        },
    )
    online_scale: str | None = field(
        default=None,
        metadata={
            "help": "'mechanic': learn a factor S of the LR during the run from the training signal alone "
            "(Mechanic, Cutkosky et al. 2023, over the Trainer's optimizer): each update is applied with "
            "S * shape_t, shape_t the schedule's LR relative to its first step, and S rescales the earlier updates "
            "too; gamma and learning_rate do not set the scale. Two parameter-sized buffers; transfer only. "
            "Default: off."
        },
    )
    step_backend: str = field(
        default="auto",
        metadata={
            "help": "How a transferred schedule steps between stage entries: 'numpy' (on the host, float32 on a CPU), "
            "'tensor' (fused tensor operations on the schedule's device), 'cuda_graph' (the same, captured once per "
            "stage as a CUDA graph and replayed) or 'auto' (numpy on a CPU, cuda_graph on CUDA). Every backend "
            "computes the same LRs up to float rounding; meta-training always steps on the host."
        },
    )
    auto_gamma_batches: int = field(
        default=20,
        metadata={
            "help": "With gamma='auto': the average training loss at each stage start is taken over this many "
            "batches per process (the first ones, in order, model in eval mode)."
        },
    )
    range_test_steps: int = field(
        default=60,
        metadata={"help": "With gamma='range_test': optimizer steps of the range test (on a copy of the model)."},
    )
    range_test_min_lr: float | None = field(
        default=None,
        metadata={"help": "With gamma='range_test': the smallest LR tried. Default: 1e-3 for SGD, 1e-6 otherwise."},
    )
    range_test_max_lr: float | None = field(
        default=None,
        metadata={"help": "With gamma='range_test': the largest LR tried. Default: 1e3 for SGD, 1 otherwise."},
    )
    range_test_rule: str = field(
        default=DEFAULT_RULE,
        metadata={
            "help": "With gamma='range_test': how the LR is read off the curve: one of "
            f"{', '.join(RANGE_TEST_RULES)} (see mlrsnet_hf.lr_range_test)."
        },
    )
    meta_train: bool = field(
        default=False, metadata={"help": "Learn the schedule online while the model trains (needs meta_dataset)."}
    )
    meta_update_interval: int = field(
        default=100, metadata={"help": "Update the schedule every this many optimizer steps."}
    )
    meta_learning_rate: float = field(default=1e-3, metadata={"help": "Adam learning rate of the schedule's weights."})
    meta_weight_decay: float = field(default=1e-4, metadata={"help": "Adam weight decay of the schedule's weights."})
    meta_batch_size: int | None = field(
        default=None,
        metadata={"help": "Meta (validation) batch size per process. Default: per_device_train_batch_size."},
    )
    meta_horizon: int = field(
        default=1,
        metadata={
            "help": "Optimizer steps whose LRs each meta update differentiates: the last meta_horizon steps before "
            "it (<= meta_update_interval). 1 is the paper's one-step hypergradient; more credits earlier LRs with "
            "their effect on the later meta loss (a longer horizon, less short-horizon bias), at the cost of one "
            "parameter-sized buffer per step of the horizon."
        },
    )
    snapshot_fractions: list[float] | None = field(
        default_factory=lambda: [0.005, 0.5, 1.0],
        metadata={
            "help": "Meta-training records the schedule's network after these fractions of the run; save_schedule "
            "then writes a schedule with one stage per snapshot, played in equal parts of a run (the released "
            "recipe: epochs 1, 100 and 200 of 200). Empty or None: save only the final network."
        },
    )

    def __post_init__(self) -> None:
        self.gamma = parse_gamma(self.gamma)
        if self.input_normalization is not None:
            check_input_normalization(self.input_normalization)
        if self.relative_max_scale is not None:
            self.relative_max_scale = check_relative_max_scale(self.relative_max_scale)
        if self.online_scale is not None and self.online_scale not in ONLINE_SCALES:
            raise ValueError(
                f"online_scale must be one of {', '.join(map(repr, ONLINE_SCALES))} or None, got {self.online_scale!r}."
            )
        if self.online_scale is not None and self.meta_train:
            raise ValueError(
                "online_scale is for transfer: meta-training reads each step's update as lr_t * d_t, which the online "
                "scale changes. Meta-train without it, then transfer with online_scale."
            )
        check_step_backend(self.step_backend)
        if self.num_classes is not None:
            _positive_int("num_classes", self.num_classes, minimum=2)
        _positive_int("auto_gamma_batches", self.auto_gamma_batches)
        _positive_int("range_test_steps", self.range_test_steps, minimum=5)
        if self.range_test_rule not in RANGE_TEST_RULES:
            raise ValueError(
                f"range_test_rule must be one of {', '.join(RANGE_TEST_RULES)}, got {self.range_test_rule!r}."
            )
        for name in ("range_test_min_lr", "range_test_max_lr", "meta_learning_rate"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}.")
        if not (math.isfinite(self.meta_weight_decay) and self.meta_weight_decay >= 0):
            raise ValueError(f"meta_weight_decay must be a number >= 0, got {self.meta_weight_decay}.")
        _positive_int("meta_update_interval", self.meta_update_interval)
        if self.meta_batch_size is not None:
            _positive_int("meta_batch_size", self.meta_batch_size)
        _positive_int("meta_horizon", self.meta_horizon)
        if self.meta_horizon > self.meta_update_interval:
            raise ValueError(
                f"meta_horizon must be in [1, meta_update_interval={self.meta_update_interval}], got {self.meta_horizon}."
            )
        fractions = list(self.snapshot_fractions or [])
        if any(not (0 < f <= 1) for f in fractions) or any(b <= a for a, b in itertools.pairwise(fractions)):
            raise ValueError(f"snapshot_fractions must increase strictly within (0, 1], got {fractions}.")
        self.snapshot_fractions = fractions

    @classmethod
    def of(cls, args: Any) -> ScheduleOptions:
        """The options held by ``args`` (an :class:`~mlrsnet_hf.MLRSNetConfig`, or anything with these fields)."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    @classmethod
    def set_in(cls, args: Any) -> dict[str, Any]:
        """The options ``args`` sets to other values than their defaults (all a family that takes none may get)."""
        defaults = cls()
        return {
            f.name: getattr(args, f.name)
            for f in dataclasses.fields(cls)
            if getattr(args, f.name) != getattr(defaults, f.name)
        }

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> ScheduleOptions:
        """Options from keyword arguments, refusing unknown names with the list of known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"Unknown schedule option(s) {unknown}; the options are {sorted(known)}.")
        return cls(**kwargs)
