"""The paper's tasks as named presets, and the meta-train / transfer runs shared by the CLI and the examples.

    mlrsnet meta-train --task cifar10-resnet18 --output_dir OUT [--dataset ID_OR_DIR] [any MLRSNetConfig flag]
    mlrsnet transfer --task cifar100-wrn28-10 --schedule ID_OR_DIR --output_dir OUT [...]
    mlrsnet train-controller --task cifar10-resnet18 --output_dir OUT [--episodes 20 --episode_steps 1000 ...]

A preset fixes the data, the model and the recipe's training arguments (as parser defaults: every
flag given on the command line wins). ``meta-train`` writes a schedule repo to ``--output_dir``
(loadable with ``MLRSNetSchedule.from_pretrained``) with the trained task model in ``OUT/model``;
``transfer`` trains with a learned schedule. Both write ``metrics.json`` and plots of the LR and of
the metrics into ``--output_dir`` (``meta-train``: the LR in the schedule repo's ``lr_used.png``; ``transfer``:
``lr_curve.png``). ``train-controller`` trains a PPO LR controller on the preset's
data (episodes of child training with Adam, see :mod:`mlrsnet_hf.experiments.controller_env`) and writes it as a
schedule repo; ``transfer --schedule OUT`` then uses it (with ``--optim adamw_torch``, as it was trained).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Subset
from transformers import HfArgumentParser, Trainer, set_seed

from ..config import MLRSNetConfig
from ..families import family_of
from ..hub import load_any_schedule
from ..options import ScheduleOptions
from ..plotting import plot_lr_curve, plot_training_curves
from ..trainer import MLRSNetTrainer
from .corrupted_data import CORRUPTED_DATASETS, load_corrupted_dataset
from .data import load_image_dataset, load_ptb_lm
from .language_models import lstm_lm
from .metrics import accuracy_metrics, perplexity_metrics
from .presets import CURVE_DEFAULTS, PRESETS, ControllerArguments, TaskArguments, TaskPreset
from .presets import preset as task_preset
from .vision_models import cifar_net, wide_resnet

logger = logging.getLogger(__name__)


@dataclass
class Task:
    model: Any
    train: Any
    meta: Any
    test: Any
    compute_metrics: Any
    preprocess_logits_for_metrics: Any
    dataset_id: str
    num_classes: int
    corruption: dict[str, Any] | None = None  # robustness tasks: corruption, severity, meta-set size


def preset_model(preset: TaskPreset, num_classes: int) -> nn.Module:
    """A freshly initialised model of the preset (``num_classes``: labels, or the vocabulary size for PTB)."""
    if preset.model.startswith("lstm"):
        return lstm_lm(num_classes, num_layers=int(preset.model[-1]))
    return wide_resnet(num_classes) if preset.model == "wrn-28-10" else cifar_net(preset.model, num_classes)


def build_task(args: TaskArguments, training: MLRSNetConfig | None = None, needs_meta: bool = True) -> Task:
    """Data, model and metrics of a preset (``needs_meta=False``: PTB's meta split is neither loaded nor checked for
    overlap; the image sets keep theirs)."""
    preset = task_preset(args.task)
    if preset.dataset == "ptb":
        batch = training.per_device_train_batch_size if training else preset.training["per_device_train_batch_size"]
        eval_batch = training.per_device_eval_batch_size if training else preset.training["per_device_eval_batch_size"]
        chunks, vocab = load_ptb_lm(
            args.dataset,
            batch_size=batch,
            seq_len=args.seq_len,
            eval_batch_size=eval_batch,
            train_split=args.train_split,
            meta_split=args.meta_split if needs_meta else None,
            test_split=args.test_split,
        )
        model = preset_model(preset, len(vocab))
        compute, preprocess = perplexity_metrics()
        return Task(
            model,
            chunks["train"],
            chunks["meta"],
            chunks["test"],
            compute,
            preprocess,
            args.dataset or "ptb-text-only/ptb_text_only",
            len(vocab),
        )
    corruption = None
    if preset.dataset in CORRUPTED_DATASETS:
        if args.corruption is None:
            raise ValueError(f"{args.task} trains on one corruption: pass --corruption (e.g. gaussian_noise).")
        splits, spec = load_corrupted_dataset(
            preset.dataset, args.corruption, args.severity, args.dataset, args.clean_dataset, args.meta_per_class
        )
        dataset_id = args.dataset or CORRUPTED_DATASETS[preset.dataset].hub_id
        corruption = {"corruption": args.corruption, "severity": args.severity, "meta_set_size": len(splits["meta"])}
    else:
        splits, spec = load_image_dataset(preset.dataset, args.dataset, meta_size=args.meta_size)
        dataset_id = args.dataset or spec.hub_id
    compute, preprocess = accuracy_metrics()
    return Task(
        preset_model(preset, spec.num_classes),
        splits["train"],
        splits.get("meta"),
        splits["test"],
        compute,
        preprocess,
        dataset_id,
        spec.num_classes,
        corruption,
    )


def parse(argv: Sequence[str], meta_train: bool) -> tuple[TaskArguments, MLRSNetConfig]:
    """Parse ``TaskArguments`` and ``MLRSNetConfig``, with the preset's recipe as defaults."""
    if "-h" in argv or "--help" in argv:  # every flag, not only the task's: the full parser prints its help
        HfArgumentParser((TaskArguments, MLRSNetConfig)).parse_args_into_dataclasses(argv)
    task_args, _ = HfArgumentParser(TaskArguments).parse_args_into_dataclasses(argv, return_remaining_strings=True)
    recipe = dict(task_preset(task_args.task).training)
    optim = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--optim"), recipe.get("optim", "sgd"))
    if not optim.startswith("sgd") and "--gamma" not in argv:
        # The recipe's gamma is an SGD learning rate: with another optimizer the library's documented
        # fallback applies (gamma="relative", with a warning: --learning_rate sets the scale).
        recipe.pop("gamma", None)
    parser = HfArgumentParser((TaskArguments, MLRSNetConfig))
    parser.set_defaults(**CURVE_DEFAULTS, **recipe, meta_train=meta_train, report_to="none")
    task_args, training = parser.parse_args_into_dataclasses(argv)
    return task_args, training


