"""``MLRSNetTrainer``: a ``transformers.Trainer`` whose LR is set by an MLR-SNet schedule, learned online or transferred."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import reduce
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from transformers import Trainer, TrainerCallback

from .callback import ControllerDriver, ScheduleController, probe_batch
from .config import LR_LINEAR_OPTIMIZERS, MLRSNetConfig
from .hub import load_any_schedule
from .lr_controller import LRController
from .meta_gradient import MetaBatches, lr_derivatives, meta_loss, step_delta
from .network import MLRSNetState
from .schedule import MLRSNetSchedule

logger = logging.getLogger(__name__)


class MLRSNetLR(LRScheduler):
    """The Trainer's ``lr_scheduler``: reports the schedule's LR and carries its state in ``scheduler.pt``.

    The LR itself is set before ``optimizer.step()`` by the trainer's hooks; ``step()`` only counts.
    ``state_dict()`` holds the schedule (weights, stage, LSTM state, gammas), the meta-optimizer state,
    the meta-data position, the steps of the current meta horizon and the trajectory snapshots taken so
    far, as tensors and plain data (the Trainer reloads it with ``weights_only=True``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, trainer: MLRSNetTrainer) -> None:
        self.trainer = trainer
        super().__init__(optimizer)

    def get_last_lr(self) -> list[float]:
        """The LR of the current optimizer step (what the Trainer logs), set just before ``optimizer.step()``."""
        return self.get_lr()

    def get_lr(self) -> list[float]:
        return list(self.trainer.controller.last_lrs) or [group["lr"] for group in self.optimizer.param_groups]

    def step(self, epoch: int | None = None) -> None:
        self.last_epoch += 1
        self._last_lr = self.get_lr()

    def state_dict(self) -> dict[str, Any]:
        trainer = self.trainer
        state = {
            "last_epoch": self.last_epoch,
            "schedule": trainer.schedule.state_dict(),
            "last_lrs": list(trainer.controller.last_lrs),
            "lr_history": list(trainer.controller.lr_history),
        }
        if isinstance(trainer.controller, ControllerDriver):
            state["controller_runtime"] = trainer.controller.runtime_state()
        if trainer.meta_optimizer is not None:
            state["meta_optimizer"] = trainer.meta_optimizer.state_dict()
            state["meta_batches"] = trainer.meta_batches.state_dict()
            # on the CPU: a resume may run on other devices (the deltas go back to theirs when used)
            state["horizon"] = [{**e, "delta": [d.cpu() for d in e["delta"]]} for e in trainer._horizon]
            state["snapshots"] = [dict(snapshot) for snapshot in trainer.snapshots]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        trainer = self.trainer
        trainer._schedule_restored = True
        self.last_epoch = state["last_epoch"]
        trainer.schedule.load_state_dict(state["schedule"])
        trainer.controller.last_lrs = list(state["last_lrs"])
        trainer.controller.lr_history = list(state["lr_history"])
        self._last_lr = list(state["last_lrs"])
        if isinstance(trainer.controller, ControllerDriver):
            if "controller_runtime" not in state:
                raise ValueError("The checkpoint was not written with an LR controller: cannot resume with one.")
            trainer.controller.load_runtime_state(state["controller_runtime"])
        if trainer.meta_optimizer is not None:
            if "meta_optimizer" not in state:
                raise ValueError(
                    "The checkpoint was written without meta-training: cannot resume with meta_train=True."
                )
            trainer.meta_optimizer.load_state_dict(state["meta_optimizer"])
            trainer.meta_batches.load_state_dict(state["meta_batches"])
            trainer._horizon = [dict(entry) for entry in state.get("horizon", [])]
            trainer.snapshots = [dict(snapshot) for snapshot in state.get("snapshots", [])]


