"""``MLRSNetCallback``: a learned schedule in a plain ``transformers.Trainer``, for transfer and meta-training alike.

The callback only routes the Trainer's events to a driver (:mod:`mlrsnet_hf.driver`), which is the Trainer's
``lr_scheduler``: the run starts it (``on_train_begin``), the LR of each step is set in the optimizer's step
pre-hook (inside ``optimizer.step()``, after clipping, as in a loop of your own: :mod:`mlrsnet_hf.loop`), and the
Trainer itself calls ``step()``, logs ``get_last_lr()`` and checkpoints ``state_dict()`` in ``scheduler.pt``.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

from torch import nn
from transformers import TrainerCallback
from transformers.utils import find_labels

from . import publishing
from .driver import LRDriver
from .engines import check_deepspeed_config, deepspeed_config
from .families import family_of
from .hub import load_any_schedule
from .provenance import add_model_tags, update_model_card

logger = logging.getLogger(__name__)


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def model_columns(model: nn.Module, label_names: list[str]) -> list[str]:
    """The dataset columns the model takes (as the Trainer's ``remove_unused_columns`` keeps them)."""
    return [*inspect.signature(_unwrap(model).forward).parameters, "label", "label_ids", *label_names]


class MLRSNetCallback(TrainerCallback):
    """Give a plain ``transformers.Trainer`` a learned schedule: MLR-SNet (transferred or meta-trained), or an LR controller.

    Example::

        callback = MLRSNetCallback(MLRSNetSchedule.from_pretrained("dir"), gamma=0.1)
        trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[callback],
                          optimizers=(None, callback.lr_scheduler))

    The callback's driver, ``callback.lr_scheduler``, must be the Trainer's scheduler (``optimizers=(None or your
    optimizer, callback.lr_scheduler)``); any other scheduler is refused. It sets the LR of every optimizer step,
    which the Trainer logs as ``learning_rate``, and its state goes into each checkpoint's ``scheduler.pt``, so
    ``resume_from_checkpoint`` continues the LR sequence (and meta-training) exactly.

    DeepSpeed is refused: it steps the optimizer inside the last micro-batch's backward, and transformers' DeepSpeed
    setup replaces the scheduler given to a plain ``Trainer`` (use :class:`~mlrsnet_hf.MLRSNetTrainer`, which sets
    the LR before that backward; see :mod:`mlrsnet_hf.engines`).

    Args:
        schedule: a schedule of any registered family (:mod:`mlrsnet_hf.families`: an
            :class:`~mlrsnet_hf.MLRSNetSchedule`, an :class:`~mlrsnet_hf.LRController`, ...), or the directory or Hub
            id of one.
        meta_dataset: the family's held-out set: with ``meta_train=True``, the set the schedule is meta-trained on.
        probe_dataset: the same, by the name the LR controller's docs use (the held-out examples it observes).
        **options: the run options of the family (for MLR-SNet any field of
            :class:`~mlrsnet_hf.options.ScheduleOptions`: ``gamma``, ``num_classes``, ``meta_train``, ...), as in
            :class:`~mlrsnet_hf.MLRSNetConfig`. With the same options, seed and data, a plain ``Trainer`` with this
            callback sets exactly the LRs (and learns exactly the weights) of :class:`~mlrsnet_hf.MLRSNetTrainer`.
    """

    def __init__(
        self,
        schedule: Any,
        *,
        meta_dataset: Any = None,
        probe_dataset: Any = None,
        **options: Any,
    ) -> None:
        if isinstance(schedule, (str, Path)):
            schedule = load_any_schedule(str(schedule))
        if meta_dataset is not None and probe_dataset is not None:
            raise ValueError("Pass the held-out set once: meta_dataset= or probe_dataset=, not both.")
        held_out = meta_dataset if meta_dataset is not None else probe_dataset
        self.family = family_of(schedule)
        self.lr_scheduler: LRDriver = self.family.driver_class.from_options(schedule, options, held_out)
        self.schedule = schedule
        self.saved_schedule: dict[str, Any] | None = None  # where save_schedule / push_schedule_to_hub wrote it
        self._run: dict[str, Any] | None = None  # the Trainer's args, state, model, optimizer, data (for the record)
        # Set by MLRSNetTrainer under DeepSpeed: it sets the LR itself before the last micro-batch's backward.
        self.lr_before_backward = False

    def _check_engine(self, args: Any) -> None:
        config = deepspeed_config(args)
        if config is None:
            return
        check_deepspeed_config(config)
        if not self.lr_before_backward:
            raise ValueError(
                "MLRSNetCallback cannot drive a plain Trainer under DeepSpeed: DeepSpeed takes the optimizer step "
                "inside the backward pass of the last micro-batch, on its own optimizer (ZeRO steps the torch "
                "optimizer once per parameter group), and transformers' DeepSpeed setup replaces the scheduler passed "
                "in optimizers=. Use MLRSNetTrainer, which sets the LR of each step before that backward pass."
            )

    def _check_scheduler(self, lr_scheduler: Any) -> None:
        if lr_scheduler is not self.lr_scheduler:
            what = "no scheduler" if lr_scheduler is None else f"a {type(lr_scheduler).__name__}"
            raise ValueError(
                f"MLRSNetCallback sets the LR through the Trainer's lr_scheduler, but the Trainer was given {what}: "
                "pass optimizers=(None, callback.lr_scheduler) (or (your_optimizer, callback.lr_scheduler)) to the "
                "Trainer, or use MLRSNetTrainer."
            )

    def on_init_end(self, args, state, control, lr_scheduler=None, **kwargs):
        self._check_engine(args)
        self._check_scheduler(lr_scheduler)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        self._check_engine(args)
        self._check_scheduler(lr_scheduler)
        driver = self.lr_scheduler
        if state.global_step > 0 and driver._restored is None:
            raise ValueError(
                f"Resuming at step {state.global_step}, but the checkpoint holds no schedule state (scheduler.pt; "
                "was it written with save_only_model=True?): the LR sequence cannot be continued."
            )
        label_names = args.label_names if args.label_names is not None else find_labels(type(_unwrap(model)))
        driver.label_names = driver.label_names or label_names
        dataset = driver.held_out
        if dataset is not None and args.remove_unused_columns and hasattr(dataset, "column_names"):
            keep = set(model_columns(model, label_names))
            unused = [c for c in dataset.column_names if c not in keep]
            if unused:  # as the Trainer does with the training set
                driver.held_out = dataset.remove_columns(unused)
        loader = kwargs.get("train_dataloader")
        driver.start(model, optimizer, args, state.max_steps, loader)
        if not self.lr_before_backward:  # (under DeepSpeed, MLRSNetTrainer.compute_loss sets it)
            driver.hook_steps(optimizer, count_steps=False)  # the Trainer counts steps: lr_scheduler.step()
        self._run = {
            "args": args,
            "state": state,
            "model": _unwrap(model),
            "optimizer": optimizer,
            "train_dataset": getattr(loader, "dataset", None),
        }
        add_model_tags(model, self.schedule)  # Trainer.push_to_hub and model.push_to_hub put them in the card

    def update_model_card(self, output_dir: str | Path) -> None:
        """Add the library's tags and the ``schedule:`` reference to the card ``trainer.create_model_card()`` wrote.

        A plain ``Trainer`` builds its card from its arguments alone, so call this after ``create_model_card``
        (``push_to_hub`` writes a new card: upload the folder yourself, or use MLRSNetTrainer, whose card has both).
        """
        update_model_card(
            output_dir,
            self.schedule,
            meta_train=self.lr_scheduler.options.meta_train,
            saved_to=self.saved_schedule,
            range_test=getattr(self.lr_scheduler, "range_test", None),
        )

    def _record(self) -> dict[str, Any]:
        if self._run is None:
            raise RuntimeError("Nothing to save yet: the schedule is saved after (or during) trainer.train().")
        return publishing.run_record(self.lr_scheduler, **self._run)

    def save_schedule(
        self, save_directory: str | Path, meta_training: dict[str, Any] | None = None, trajectory: bool | None = None
    ) -> None:
        """Write the schedule as :meth:`MLRSNetTrainer.save_schedule <mlrsnet_hf.MLRSNetTrainer.save_schedule>` does
        (after meta-training, by default its trajectory, with the run's record); the same run writes the same repo."""
        record = self._record()
        if self._run["args"].should_save:
            self.saved_schedule = publishing.save_schedule(
                self.lr_scheduler, save_directory, record, meta_training, trajectory
            )

    def push_schedule_to_hub(
        self, repo_id: str, meta_training: dict[str, Any] | None = None, trajectory: bool | None = None, **kwargs: Any
    ) -> Any:
        """Upload what :meth:`save_schedule` writes to ``repo_id`` (``kwargs`` as for ``MLRSNetSchedule.push_to_hub``)."""
        commit, self.saved_schedule = publishing.push_schedule_to_hub(
            self.lr_scheduler, repo_id, self._record(), meta_training, trajectory, **kwargs
        )
        return commit

    def on_train_end(self, args, state, control, **kwargs):
        self.lr_scheduler.finish()
