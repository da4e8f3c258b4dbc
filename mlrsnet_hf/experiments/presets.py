"""The paper's tasks as named presets, and the command-line arguments of the runs on them.

Only dataclasses and the standard library: ``mlrsnet meta-train --help`` reads these without importing the data,
the models or the Trainer (:mod:`.tasks` builds and runs a preset).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TaskPreset:
    """A task of the paper: data, model and the recipe's training arguments."""

    dataset: str  # a key of IMAGE_DATASETS or CORRUPTED_DATASETS, or "ptb"
    model: str  # "resnet18", "wrn-28-10", "mobilenetv2", "shufflenetv2", "lstm2", "lstm3"
    training: dict[str, Any]
    meta_updates_per_epoch: int | None = None  # sets meta_update_interval from the data size
    description: str = ""


_IMAGE_RECIPE = dict(
    optim="sgd",
    per_device_train_batch_size=128,
    weight_decay=5e-4,
    num_train_epochs=200,
    max_grad_norm=0.0,
    gamma="1.0",
    remove_unused_columns=False,
)
_PTB_RECIPE = dict(
    optim="sgd",
    per_device_train_batch_size=32,
    per_device_eval_batch_size=10,
    weight_decay=5e-6,
    num_train_epochs=150,
    max_grad_norm=0.25,
    meta_update_interval=100,
    gamma="40",
    input_normalization="log_num_classes",
    train_sampling_strategy="sequential",
    ddp_broadcast_buffers=False,
)

PRESETS: dict[str, TaskPreset] = {
    "cifar10-resnet18": TaskPreset("cifar10", "resnet18", _IMAGE_RECIPE, 2, "ResNet-18 on CIFAR-10 (paper Sec. 4.1)"),
    "cifar100-resnet18": TaskPreset("cifar100", "resnet18", _IMAGE_RECIPE, 2, "ResNet-18 on CIFAR-100"),
    "cifar100-wrn28-10": TaskPreset("cifar100", "wrn-28-10", _IMAGE_RECIPE, 2, "WRN-28-10 on CIFAR-100"),
    "cifar10-mobilenetv2": TaskPreset(
        "cifar10", "mobilenetv2", _IMAGE_RECIPE, 2, "MobileNetV2 on CIFAR-10 (architecture transfer)"
    ),
    "cifar10-shufflenetv2": TaskPreset(
        "cifar10", "shufflenetv2", _IMAGE_RECIPE, 2, "ShuffleNetV2 on CIFAR-10 (architecture transfer)"
    ),
    "svhn-resnet18": TaskPreset("svhn", "resnet18", _IMAGE_RECIPE, 2, "ResNet-18 on SVHN (transfer target)"),
    "tiny-imagenet-resnet18": TaskPreset(
        "tiny-imagenet", "resnet18", _IMAGE_RECIPE, 2, "ResNet-18 on TinyImageNet (transfer target)"
    ),
    # Robustness (paper Sec. 4.3): train on one corruption (--corruption, --severity), meta set 10 clean images per class.
    "cifar10c-resnet18": TaskPreset(
        "cifar10c",
        "resnet18",
        {**_IMAGE_RECIPE, "meta_batch_size": 100},
        2,
        "ResNet-18 on one corruption of CIFAR-10-C",
    ),
    "cifar100c-resnet18": TaskPreset(
        "cifar100c",
        "resnet18",
        {**_IMAGE_RECIPE, "meta_batch_size": 100},
        2,
        "ResNet-18 on one corruption of CIFAR-100-C",
    ),
    "ptb-lstm2": TaskPreset("ptb", "lstm2", _PTB_RECIPE, None, "2-layer LSTM LM on Penn Treebank"),
    "ptb-lstm3": TaskPreset("ptb", "lstm3", _PTB_RECIPE, None, "3-layer LSTM LM on Penn Treebank"),
}


def preset(name: str) -> TaskPreset:
    """The preset called ``name``; a ``ValueError`` naming every preset for any other name."""
    if name not in PRESETS:
        raise ValueError(f"Unknown task {name!r}: expected one of {', '.join(PRESETS)}.")
    return PRESETS[name]


# What a preset run logs, as fractions of its steps (TrainingArguments reads a value below 1 so): the training loss
# 100 times and the test metrics 10 times, so training_curves.png has curves at any budget (TrainingArguments'
# defaults, every 500 steps and no evaluation before the end, drew one point per panel for a 200-step run).
CURVE_DEFAULTS = {"logging_steps": 0.01, "eval_strategy": "steps", "eval_steps": 0.1}


@dataclass
class TaskArguments:
    """What to train: the preset, where its data is, and how to split it."""

    task: str = field(metadata={"help": f"The task preset: one of {', '.join(PRESETS)}."})
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "A Hub dataset id or a local directory in the Hub repo's layout (default: the task's Hub id)."
        },
    )
    meta_size: int = field(default=1000, metadata={"help": "Images held out of the training set for meta updates."})
    corruption: str | None = field(
        default=None, metadata={"help": "CIFAR-C tasks: the corruption to train on (e.g. gaussian_noise)."}
    )
    severity: int = field(default=5, metadata={"help": "CIFAR-C tasks: the corruption's severity, 1-5."})
    meta_per_class: int = field(default=10, metadata={"help": "CIFAR-C tasks: clean meta images per class."})
    clean_dataset: str | None = field(
        default=None,
        metadata={"help": "CIFAR-C tasks: the clean CIFAR (meta and test images; default: its Hub id)."},
    )
    train_split: str = field(default="train", metadata={"help": "PTB: the split to train on."})
    meta_split: str = field(default="validation", metadata={"help": "PTB: the split for meta updates."})
    test_split: str = field(default="test", metadata={"help": "PTB: the split to evaluate on."})
    seq_len: int = field(default=35, metadata={"help": "PTB: tokens per sequence (the paper's 35)."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on the first this many test examples only (for quick runs)."}
    )
    record_dataset: str | None = field(
        default=None,
        metadata={"help": "Dataset id to record in the schedule card (default: --dataset or the Hub id)."},
    )


@dataclass
class ControllerArguments:
    """How to train a PPO LR controller (Xu et al., 2019) on a task preset's data."""

    output_dir: str = field(metadata={"help": "Where to write the controller (a schedule repo)."})
    episodes: int = field(default=20, metadata={"help": "Child training runs (episodes) of PPO training."})
    episode_steps: int = field(default=1000, metadata={"help": "Optimizer steps of one child run."})
    decision_interval: int = field(default=10, metadata={"help": "Optimizer steps between LR decisions (K)."})
    action_space: str = field(default="discrete", metadata={"help": "'discrete' or 'continuous'."})
    max_change: float = field(default=0.05, metadata={"help": "Largest relative LR change per decision."})
    initial_lrs: list[float] = field(
        default_factory=lambda: [1e-2, 1e-3, 1e-4], metadata={"help": "Adam LRs an episode starts from."}
    )
    batch_size: int = field(default=128, metadata={"help": "Child training batch size."})
    probe_size: int = field(default=256, metadata={"help": "Held-out examples the validation features use."})
    max_grad_norm: float | None = field(default=None, metadata={"help": "Clip child gradients to this norm."})
    ppo_n_steps: int = field(default=100, metadata={"help": "Decisions per PPO update."})
    ppo_batch_size: int = field(default=50, metadata={"help": "PPO minibatch size."})
    seed: int = field(default=0, metadata={"help": "Seed of PPO and of the episodes."})