class _MLRSNetHooks(TrainerCallback):
    """Connects the Trainer's loop events to :class:`MLRSNetTrainer` (internal; state lives in ``scheduler.pt``)."""

    def __init__(self, trainer: MLRSNetTrainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step > 0 and not self.trainer._schedule_restored:
            raise ValueError(
                f"Resuming at step {state.global_step}, but the checkpoint holds no schedule state (scheduler.pt; "
                "was it written with save_only_model=True?): the LR sequence cannot be continued."
            )
        self.trainer.controller.attach(model)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._before_optimizer_step(state.global_step)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._after_optimizer_step(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer.controller.detach()
        self.trainer._horizon, self.trainer._weights_before = [], None  # unused deltas (a final partial horizon)


class MLRSNetTrainer(Trainer):
    """``Trainer`` with MLR-SNet: transfer a learned schedule, or meta-train one online (``args.meta_train``).

    Args:
        model, args, ...: as for ``transformers.Trainer``; ``args`` is an :class:`MLRSNetConfig`.
        meta_dataset: held-out data for meta-training (the paper's meta/validation set); with an LR
            controller, the held-out examples it observes (default: ``eval_dataset``).
        schedule: an :class:`MLRSNetSchedule` or a PPO-trained :class:`LRController` (or the directory or
            Hub id of either) to use instead of ``args.schedule``.

    ``trainer.schedule`` is the schedule in use; ``save_schedule``/``push_schedule_to_hub`` write it as a
    schedule repo recording what it was trained on. After meta-training they write, by default, a
    *trajectory* schedule: one stage per network recorded at ``args.snapshot_fractions`` of the run
    (``trainer.snapshots``), played in equal parts of a later run, as the released recipe does.
    """

    _tag_names = ["mlrsnet", "learning-rate-schedule"]
    _name = "MLR-SNet"
    _paper = {"title": "MLR-SNet: Transferable LR Schedules for Heterogeneous Tasks", "id": "2007.14546"}

    def __init__(
        self,
        model: nn.Module | None = None,
        args: MLRSNetConfig | None = None,
        *,
        meta_dataset: Any = None,
        schedule: MLRSNetSchedule | LRController | str | Path | None = None,
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
                    schedule = MLRSNetSchedule(
                        hidden_size=args.schedule_hidden_size, num_stages=args.schedule_num_stages, gamma=1.0
                    )
            else:
                raise ValueError(
                    "Transfer mode (meta_train=False) needs a learned schedule: set args.schedule to a directory "
                    "or Hub repo id, pass schedule=, or set meta_train=True to learn one."
                )
        if isinstance(schedule, LRController) and args.meta_train:
            raise ValueError(
                "An LRController is trained with PPO (mlrsnet_hf.controller_env.train_controller), not meta-trained "
                "online: use it with meta_train=False."
            )
        if args.meta_train and meta_dataset is None:
            raise ValueError("meta_train=True needs meta_dataset: held-out training data for the meta updates.")
        if (kwargs.get("optimizers") or (None, None))[1] is not None:
            raise ValueError(
                "MLRSNetTrainer sets the learning rate itself: pass optimizers=(optimizer, None), without a scheduler."
            )
        if args.save_only_model:
            logger.warning(
                "save_only_model=True: checkpoints will not hold the schedule's state (scheduler.pt), so a run "
                "cannot be resumed from them with the same LR sequence."
            )
        super().__init__(model=model, args=args, **kwargs)
        self.schedule = schedule
        if isinstance(schedule, LRController):
            self.controller: ScheduleController | ControllerDriver = ControllerDriver(schedule)
        else:
            self.controller = ScheduleController(
                schedule,
                gamma=args.gamma,
                num_classes=args.num_classes,
                input_normalization=args.input_normalization,
                relative_max_scale=args.relative_max_scale,
                auto_gamma_batches=args.auto_gamma_batches,
                range_test_steps=args.range_test_steps,
                range_test_min_lr=args.range_test_min_lr,
                range_test_max_lr=args.range_test_max_lr,
                range_test_rule=args.range_test_rule,
            )
        self.meta_dataset = meta_dataset
        self.meta_optimizer: torch.optim.Optimizer | None = None
        self.meta_batches: MetaBatches | None = None
        self._weights_before: list[torch.Tensor] | None = None
        self._horizon: list[dict[str, Any]] = []  # the steps of the current meta horizon (inputs, LR, w_s - w_{s+1})
        self.snapshots: list[dict[str, Any]] = []  # {"step", "weights"}: the network at snapshot_fractions of the run
        self._snapshot_steps: list[int] = []
        self._meta_losses: list[float] = []
        self.last_hypergradient: dict[str, torch.Tensor] | None = None
        self._schedule_restored = False
        self.add_callback(_MLRSNetHooks(self))

    # ------------------------------------------------------------ set-up
    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> LRScheduler:
        if self.lr_scheduler is None:
            optimizer = optimizer or self.optimizer
            self._schedule_restored = False
            if isinstance(self.controller, ControllerDriver):
                self.controller.probe = self._controller_probe()
            self.controller.configure(
                self.model,
                optimizer,
                self.args.learning_rate,
                num_training_steps,
                max_grad_norm=self.args.max_grad_norm,
            )
            if self.args.meta_train:
                self._setup_meta_training(optimizer, num_training_steps)
            self.lr_scheduler = MLRSNetLR(optimizer, self)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def _controller_probe(self) -> dict[str, torch.Tensor]:
        dataset = self.meta_dataset if self.meta_dataset is not None else self.eval_dataset
        if isinstance(dataset, dict):
            raise ValueError("With several eval datasets, pass meta_dataset= for the LR controller to observe.")
        if dataset is None:
            raise ValueError("The LR controller observes the validation loss: pass meta_dataset= (held-out data).")
        if hasattr(dataset, "column_names"):
            dataset = self._remove_unused_columns(dataset, description="probe")
        collate = self._get_collator_with_removed_columns(self.data_collator, description="probe")
        return probe_batch(dataset, self.schedule.probe_size, collate)

    def _setup_meta_training(self, optimizer: torch.optim.Optimizer, num_training_steps: int) -> None:
        inner = getattr(optimizer, "optimizer", optimizer)
        if type(inner).__name__ not in LR_LINEAR_OPTIMIZERS:
            raise ValueError(
                f"Meta-training reads the update direction off the real step, which needs an optimizer whose update "
                f"is linear in the LR ({', '.join(LR_LINEAR_OPTIMIZERS)}); got {type(inner).__name__}."
            )
        self.schedule.train()
        self._horizon, self.snapshots = [], []
        # The global step after which each snapshot is taken (at least 1: after the first step).
        self._snapshot_steps = [max(1, round(f * num_training_steps)) for f in self.args.snapshot_fractions or []]
        self.meta_optimizer = torch.optim.Adam(
            self.schedule.parameters(), lr=self.args.meta_learning_rate, weight_decay=self.args.meta_weight_decay
        )
        dataset = self.meta_dataset
        if hasattr(dataset, "column_names"):  # a datasets.Dataset: drop the columns the model does not take
            dataset = self._remove_unused_columns(dataset, description="meta")
        collate = self._get_collator_with_removed_columns(self.data_collator, description="meta")
        if len(dataset) > 0 and self.label_names:  # caught now, not at the first meta update
            example = collate([dataset[0]])
            if not all(example.get(name) is not None for name in self.label_names):
                raise ValueError(
                    f"The meta dataset's batches carry no {self.label_names}: the meta loss needs labels "
                    f"(got the keys {sorted(example)})."
                )
        self.meta_batches = MetaBatches(
            dataset,
            batch_size=self.args.meta_batch_size or self.args.per_device_train_batch_size,
            collate_fn=collate,
            seed=self.args.seed,
            rank=self.accelerator.process_index,
            world_size=self.accelerator.num_processes,
        )

    # ------------------------------------------------------- the loop
    def _is_meta_step(self, step: int) -> bool:
        return self.args.meta_train and (step + 1) % self.args.meta_update_interval == 0

    def _in_meta_horizon(self, step: int) -> bool:
        """Whether step ``step``'s LR is differentiated at the next meta update (the last ``meta_horizon`` steps)."""
        interval = self.args.meta_update_interval
        return self.args.meta_train and step % interval >= interval - self.args.meta_horizon

    def _before_optimizer_step(self, step: int) -> None:
        self.controller.before_optimizer_step(
            step,
            self.optimizer,
            self.model,
            self.callback_handler.train_dataloader,
            self.args.device,
            average_tokens_across_devices=self.args.average_tokens_across_devices,
        )
        if self._in_meta_horizon(step) and self.controller.last_step is not None:
            # w_s, to read the update direction off the real step: one parameter-sized buffer per horizon step.
            self._weights_before = [p.detach().clone() for p in self._trainable_parameters()]

    def _after_optimizer_step(self, step: int) -> None:
        before, self._weights_before = self._weights_before, None
        if before is not None:
            if self.accelerator.optimizer_step_was_skipped or self.schedule.last_lr == 0.0:
                del before  # no step was taken (e.g. fp16 overflow): nothing to learn from this one
            else:
                inputs = self.controller.last_step
                self._horizon.append(
                    {
                        "stage": inputs["stage"],
                        "h": inputs["state"].h,
                        "c": inputs["state"].c,
                        "loss": inputs["loss"],
                        "lr": self.schedule.last_lr,
                        "delta": step_delta(before, self._trainable_parameters()),
                    }
                )
        if self._is_meta_step(step):
            horizon, self._horizon = self._horizon, []
            if horizon and not self.accelerator.optimizer_step_was_skipped:
                self._meta_update(horizon)
        if self.args.meta_train:
            while (
                len(self.snapshots) < len(self._snapshot_steps)
                and step + 1 >= self._snapshot_steps[len(self.snapshots)]
            ):
                network = self.schedule.stages[max(self.schedule.stage, 0)]
                weights = {k: v.detach().clone() for k, v in network.state_dict().items()}
                self.snapshots.append({"step": step + 1, "weights": weights})

    def _meta_update(self, horizon: list[dict[str, Any]]) -> None:
        """One update of the schedule: the meta loss at ``w_{T+1}``, differentiated through the horizon's LRs."""
        params = self._trainable_parameters()
        for p in params:
            p.grad = None  # the training gradients are spent; free them before the meta backward
        batch = self._prepare_inputs(self.meta_batches.next())
        with self.controller.paused(), self.compute_loss_context_manager():
            loss = meta_loss(self.model, batch)
        dlrs = lr_derivatives(loss, params, [e["delta"] for e in horizon], [e["lr"] for e in horizon])
        for entry in horizon:
            del entry["delta"]
        mean_loss = loss.detach().float()
        if self.accelerator.num_processes > 1:
            # the same hypergradient, hence the same theta, on every rank
            dlrs, mean_loss = reduce(dlrs, reduction="mean"), reduce(mean_loss, reduction="mean")
        if not (torch.isfinite(dlrs).all() and torch.isfinite(mean_loss)):
            logger.warning("Non-finite meta loss or meta-gradient (%s): skipping this meta update.", mean_loss.item())
            return
        self.meta_optimizer.zero_grad(set_to_none=True)
        lrs = torch.stack(
            [self.schedule.lr_at(e["loss"], MLRSNetState(e["h"], e["c"]), e["stage"]).reshape(()) for e in horizon]
        )
        lrs.backward(dlrs.to(device=lrs.device, dtype=lrs.dtype))
        self.last_hypergradient = {
            n: p.grad.detach().clone() for n, p in self.schedule.named_parameters() if p.grad is not None
        }
        self.meta_optimizer.step()
        self._meta_losses.append(mean_loss.item())

    def _trainable_parameters(self) -> list[torch.Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._meta_losses:
            logs["meta_loss"] = sum(self._meta_losses) / len(self._meta_losses)
            self._meta_losses = []
        if getattr(self.schedule, "stage", -1) >= 0 and "loss" in logs:
            logs["schedule_stage"] = self.schedule.stage
        super().log(logs, start_time)

    # ------------------------------------------------------- outputs
    def meta_training_record(self) -> dict[str, Any]:
        """What this run trained: dataset, model, epochs, optimizer, final metrics (for config.json and the card)."""
        model = self.accelerator.unwrap_model(self.model)
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)
        record: dict[str, Any] = {
            "model": getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__,
            "epochs": round(float(self.state.epoch or 0), 3),
            "max_steps": self.state.max_steps,
            "optimizer": type(optimizer).__name__ if optimizer is not None else self.args.optim,
            "learning_rate": self.args.learning_rate,
            "weight_decay": self.args.weight_decay,
            "per_device_train_batch_size": self.args.per_device_train_batch_size,
            "meta_update_interval": self.args.meta_update_interval,
            "meta_horizon": self.args.meta_horizon,
            "meta_learning_rate": self.args.meta_learning_rate,
            "meta_weight_decay": self.args.meta_weight_decay,
            "num_classes": self.schedule.num_classes,
        }
        dataset = getattr(self.train_dataset, "info", None)
        if dataset is not None and getattr(dataset, "dataset_name", None):
            record["dataset"] = dataset.dataset_name
        metrics = {}
        for entry in self.state.log_history:
            metrics.update(
                {
                    k[len("eval_") :]: v
                    for k, v in entry.items()
                    if k.startswith("eval_") and isinstance(v, (int, float))
                }
            )
        for key in ("runtime", "samples_per_second", "steps_per_second", "epoch"):
            metrics.pop(key, None)
        if metrics:
            record["results"] = metrics
        return record

    def trajectory_schedule(self) -> MLRSNetSchedule:
        """The schedule's trajectory: one stage per snapshot network, played in equal parts of a run.

        Snapshots not yet taken (a run stopped early) are replaced by the current network, once.
        """
        current = self.schedule
        weights = [s["weights"] for s in self.snapshots]
        if len(weights) < len(self._snapshot_steps):
            weights.append(current.stages[max(current.stage, 0)].state_dict())
        schedule = MLRSNetSchedule(
            hidden_size=current.hidden_size,
            num_layers=current.num_layers,
            gate_layout=current.gate_layout,
            num_stages=len(weights),
            gamma=current.gamma,
            input_normalization=current.input_normalization,
            relative_max_scale=current.relative_max_scale,
            meta_training=copy.deepcopy(current.meta_training),
        ).to(dtype=current.stages[0].head.weight.dtype)
        for stage, state in zip(schedule.stages, weights, strict=True):
            stage.load_state_dict(state)
        schedule.meta_training["snapshots"] = {
            "fractions": list(self.args.snapshot_fractions)[: len(self.snapshots)],
            "steps": [s["step"] for s in self.snapshots],
        }
        return schedule

    def _schedule_to_publish(
        self, meta_training: dict[str, Any] | None, trajectory: bool | None = None
    ) -> MLRSNetSchedule | LRController:
        """A copy of the schedule in use (or its trajectory), recording what it was trained on (after meta-training)."""
        if trajectory is None:
            trajectory = bool(self.args.meta_train and self._snapshot_steps)
            if trajectory and self.schedule.num_stages > 1:
                logger.warning(
                    "The meta-trained schedule has %d stages: saving it as it is. save_schedule(trajectory=True) "
                    "writes the snapshots instead (each the network of the stage in use when it was taken).",
                    self.schedule.num_stages,
                )
                trajectory = False
        if trajectory and not (self.args.meta_train and self._snapshot_steps):
            raise ValueError("trajectory=True needs a meta-training run with snapshot_fractions set.")
        schedule = self.trajectory_schedule() if trajectory else copy.deepcopy(self.schedule)
        if isinstance(schedule, LRController):
            schedule.training_run.update(meta_training or {})
        elif self.args.meta_train:
            snapshots = schedule.meta_training.get("snapshots") if trajectory else None  # not an older run's
            schedule.meta_training = {**self.meta_training_record(), **(meta_training or {})}
            if snapshots is not None:
                schedule.meta_training["snapshots"] = snapshots
        elif meta_training:
            schedule.meta_training.update(meta_training)
        return schedule

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
            self._schedule_to_publish(meta_training, trajectory).save_pretrained(
                save_directory, model_card_kwargs={"lr_history": list(self.controller.lr_history)}
            )

    def push_schedule_to_hub(
        self, repo_id: str, meta_training: dict[str, Any] | None = None, trajectory: bool | None = None, **kwargs: Any
    ) -> str:
        """Upload what ``save_schedule`` writes to ``repo_id`` (``kwargs`` as for ``MLRSNetSchedule.push_to_hub``)."""
        return self._schedule_to_publish(meta_training, trajectory).push_to_hub(
            repo_id, model_card_kwargs={"lr_history": list(self.controller.lr_history)}, **kwargs
        )
