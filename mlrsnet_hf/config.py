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
