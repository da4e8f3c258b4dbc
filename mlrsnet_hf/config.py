"""``MLRSNetConfig``: ``TrainingArguments`` plus the schedule and meta-training options."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .lr_range_test import DEFAULT_RULE
from .lr_range_test import RULES as RANGE_TEST_RULES
from .schedule import GAMMA_RULES, check_relative_max_scale

# Optimizers whose update is linear in the LR (``w_{t+1} = w_t - lr * d`` with ``d`` independent of
# ``lr``): meta-training reads ``d`` off the real step for these.
LR_LINEAR_OPTIMIZERS = ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adamax", "NAdam", "RAdam")


def parse_gamma(value: str | float | None) -> str | float | None:
    """``"auto"``, ``"relative"``, ``"range_test"``, a positive float (also given as a string, as on the command line) or None."""
    if value is None or value in GAMMA_RULES:
        return value
    message = f"gamma must be {', '.join(repr(r) for r in GAMMA_RULES)} or a positive number, got {value!r}."
    if isinstance(value, bool):
        raise ValueError(message)
    try:
        gamma = float(value)
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if not (math.isfinite(gamma) and gamma > 0):
        raise ValueError(message)
    return gamma


@dataclass
class MLRSNetConfig(TrainingArguments):
    """Training arguments for :class:`~mlrsnet_hf.MLRSNetTrainer`: every ``TrainingArguments`` field plus the ones below.

    Two modes: **transfer** (``meta_train=False``: a learned schedule sets the LR of every optimizer step
    from that step's training loss) and **meta-train** (``meta_train=True``: the schedule is learned
    online, paper Algorithm 1). ``lr_scheduler_type`` and warm-up settings are ignored: the schedule
    sets the LR.

    Defaults follow the paper's recipes: ``optim="sgd"``. With an Adam-family optimizer (e.g.
    ``optim="adamw_torch"``) and ``gamma`` left unset, ``gamma="relative"`` is used: ``learning_rate``
    is the LR of the first step and the upper bound, and the schedule shapes it.
    """

    optim: str = field(
        default="sgd",
        metadata={"help": "The optimizer (as in TrainingArguments). Default 'sgd', the paper's optimizer."},
    )
    schedule: str | None = field(
        default=None,
        metadata={
            "help": "The learned schedule: a local directory or a Hub repo id. Required for transfer; for "
            "meta-training, a schedule to start from (default: a freshly initialised one)."
        },
    )
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
    schedule_hidden_size: int = field(
        default=50, metadata={"help": "Hidden size of a freshly initialised schedule (meta-train without schedule)."}
    )
    schedule_num_stages: int = field(
        default=1, metadata={"help": "Number of stages of a freshly initialised schedule."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.gamma = parse_gamma(self.gamma)
        if self.input_normalization not in (None, "none", "log_num_classes"):
            raise ValueError(
                f"input_normalization must be 'none' or 'log_num_classes', got {self.input_normalization!r}."
            )
        if self.meta_update_interval < 1:
            raise ValueError(f"meta_update_interval must be >= 1, got {self.meta_update_interval}.")
        if self.auto_gamma_batches < 1:
            raise ValueError(f"auto_gamma_batches must be >= 1, got {self.auto_gamma_batches}.")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(
                f"learning_rate must be a positive number (the reference the schedule's LR is written against), "
                f"got {self.learning_rate}."
            )
        if self.relative_max_scale is not None:
            self.relative_max_scale = check_relative_max_scale(self.relative_max_scale)
        if self.meta_batch_size is not None and self.meta_batch_size < 1:
            raise ValueError(f"meta_batch_size must be >= 1, got {self.meta_batch_size}.")
        if self.meta_horizon < 1 or self.meta_horizon > self.meta_update_interval:
            raise ValueError(
                f"meta_horizon must be in [1, meta_update_interval={self.meta_update_interval}], got {self.meta_horizon}."
            )
        fractions = list(self.snapshot_fractions or [])
        if any(not (0 < f <= 1) for f in fractions) or any(b <= a for a, b in itertools.pairwise(fractions)):
            raise ValueError(f"snapshot_fractions must increase strictly within (0, 1], got {fractions}.")
        self.snapshot_fractions = fractions
        if self.range_test_rule not in RANGE_TEST_RULES:
            raise ValueError(
                f"range_test_rule must be one of {', '.join(RANGE_TEST_RULES)}, got {self.range_test_rule!r}."
            )
        if self.range_test_steps < 5:
            raise ValueError(f"range_test_steps must be >= 5, got {self.range_test_steps}.")
        for name in ("range_test_min_lr", "range_test_max_lr"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}.")
        if self.num_classes is not None and self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}.")
