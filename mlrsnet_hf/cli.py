"""The ``mlrsnet`` command line.

mlrsnet convert-official mlr_snet_1.pth mlr_snet_100.pth mlr_snet_200.pth --out DIR
mlrsnet info SCHEDULE                       # a local directory, a zoo schedule (mlrsnet_hf/NAME) or a Hub repo id
mlrsnet plot SCHEDULE --out lr.png [--losses FILE] [--num-classes C] [--base-lr LR] [--gamma G]   # either family

Only argparse is imported here: ``--help`` starts at once, ``info`` and ``plot`` import what loading a schedule
needs (torch, not the Trainer), a training command's ``--help`` the argument classes (``TrainingArguments``, not the
Trainer, the data or the models), and only the commands that train import transformers' Trainer.
``benchmarks/cli_startup.py`` measures them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .version import __version__

TRAINING_COMMANDS = ("meta-train", "transfer", "train-controller")
# The TrainingArguments flags `meta-train/transfer --help` shows (`--help-all`: all of them); every one is accepted.
TRAINING_FLAGS = (
    "output_dir",
    "max_steps",
    "num_train_epochs",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "optim",
    "learning_rate",
    "weight_decay",
    "max_grad_norm",
    "seed",
    "logging_steps",
    "eval_strategy",
    "eval_steps",
    "save_strategy",
    "save_steps",
    "resume_from_checkpoint",
    "report_to",
    "bf16",
    "push_to_hub",
    "hub_model_id",
)


def read_losses(path: str | Path) -> list[float]:
    """A loss curve from a JSON list or a text file with one number per line."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ValueError(f"--losses {path}: no such file.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--losses {path} cannot be read ({e}).") from None
    try:
        values = json.loads(text) if text.startswith("[") else [float(line) for line in text.split() if line]
    except ValueError as e:
        raise ValueError(f"{path}: expected a JSON list of numbers or one number per line ({e}).") from e
    if not values:
        raise ValueError(f"{path} holds no losses.")
    return [float(v) for v in values]


def _convert(args: argparse.Namespace) -> None:
    from .families import family_of
    from .mlrsnet.official import convert_official

    schedule = convert_official(args.checkpoints, args.out)
    print(family_of(schedule).describe(schedule, str(args.out)))


def _info(args: argparse.Namespace) -> None:
    from .families import family_of
    from .hub import load_any_schedule

    schedule = load_any_schedule(args.schedule)
    print(family_of(schedule).describe(schedule, args.schedule))


def _plot(args: argparse.Namespace) -> None:
    from .families import family_of
    from .hub import load_any_schedule

    if args.num_classes is not None and args.num_classes < 2:
        raise ValueError(f"--num-classes must be at least 2 (the number of classes C), got {args.num_classes}.")
    out = args.out if args.out.suffix else args.out.with_suffix(".png")  # what matplotlib writes for a bare name
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: the folder {out.parent} does not exist.")
    losses = read_losses(args.losses) if args.losses else None
    overrides = {} if args.gamma is None else {"gamma": _gamma(args.gamma)}
    try:
        schedule = load_any_schedule(args.schedule, **overrides)
    except TypeError as e:  # a family without a gamma (the LR controller)
        raise ValueError(f"--gamma: {e}") from None
    lrs = family_of(schedule).plot(schedule, out, losses=losses, num_classes=args.num_classes, base_lr=args.base_lr)
    print(
        f"wrote {out}: {len(lrs)} steps, LR from {lrs[0]:.4g} to {lrs[-1]:.4g} (min {min(lrs):.4g}, max {max(lrs):.4g})"
    )


def _gamma(value: str) -> float | str:
    """``--gamma``: a number, or the name of a rule."""
    try:
        return float(value)
    except ValueError:
        return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlrsnet", description="Learned LR schedules (MLR-SNet) as Hub repos.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--version", action="version", version=f"mlrsnet_hf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("meta-train", help="meta-train a schedule on a task preset (see `mlrsnet meta-train --help`)")
    sub.add_parser("transfer", help="train a task preset with a learned schedule (see `mlrsnet transfer --help`)")
    sub.add_parser(
        "train-controller", help="train a PPO LR controller on a task preset (see `mlrsnet train-controller --help`)"
    )

    p = sub.add_parser("convert-official", help="turn the released MLR-SNet checkpoints into a schedule repo")
    p.add_argument("checkpoints", nargs="+", help="mlr_snet_1.pth [mlr_snet_100.pth mlr_snet_200.pth], in stage order")
    p.add_argument("--out", required=True, type=Path, help="directory to write the schedule repo to")
    p.set_defaults(func=_convert)

    p = sub.add_parser("info", help="what a schedule (of any family) is and what it was trained on")
    p.add_argument("schedule", help="a schedule directory, a zoo schedule (mlrsnet_hf/NAME) or a Hub repo id")
    p.set_defaults(func=_info)

    p = sub.add_parser("plot", help="plot a schedule's (of any family) LR response to a loss curve")
    p.add_argument("schedule", help="a schedule directory, a zoo schedule (mlrsnet_hf/NAME) or a Hub repo id")
    p.add_argument("--out", required=True, type=Path, help="image file to write (.png added to a name without one)")
    p.add_argument("--losses", help="loss curve: JSON list or one number per line (default: a typical curve)")
    p.add_argument("--num-classes", type=int, help="C for gamma='auto' (default: the meta-training task's, else 10)")
    p.add_argument(
        "--base-lr",
        type=float,
        help="learning_rate for gamma='relative'/'range_test' (default 1); an LR controller's initial LR "
        "(default: those it was trained from); an error for any other gamma",
    )
    p.add_argument(
        "--gamma",
        help="an MLR-SNet schedule's gamma for this picture (default: its own), e.g. 'relative' with --base-lr 1e-3 "
        "for what a run with AdamW at learning_rate 1e-3 gets (the default with an optimizer other than SGD)",
    )
    p.set_defaults(func=_plot)
    return parser


