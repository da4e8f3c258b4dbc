"""The main job (`make demo`): a schedule repo with its card and LR picture, offline.

When the released checkpoints are available (../shared/official next to this checkout, or
--official_dir) they are converted into the released three-stage transfer schedule; otherwise a
freshly initialised schedule is built. Either way the schedule is saved as a Hub-style repo,
reloaded strictly, and its LR response to a typical loss curve (and, with the released data, to the
released CIFAR-10 training curve) is plotted.

    python examples/demo.py --output_dir demo_output
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from mlrsnet_hf import MLRSNetSchedule, convert_official
from mlrsnet_hf.cli import describe
from mlrsnet_hf.plotting import plot_lr_response

logger = logging.getLogger("demo")
DEFAULT_OFFICIAL = Path(__file__).resolve().parents[1].parent / "shared" / "official"
CHECKPOINTS = ("mlr_snet_1.pth", "mlr_snet_100.pth", "mlr_snet_200.pth")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=Path("demo_output"))
    parser.add_argument("--official_dir", type=Path, default=DEFAULT_OFFICIAL)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    repo = args.output_dir / "schedule"
    paths = [args.official_dir / name for name in CHECKPOINTS]
    if all(p.is_file() for p in paths):
        logger.info("Converting the released checkpoints in %s", args.official_dir)
        convert_official(paths, repo)
    else:
        logger.info("No released checkpoints in %s: building a fresh schedule (seed %d)", args.official_dir, args.seed)
        torch.manual_seed(args.seed)
        MLRSNetSchedule(num_stages=3, gamma="auto").save_pretrained(repo)

    schedule = MLRSNetSchedule.from_pretrained(repo)  # strict reload of what was written
    logger.info("%s", describe(schedule, str(repo)))
    logger.info("Wrote %s", ", ".join(sorted(p.name for p in repo.iterdir())))

    curves = args.official_dir / "meta_train_curves.json"
    if curves.is_file():
        # The released CIFAR-10 run's per-epoch training loss, one step per epoch.
        losses = json.loads(curves.read_text())["resnet18_cifar10"]["train_loss"]
        out = args.output_dir / "lr_response_cifar10_curve.png"
        lrs = plot_lr_response(
            schedule, out, losses=losses, num_classes=10, title="LR response to the released CIFAR-10 training loss"
        )
        logger.info("Wrote %s (LR %.4g -> %.4g over %d steps)", out, lrs[0], lrs[-1], len(lrs))
    logger.info("Done: the schedule repo is in %s", repo)


if __name__ == "__main__":
    main()
