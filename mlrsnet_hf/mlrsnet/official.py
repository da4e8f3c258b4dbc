"""Conversion of the released MLR-SNet checkpoints into a schedule repo."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from ..hub import ScheduleFileError
from .schedule import MLRSNetSchedule

logger = logging.getLogger(__name__)

# Released key -> our key, for the single cell of a released network (hidden size 50).
_KEY_MAP = {
    "layer1.fc_i2h.0.weight": "cells.0.fc_i2h.0.weight",
    "layer1.fc_i2h.0.bias": "cells.0.fc_i2h.0.bias",
    "layer1.fc_i2h.2.weight": "cells.0.fc_i2h.2.weight",
    "layer1.fc_i2h.2.bias": "cells.0.fc_i2h.2.bias",
    "layer1.fc_h2h.0.weight": "cells.0.fc_h2h.0.weight",
    "layer1.fc_h2h.0.bias": "cells.0.fc_h2h.0.bias",
    "layer1.fc_h2h.2.weight": "cells.0.fc_h2h.2.weight",
    "layer1.fc_h2h.2.bias": "cells.0.fc_h2h.2.bias",
    "layer3.weight": "head.weight",
    "layer3.bias": "head.bias",
}

# What the released networks were meta-trained on (../shared/official/README.md).
OFFICIAL_META_TRAINING = {
    "name": "mlrsnet-cifar10-resnet18-official",
    "source": "released MLR-SNet checkpoints (mlr_snet_1.pth, mlr_snet_100.pth, mlr_snet_200.pth)",
    "dataset": "uoft-cs/cifar10",
    "dataset_name": "CIFAR-10",
    "task_type": "image-classification",
    "num_classes": 10,
    "model": "ResNet-18",
    "epochs": 200,
    "batch_size": 128,
    "optimizer": "SGD (momentum 0, weight decay 5e-4)",
    "meta_optimizer": "Adam (lr 1e-3, weight decay 1e-4)",
    "meta_update_interval": 300,
    "meta_set": "1000 held-out training images",
    # The meta-training run's curves (../shared/official/meta_train_curves.json): test accuracy after the last
    # of its 200 epochs; its best epoch, reported in places as the result, is labelled as such.
    "results": {"accuracy": 0.9236},
    "eval_split": "test",
    "best_epoch_test_accuracy": "0.9437 (epoch 90 of 200; the results are the last epoch's)",
    # Third-party weights: their terms are the original release's, not this library's Apache-2.0.
    "license": "other",
    "license_name": "mlr-snet-original-release",
    "license_link": "https://github.com/xjtushujun/MLR-SNet",
    "license_note": (
        "The networks in this repo are the MLR-SNet authors' released checkpoints "
        "(https://github.com/xjtushujun/MLR-SNet), converted to this format. Their terms are those of that "
        "original release, which did not include a license file when this converter was written; they are not "
        "covered by the Apache-2.0 license of the mlrsnet_hf library that converted them."
    ),
}


def load_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A released checkpoint's weights under our key names, checked for completeness and shape."""
    path = Path(path)
    if not path.is_file():
        raise ScheduleFileError(f"{path} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises EOFError, struct.error, UnpicklingError... for damaged or foreign files
        # (torch's own message advises weights_only=False, i.e. running the file's code: not repeated here)
        raise ScheduleFileError(
            f"{path} is truncated or not a released MLR-SNet checkpoint ({type(e).__name__})."
        ) from e
    if not isinstance(state, dict):
        raise ScheduleFileError(f"{path} holds a {type(state).__name__}, not a state dict.")
    missing = sorted(set(_KEY_MAP) - set(state))
    unexpected = sorted(set(state) - set(_KEY_MAP))
    if missing or unexpected:
        raise ScheduleFileError(
            f"{path} is not a released MLR-SNet checkpoint: missing keys {missing}, unexpected keys {unexpected}."
        )
    return {_KEY_MAP[k]: v.float() for k, v in state.items()}


def _epoch(path: str | Path) -> int | None:
    """The epoch in a released checkpoint's name (``mlr_snet_100.pth`` -> 100), else None."""
    match = re.fullmatch(r"mlr_snet_(\d+)\.pth", Path(path).name)
    return int(match.group(1)) if match else None


def convert_official(paths: Sequence[str | Path], out_dir: str | Path | None = None) -> MLRSNetSchedule:
    """Turn the released checkpoints into one schedule with a stage per checkpoint.

    With the three released files in order (``mlr_snet_1.pth``, ``mlr_snet_100.pth``,
    ``mlr_snet_200.pth``) this is the released transfer recipe: the stages cover the thirds of the
    run, the LSTM state carries over at the switches, gate layout ``"ifgo"`` and ``gamma="auto"``.
    Saved to ``out_dir`` as a schedule repo when given.
    """
    if not paths:
        raise ValueError("convert_official needs at least one checkpoint path.")
    epochs = [_epoch(p) for p in paths]
    if None not in epochs and epochs != sorted(epochs):
        raise ValueError(
            f"The checkpoints must be given in stage order (the epochs they were saved at increasing), got "
            f"{', '.join(Path(p).name for p in paths)}."
        )
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ValueError(f"--out {out_dir} is a file: give a directory for the schedule repo.")
    states = [load_official_state_dict(p) for p in paths]
    for path, state in zip(paths, states, strict=True):
        if bad := [k for k, v in state.items() if torch.is_floating_point(v) and not torch.isfinite(v).all()]:
            raise ScheduleFileError(f"{path} holds non-finite weights ({', '.join(bad)}): not a usable checkpoint.")
    hidden_size = states[0]["head.weight"].shape[1]
    meta = dict(OFFICIAL_META_TRAINING)
    meta["source"] = f"released MLR-SNet checkpoints ({', '.join(Path(p).name for p in paths)})"
    schedule = MLRSNetSchedule(
        hidden_size=hidden_size, gate_layout="ifgo", num_stages=len(states), gamma="auto", meta_training=meta
    )
    for k, (net, state) in enumerate(zip(schedule.stages, states, strict=True)):
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ScheduleFileError(f"{paths[k]} does not fit a hidden size {hidden_size} network: {e}") from e
    if out_dir is not None:
        schedule.save_pretrained(out_dir)
        logger.info("Saved the converted schedule to %s", out_dir)
    return schedule
