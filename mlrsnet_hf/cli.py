"""The ``mlrsnet`` command line.

mlrsnet convert-official mlr_snet_1.pth mlr_snet_100.pth mlr_snet_200.pth --out DIR
mlrsnet info SCHEDULE                       # a local directory or a Hub repo id
mlrsnet plot SCHEDULE --out lr.png [--losses FILE] [--num-classes C] [--base-lr LR]   # either family
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .families import family_of
from .hub import ScheduleFileError, load_any_schedule
from .mlrsnet.official import convert_official
from .version import __version__


def read_losses(path: str | Path) -> list[float]:
    """A loss curve from a JSON list or a text file with one number per line."""
    text = Path(path).read_text(encoding="utf-8").strip()
    try:
        values = json.loads(text) if text.startswith("[") else [float(line) for line in text.split() if line]
    except ValueError as e:
        raise ValueError(f"{path}: expected a JSON list of numbers or one number per line ({e}).") from e
    if not values:
        raise ValueError(f"{path} holds no losses.")
    return [float(v) for v in values]


def _convert(args: argparse.Namespace) -> None:
    schedule = convert_official(args.checkpoints, args.out)
    print(family_of(schedule).describe(schedule, str(args.out)))


def _info(args: argparse.Namespace) -> None:
    schedule = load_any_schedule(args.schedule)
    print(family_of(schedule).describe(schedule, args.schedule))


def _plot(args: argparse.Namespace) -> None:
    schedule = load_any_schedule(args.schedule)
    losses = read_losses(args.losses) if args.losses else None
    out = args.out if args.out.suffix else args.out.with_suffix(".png")  # what matplotlib writes for a bare name
    lrs = family_of(schedule).plot(schedule, out, losses=losses, num_classes=args.num_classes, base_lr=args.base_lr)
    print(
        f"wrote {out}: {len(lrs)} steps, LR from {lrs[0]:.4g} to {lrs[-1]:.4g} (min {min(lrs):.4g}, max {max(lrs):.4g})"
    )


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
    p.add_argument("schedule", help="a schedule directory or Hub repo id")
    p.set_defaults(func=_info)

    p = sub.add_parser("plot", help="plot a schedule's (of any family) LR response to a loss curve")
    p.add_argument("schedule", help="a schedule directory or Hub repo id")
    p.add_argument("--out", required=True, type=Path, help="image file to write (.png added to a name without one)")
    p.add_argument("--losses", help="loss curve: JSON list or one number per line (default: a typical curve)")
    p.add_argument("--num-classes", type=int, help="C for gamma='auto' (default: the meta-training task's, else 10)")
    p.add_argument(
        "--base-lr",
        type=float,
        help="learning_rate for gamma='relative'/'range_test' (default 1); an LR controller's initial LR "
        "(default: those it was trained from); an error for any other gamma",
    )
    p.set_defaults(func=_plot)
    return parser


def command_help(command: str, presets: dict, usage_error: bool) -> int:
    """``mlrsnet meta-train|transfer|train-controller --help``: every flag, as ``HfArgumentParser`` knows them.

    With no arguments at all: the usage on stderr and exit status 2 (as argparse does for a missing argument).
    """
    from transformers import HfArgumentParser

    from .config import MLRSNetConfig
    from .experiments.tasks import ControllerArguments, TaskArguments

    classes = (TaskArguments, ControllerArguments) if command == "train-controller" else (TaskArguments, MLRSNetConfig)
    tasks = "tasks:\n" + "\n".join(f"  {name}: {p.description}" for name, p in presets.items())
    if usage_error:
        print(f"usage: mlrsnet {command} --task TASK --output_dir DIR [FLAG ...]", file=sys.stderr)
        print(
            f"mlrsnet {command}: error: --task and --output_dir are required (--help lists every flag)",
            file=sys.stderr,
        )
        print(tasks, file=sys.stderr)
        return 2
    what = {
        "meta-train": "meta-train a schedule",
        "transfer": "train with a learned schedule (--schedule)",
        "train-controller": "train a PPO LR controller",
    }[command]
    parser = HfArgumentParser(
        classes,
        prog=f"mlrsnet {command}",
        description=f"mlrsnet {command}: {what} on a task preset.",
        epilog=tasks,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.print_help()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("meta-train", "transfer", "train-controller"):
        # These take every MLRSNetConfig / TrainingArguments flag: HfArgumentParser parses them.
        from .experiments.tasks import PRESETS, run, train_controller_run

        if len(argv) == 1 or argv[1] in ("-h", "--help"):
            return command_help(argv[0], PRESETS, usage_error=len(argv) == 1)
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
    try:
        args.func(args)
    except (ScheduleFileError, ValueError) as e:
        print(f"mlrsnet: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