def run(argv: Sequence[str] | None = None, meta_train: bool = True) -> dict[str, Any]:
    """Meta-train (``meta_train=True``) or transfer a schedule on a preset task; returns the final metrics."""
    argv = list(sys.argv[1:] if argv is None else argv)
    task_args, training = parse(argv, meta_train)
    if not meta_train and training.schedule is None:
        raise ValueError(
            "transfer needs --schedule: a schedule directory, a zoo schedule shipped with the package (e.g. "
            "mlrsnet_hf/ptb-lstm-200; mlrsnet_hf.zoo_names() lists them) or a Hub repo id."
        )
    schedule, without_options = None, False
    if not meta_train:
        schedule = load_any_schedule(training.schedule)
        without_options = family_of(schedule).driver_class.options_class is None
        if without_options:
            # A family without run options (the LR controller): the preset's recipe gamma and normalisation are
            # MLR-SNet's, not the user's; only options given on the command line reach it (and are refused).
            defaults = ScheduleOptions()
            for name in (f.name for f in dataclasses.fields(ScheduleOptions)):
                if f"--{name}" not in argv:
                    setattr(training, name, getattr(defaults, name))
    set_seed(training.seed)
    # the meta split: MLR-SNet's meta updates, or the probe batches of a family without run options (the LR
    # controller); a transferred MLR-SNet schedule does not read it
    needs_meta = meta_train or without_options
    task = build_task(task_args, training, needs_meta)
    if task_args.max_eval_samples is not None:
        n = min(task_args.max_eval_samples, len(task.test))
        task.test = task.test.select(range(n)) if hasattr(task.test, "select") else Subset(task.test, range(n))
    preset = PRESETS[task_args.task]
    if meta_train and preset.meta_updates_per_epoch and "--meta_update_interval" not in argv:
        steps_per_epoch = math.ceil(
            len(task.train) / (training.per_device_train_batch_size * training.gradient_accumulation_steps)
        )
        training.meta_update_interval = max(1, steps_per_epoch // preset.meta_updates_per_epoch)
    trainer = MLRSNetTrainer(
        model=task.model,
        args=training,
        train_dataset=task.train,
        eval_dataset=task.test,
        meta_dataset=task.meta if needs_meta else None,
        schedule=schedule,
        compute_metrics=task.compute_metrics,
        preprocess_logits_for_metrics=task.preprocess_logits_for_metrics,
    )
    trainer.train(resume_from_checkpoint=checkpoint_to_resume(training.resume_from_checkpoint))
    metrics = trainer.evaluate()
    out = Path(training.output_dir)
    if trainer.is_world_process_zero():
        out.mkdir(parents=True, exist_ok=True)
        record = {"task": task_args.task, **(task.corruption or {}), **metrics}
        record["learning_rates"] = trainer.lr_scheduler.lr_history
        (out / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
        if not meta_train:  # (meta-training writes the same picture as the schedule repo's lr_used.png)
            plot_lr_curve(trainer.lr_scheduler.lr_history, out / "lr_curve.png")
        what = "meta-training MLR-SNet" if meta_train else f"transfer of {training.schedule}"
        plot_training_curves(
            trainer.state.log_history,
            out / "training_curves.png",
            title=f"{task_args.task}: {what}",
            eval_split=eval_split_name(task_args),
        )
    if meta_train:
        record = {
            "dataset": task_args.record_dataset or task.dataset_id,
            "task": task_args.task,
            "model": preset.model,
            "num_classes": task.num_classes,
            "eval_split": eval_split_name(task_args),  # the results' split, on the card
            **(task.corruption or {}),
        }
        trainer.save_schedule(out, meta_training=record)
        if trainer.is_world_process_zero():
            trainer.save_model(str(out / "model"))
    return metrics


def eval_split_name(args: TaskArguments) -> str:
    """The split the run's results are measured on: PTB's ``--test_split``, the images' test split; truncated
    by ``--max_eval_samples``, e.g. ``"test (first 40 examples)"``."""
    name = args.test_split if PRESETS[args.task].dataset == "ptb" else "test"
    return name if args.max_eval_samples is None else f"{name} (first {args.max_eval_samples} examples)"


def run_baseline(argv: Sequence[str], lr_scheduler_type: str = "cosine") -> dict[str, Any]:
    """A hand-designed schedule on a preset task (a plain ``Trainer``, ``lr_scheduler_type``); the final metrics.

    The preset's data, model and recipe as for :func:`run`; the schedule flags are ignored and
    ``--learning_rate`` is the schedule's peak LR.
    """
    task_args, training = parse(list(argv), meta_train=False)
    training.lr_scheduler_type = lr_scheduler_type
    set_seed(training.seed)
    task = build_task(task_args, training, needs_meta=False)
    trainer = Trainer(
        model=task.model,
        args=training,
        train_dataset=task.train,
        eval_dataset=task.test,
        compute_metrics=task.compute_metrics,
        preprocess_logits_for_metrics=task.preprocess_logits_for_metrics,
    )
    trainer.train(resume_from_checkpoint=checkpoint_to_resume(training.resume_from_checkpoint))
    return trainer.evaluate()


def checkpoint_to_resume(value: str | None) -> str | bool | None:
    """``--resume_from_checkpoint``: a checkpoint directory, or ``true``/``last`` for the last one in
    ``--output_dir`` (as ``Trainer.train(resume_from_checkpoint=True)``)."""
    return True if value is not None and value.lower() in ("true", "last") else value


def train_controller_run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train a PPO LR controller on a preset's training data, observing its meta split; save it as a repo."""
    from .controller_env import LRControlEnv, train_controller

    argv = list(sys.argv[1:] if argv is None else argv)
    task_args, args = HfArgumentParser((TaskArguments, ControllerArguments)).parse_args_into_dataclasses(argv)
    set_seed(args.seed)
    task = build_task(task_args)
    preset = PRESETS[task_args.task]

    def make_env() -> LRControlEnv:
        return LRControlEnv(
            lambda: preset_model(preset, task.num_classes),
            task.train,
            task.meta,
            batch_size=args.batch_size,
            val_batch_size=args.probe_size,
            episode_steps=args.episode_steps,
            decision_interval=args.decision_interval,
            initial_lrs=args.initial_lrs,
            action_space=args.action_space,
            max_change=args.max_change,
            max_grad_norm=args.max_grad_norm,
        )

    per_episode = args.episode_steps // args.decision_interval
    controller, agent = train_controller(
        make_env,
        total_timesteps=args.episodes * per_episode,
        seed=args.seed,
        n_steps=args.ppo_n_steps,
        batch_size=args.ppo_batch_size,
    )
    returns = [float(e["r"]) for e in agent.ep_info_buffer]
    controller.training_run.update(
        task=task_args.task, dataset=task_args.record_dataset or task.dataset_id, episodes=args.episodes
    )
    controller.save_pretrained(args.output_dir)
    return {"episodes": args.episodes, "episode_returns": returns, "output_dir": args.output_dir}