def task_list(presets: dict) -> str:
    """The task presets, one per line with its description (the training commands' help and usage error)."""
    return "tasks:\n" + "\n".join(f"  {name}: {p.description}" for name, p in presets.items())


def usage(command: str) -> str:
    """The usage line of a training command."""
    schedule = " --schedule SCHEDULE" if command == "transfer" else ""
    return f"mlrsnet {command} --task TASK{schedule} --output_dir DIR [FLAG ...]"


def command_parser(command: str, presets: dict, every_flag: bool = False) -> argparse.ArgumentParser:
    """The ``--help`` of ``mlrsnet meta-train|transfer|train-controller``: the task's flags, then the schedule's, then
    the ``TrainingArguments`` flags in a group of their own (those of :data:`TRAINING_FLAGS`; ``every_flag``: all of
    them), never those the library ignores (:data:`~mlrsnet_hf.driver.LR_SCHEDULE_SETTINGS`). The command itself parses with
    ``HfArgumentParser`` over the same classes, so every ``TrainingArguments`` flag is accepted."""
    import dataclasses
    from typing import get_type_hints

    from transformers import HfArgumentParser, TrainingArguments

    from .config import MLRSNetConfig
    from .driver import LR_SCHEDULE_SETTINGS
    from .experiments.presets import ControllerArguments, TaskArguments

    what = {
        "meta-train": "meta-train a schedule",
        "transfer": "train with a learned schedule (--schedule)",
        "train-controller": "train a PPO LR controller",
    }[command]
    parser = HfArgumentParser(
        [],
        prog=f"mlrsnet {command}",
        usage=usage(command),
        description=f"mlrsnet {command}: {what} on a task preset.",
        epilog=task_list(presets),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    def add(title: str, cls: type, names: Sequence[str] | None = None) -> None:
        group, hints = parser.add_argument_group(title), get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if field.init and (names is None or field.name in names):
                field.type = hints[field.name]  # (as HfArgumentParser does)
                parser._parse_dataclass_field(group, field)

    add("task", TaskArguments)
    if command == "train-controller":
        add("PPO controller", ControllerArguments)
        return parser
    training = {f.name for f in dataclasses.fields(TrainingArguments)}
    add("schedule", MLRSNetConfig, [f.name for f in dataclasses.fields(MLRSNetConfig) if f.name not in training])
    shown = sorted(training - set(LR_SCHEDULE_SETTINGS)) if every_flag else TRAINING_FLAGS
    add(
        "training (TrainingArguments)"
        + ("" if every_flag else ": the common flags; every other one is accepted too (--help-all lists them)"),
        MLRSNetConfig,
        shown,
    )
    return parser


def command_help(command: str, presets: dict, usage_error: bool, every_flag: bool = False) -> int:
    """``mlrsnet meta-train|transfer|train-controller --help`` (:func:`command_parser`).

    With no arguments at all: the usage on stderr and exit status 2 (as argparse does for a missing argument).
    """
    if usage_error:
        print(f"usage: {usage(command)}", file=sys.stderr)
        required = (
            "--task, --schedule and --output_dir are" if command == "transfer" else "--task and --output_dir are"
        )
        print(f"mlrsnet {command}: error: {required} required (--help lists the flags)", file=sys.stderr)
        print(task_list(presets), file=sys.stderr)
        return 2
    command_parser(command, presets, every_flag).print_help()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TRAINING_COMMANDS:
        # These take every MLRSNetConfig / TrainingArguments flag: HfArgumentParser parses them.
        from .experiments.presets import PRESETS, preset

        help_flags = {"-h", "--help", "--help-all"} & set(argv[1:])
        if len(argv) == 1 or help_flags:  # without the data, models and Trainer
            return command_help(argv[0], PRESETS, usage_error=len(argv) == 1, every_flag="--help-all" in help_flags)
        task = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--task"), None)
        try:
            if task is not None:
                preset(task)  # a wrong name is said before the Trainer, data and models are imported
        except ValueError as e:
            print(f"mlrsnet: error: {e}", file=sys.stderr)
            return 1
        from .experiments.tasks import run, train_controller_run
        from .repo_files import ScheduleFileError

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        try:
            if argv[0] == "train-controller":
                metrics = train_controller_run(argv[1:])
            else:
                metrics = run(argv[1:], meta_train=argv[0] == "meta-train")
        except (ScheduleFileError, ValueError) as e:
            print(f"mlrsnet: error: {e}", file=sys.stderr)
            return 1
        print(json.dumps(metrics, indent=2))
        return 0
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from .repo_files import ScheduleFileError

    try:
        args.func(args)
    except (ScheduleFileError, ValueError) as e:
        print(f"mlrsnet: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
