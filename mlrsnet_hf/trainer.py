"""``MLRSNetTrainer``: a ``transformers.Trainer`` whose LR is set by an MLR-SNet schedule, learned online or transferred."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import Trainer

from . import publishing
from .callback import MLRSNetCallback
from .config import MLRSNetConfig
from .driver import LRDriver
from .engines import check_deepspeed_config, check_deepspeed_meta_training, deepspeed_config
from .families import default_family, family_of
from .hub import load_any_schedule
from .options import ScheduleOptions
from .provenance import add_model_tags, model_tags, update_model_card
from .state_checks import CheckpointStateError

if TYPE_CHECKING:
    from .mlrsnet.meta_training import MetaLearner

logger = logging.getLogger(__name__)


class MLRSNetTrainer(Trainer):
    """``Trainer`` with MLR-SNet: transfer a learned schedule, or meta-train one online (``args.meta_train``).

    Args:
        model, args, ...: as for ``transformers.Trainer``; ``args`` is an :class:`MLRSNetConfig`.
        meta_dataset: held-out data for meta-training (the paper's meta/validation set); with an LR
            controller, the held-out examples it observes (default: ``eval_dataset``).
        schedule: a schedule of any registered family (an :class:`MLRSNetSchedule`, a PPO-trained
            :class:`LRController`, ...; or the directory or
            Hub id of either) to use instead of ``args.schedule``.

    ``trainer.schedule`` is the schedule in use; ``save_schedule``/``push_schedule_to_hub`` write it as a
    schedule repo recording what it was trained on. After meta-training they write, by default, a
    *trajectory* schedule: one stage per network recorded at ``args.snapshot_fractions`` of the run
    (``trainer.snapshots``), played in equal parts of a later run, as the released recipe does.

    The LR of each step is set in the optimizer's step pre-hook, as in any loop (:mod:`mlrsnet_hf.loop`). Under
    DeepSpeed (ZeRO 1-3), which steps the optimizer inside the last micro-batch's backward, it is set between that
    micro-batch's forward (its loss completes the step's loss) and its backward (:meth:`compute_loss`); a DeepSpeed
    ``"scheduler"`` or ``"optimizer"`` block and meta-training are refused (:mod:`mlrsnet_hf.engines`).

    The trained model's card (``create_model_card``, ``push_to_hub``) carries the library's tags and a ``schedule:``
    reference to the schedule used (:mod:`mlrsnet_hf.provenance`).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        args: MLRSNetConfig | None = None,
        *,
        meta_dataset: Any = None,
        schedule: Any = None,
        **kwargs: Any,
    ) -> None:
        if args is None:
            args = MLRSNetConfig(output_dir="trainer_output", schedule=None, meta_train=True)
        if not isinstance(args, MLRSNetConfig):
            raise TypeError(
                f"args must be an MLRSNetConfig (a TrainingArguments subclass), got {type(args).__name__}."
            )
        if isinstance(schedule, (str, Path)):
            schedule = load_any_schedule(str(schedule))
        if schedule is None:
            if args.schedule is not None:
                schedule = load_any_schedule(args.schedule)
            elif args.meta_train:
                with torch.random.fork_rng(devices=[]):  # seeded by args.seed, without touching the caller's stream
                    torch.manual_seed(args.seed)
                    schedule = default_family().new_schedule(args)
            else:
                raise ValueError(
                    "Transfer mode (meta_train=False) needs a learned schedule: set args.schedule to a directory "
                    "or Hub repo id, pass schedule=, or set meta_train=True to learn one."
                )
        family = family_of(schedule)
        if (kwargs.get("optimizers") or (None, None))[1] is not None:
            raise ValueError(
                "MLRSNetTrainer sets the learning rate itself: pass optimizers=(optimizer, None), without a scheduler."
            )
        if args.save_only_model:
            logger.warning(
                "save_only_model=True: checkpoints will not hold the schedule's state (scheduler.pt), so a run "
                "cannot be resumed from them with the same LR sequence."
            )
        held_out = meta_dataset
        if held_out is None and family.held_out_defaults_to_eval:
            held_out = kwargs.get("eval_dataset")
            if isinstance(held_out, dict):
                raise ValueError("With several eval datasets, pass meta_dataset= for the schedule to observe.")
        callback = MLRSNetCallback(schedule, meta_dataset=held_out, **ScheduleOptions.set_in(args))
        super().__init__(model=model, args=args, **kwargs)
        self.schedule = schedule
        self.meta_dataset = meta_dataset
        self.mlrsnet_callback = callback
        self.saved_schedule: dict[str, Any] | None = None  # where save_schedule / push_schedule_to_hub wrote it
        self.add_callback(callback)  # after those given: it acts at the run's start and end (the LR: a step hook)
        if self.is_deepspeed_enabled:
            check_deepspeed_config(deepspeed_config(self.args))
            check_deepspeed_meta_training(args.meta_train)
            callback.lr_before_backward = True  # DeepSpeed steps inside backward: compute_loss sets the LR
        add_model_tags(self.model, schedule)  # as TRL does: push_to_hub puts model.model_tags in the card
        # compute_loss hands the model's outputs to the loss meter (a forward hook would slow every call of the
        # model), unless a subclass computes the loss its own way or DeepSpeed splits sequences: then a hook reads it.
        parallel = getattr(self.accelerator, "parallelism_config", None)
        if type(self).compute_loss is MLRSNetTrainer.compute_loss and not getattr(parallel, "sp_enabled", False):
            callback.lr_scheduler.loss_from_forward_hook = False

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> LRDriver:
        """The schedule's driver is the ``lr_scheduler``; the held-out set is prepared as the Trainer prepares its data."""
        driver = self.mlrsnet_callback.lr_scheduler
        if self.lr_scheduler is None:
            if driver.held_out is not None:
                if hasattr(driver.held_out, "column_names"):  # a datasets.Dataset: drop the columns the model ignores
                    driver.held_out = self._remove_unused_columns(driver.held_out, description="held-out")
                driver.held_out_collate_fn = self._get_collator_with_removed_columns(
                    self.data_collator, description="held-out"
                )
            driver.label_names = self.label_names
            self.lr_scheduler = driver
        return self.lr_scheduler

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """``Trainer.compute_loss``; the model's loss of a training forward goes to the schedule's loss meter, and
        under DeepSpeed, after the last micro-batch's forward, the LR of this step is set.

        DeepSpeed takes the optimizer step inside that micro-batch's backward (``accelerator.backward``), on its own
        optimizer, which steps the torch one once per parameter group: no step hook of the torch optimizer marks the
        step once. The step's loss is complete here: the forward has just run.
        """
        callback = self.mlrsnet_callback
        driver = callback.lr_scheduler
        # label_smoothing_factor / compute_loss_func: the Trainer takes the labels and computes the loss itself
        outside = (self.label_smoother is not None or self.compute_loss_func is not None) and "labels" in inputs
        if outside and model.training:
            with driver.meter.paused():  # the model's own output holds no training loss then
                loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
            partial = num_items_in_batch is not None
            # Trainer.compute_loss multiplied the loss by the processes under these conditions, as a model's own
            scaled = (
                self.args.average_tokens_across_devices
                and (self.model_accepts_loss_kwargs or self.compute_loss_func is not None)
                and partial
            )
            scale = self.accelerator.num_processes // self.get_tp_size() if self.args.n_gpu <= 1 else self.args.n_gpu
            driver.meter.record({"loss": loss / scale if scaled and scale != 1 else loss}, partial=partial)
            result = (loss, outputs) if return_outputs else loss
        elif driver.loss_from_forward_hook:
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        else:
            result = super().compute_loss(model, inputs, True, num_items_in_batch)
            if model.training:  # what the hook would record: the model's own loss, and whether it is a part of a sum
                partial = self.model_accepts_loss_kwargs and num_items_in_batch is not None
                driver.meter.record(result[1], partial=partial)
            result = result if return_outputs else result[0]
        if (
            callback.lr_before_backward
            and model.training
            and torch.is_grad_enabled()
            and self.accelerator.sync_gradients
        ):
            driver.prepare_step(self.state.global_step)
        return result

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """The Trainer's resume; a ``scheduler.pt`` that cannot be read, or holds bad values, is named."""
        if checkpoint is not None and isinstance(self.lr_scheduler, LRDriver):
            path = os.path.join(checkpoint, "scheduler.pt")
            self.lr_scheduler.checkpoint_name = path
            if os.path.isfile(path):
                try:
                    torch.load(path, weights_only=True)
                except Exception as e:  # truncated, not a torch file, or holding objects weights_only refuses
                    raise CheckpointStateError(f"{path} cannot be read (truncated or not a checkpoint?): {e}") from e
        super()._load_optimizer_and_scheduler(checkpoint)

    @property
    def meta_learner(self) -> MetaLearner | None:
        """The hypergradient step of this run (None before training, or without meta-training)."""
        return getattr(self.lr_scheduler, "meta", None)

    @property
    def snapshots(self) -> list[dict[str, Any]]:
        """``{"step", "weights"}``: the schedule's network recorded at ``args.snapshot_fractions`` of the run."""
        return self.meta_learner.snapshots if self.meta_learner is not None else []

    @property
    def last_hypergradient(self) -> dict[str, torch.Tensor] | None:
        """The gradient of the last meta update w.r.t. the schedule's weights (None before the first)."""
        return self.meta_learner.last_hypergradient if self.meta_learner is not None else None

    def _get_learning_rate(self) -> float | torch.Tensor:
        # The Trainer asks after every optimizer step but uses the answer only when it logs: hand over the LR
        # as it is (a device tensor in transfer mode with a tensor-LR optimizer); log() reads it, at logging
        # steps only.
        if isinstance(self.lr_scheduler, LRDriver) and self.lr_scheduler.last_lrs:
            return self.lr_scheduler.last_lrs[0]
        return super()._get_learning_rate()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if isinstance(self.lr_scheduler, LRDriver):
            self.lr_scheduler.sync()
        logs = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in logs.items()}
        meta = self.meta_learner
        if meta is not None and meta.losses:
            logs["meta_loss"] = sum(meta.losses) / len(meta.losses)
            meta.losses = []
        run = getattr(self.lr_scheduler, "run", None)  # (a family with stages)
        if run is not None and run.stage >= 0 and "loss" in logs:
            logs["schedule_stage"] = run.stage
        super().log(logs, start_time)

    # ------------------------------------------------------- outputs
    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
    ) -> None:
        """``Trainer.create_model_card``, with the library's tags and the ``schedule:`` reference in the metadata."""
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        tags += [t for t in model_tags(self.schedule) if t not in tags]
        super().create_model_card(
            language=language,
            license=license,
            tags=tags,
            model_name=model_name,
            finetuned_from=finetuned_from,
            tasks=tasks,
            dataset_tags=dataset_tags,
            dataset=dataset,
            dataset_args=dataset_args,
        )
        if self.is_world_process_zero():
            update_model_card(
                self.args.output_dir,
                self.schedule,
                meta_train=self.args.meta_train,
                saved_to=self.saved_schedule,
                range_test=getattr(self.mlrsnet_callback.lr_scheduler, "range_test", None),
            )

    def meta_training_record(self) -> dict[str, Any]:
        """What this run trained: dataset, model, epochs, optimizer, final metrics (for config.json and the card)."""
        return publishing.run_record(
            self.mlrsnet_callback.lr_scheduler,
            self.args,
            self.state,
            self.accelerator.unwrap_model(self.model),
            self.optimizer,
            self.train_dataset,
        )

    def trajectory_schedule(self) -> Any:
        """The schedule's trajectory: one stage per snapshot network, played in equal parts of a run.

        Snapshots not yet taken (a run stopped early) are replaced by the current network, once.
        """
        return self.mlrsnet_callback.lr_scheduler.published_schedule(trajectory=True)

    def save_schedule(
        self, save_directory: str | Path, meta_training: dict[str, Any] | None = None, trajectory: bool | None = None
    ) -> None:
        """Write the schedule in use as a schedule repo; after meta-training, record what it was trained on.

        ``meta_training`` adds to (or overrides) the automatic record, e.g. ``{"dataset": "uoft-cs/cifar10"}``.
        ``trajectory`` (default: True after meta-training with ``snapshot_fractions``) writes the networks
        recorded along the run as the stages of one schedule (:meth:`trajectory_schedule`); False writes the
        final network alone. The card embeds the LR curve actually used in this run.
        """
        if self.args.should_save:
            self.saved_schedule = publishing.save_schedule(
                self.mlrsnet_callback.lr_scheduler,
                save_directory,
                self.meta_training_record(),
                meta_training,
                trajectory,
            )

    def push_schedule_to_hub(
        self, repo_id: str, meta_training: dict[str, Any] | None = None, trajectory: bool | None = None, **kwargs: Any
    ) -> str:
        """Upload what ``save_schedule`` writes to ``repo_id`` (``kwargs`` as for ``MLRSNetSchedule.push_to_hub``)."""
        commit, self.saved_schedule = publishing.push_schedule_to_hub(
            self.mlrsnet_callback.lr_scheduler,
            repo_id,
            self.meta_training_record(),
            meta_training,
            trajectory,
            **kwargs,
        )
        return commit
