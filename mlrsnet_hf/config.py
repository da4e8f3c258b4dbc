"""``MLRSNetConfig``: ``TrainingArguments`` plus the schedule options (:class:`~mlrsnet_hf.options.ScheduleOptions`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .options import ScheduleOptions, _positive_int


@dataclass
class MLRSNetConfig(TrainingArguments, ScheduleOptions):
    """Training arguments for :class:`~mlrsnet_hf.MLRSNetTrainer`: every ``TrainingArguments`` field, every
    :class:`~mlrsnet_hf.options.ScheduleOptions` field, and the schedule to use.

    Two modes: **transfer** (``meta_train=False``: a learned schedule sets the LR of every optimizer step
    from that step's training loss) and **meta-train** (``meta_train=True``: the schedule is learned
    online, paper Algorithm 1).

    Every ``TrainingArguments`` default is kept, the optimizer included (AdamW): with it, and ``gamma`` left
    unset, ``gamma="relative"`` is used, so ``learning_rate`` is the LR of the first step and the upper bound,
    and the schedule shapes it. The paper's recipe (SGD, a fixed ``gamma``) is what the presets and an explicit
    ``optim="sgd"`` give. The schedule sets every step's LR: settings it does not use (``learning_rate`` under a
    fixed gamma, ``lr_scheduler_type``, warm-up) are named in one warning at the first step, with the LR used
    instead; with an optimizer other than SGD, a first LR over 10x ``learning_rate`` is refused.
    """

    schedule: str | None = field(
        default=None,
        metadata={
            "help": "The learned schedule: a local directory, a zoo schedule shipped with the package "
            "(mlrsnet_hf/NAME, see `mlrsnet info`) or a Hub repo id. Required for transfer; for "
            "meta-training, a schedule to start from (default: a freshly initialised one)."
        },
    )
    schedule_hidden_size: int = field(
        default=50, metadata={"help": "Hidden size of a freshly initialised schedule (meta-train without schedule)."}
    )
    schedule_num_stages: int = field(
        default=1, metadata={"help": "Number of stages of a freshly initialised schedule."}
    )

    def __post_init__(self) -> None:
        TrainingArguments.__post_init__(self)
        ScheduleOptions.__post_init__(self)
        for name in ("schedule_hidden_size", "schedule_num_stages"):
            _positive_int(name, getattr(self, name), 2 if name == "schedule_hidden_size" else 1)
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(
                f"learning_rate must be a positive number (the reference the schedule's LR is written against), "
                f"got {self.learning_rate}."
            )
