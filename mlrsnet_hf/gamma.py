"""The gamma rules: how an MLR-SNet schedule's output ``p`` in (0, 1) becomes an LR, ``lr = gamma * p``.

* a float: ``gamma`` fixed for the whole run (the paper's meta-training and its stated transfer
  setting: 1 for images, 40 for text);
* ``"auto"``: the released transfer rule, recomputed at the start of each stage from the average
  training loss ``L`` at that moment and the number of classes ``C`` (the vocabulary size for
  language models): ``gamma = |sqrt(L) * ln(L * C) / C ** 0.25 / 4|``;
* ``"relative"``: for adaptive optimizers (AdamW, the transformers default) whose good learning rates
  are orders of magnitude below SGD's. The user's ``learning_rate`` (``base_lr``) sets the scale and
  the network the shape: ``gamma = base_lr / p_1``, where ``p_1`` is the network's first prediction
  of the run, and ``lr_t = min(gamma * p_t, relative_max_scale * base_lr)``. So the first step uses
  exactly ``base_lr``; later steps follow the network's relative changes; and
  ``0 < lr_t <= relative_max_scale * base_lr`` always holds (with the default ``relative_max_scale=1``
  the LR never exceeds the ``learning_rate`` the user set). ``gamma`` is not recomputed at stage
  switches in this mode, so the drop between the stages' networks is kept.
* ``"range_test"``: as ``"relative"``, but ``base_lr`` is measured on the task at hand, not given: before
  the first step an LR range test (:mod:`mlrsnet_hf.lr_range_test`) runs on a copy of the model and
  optimizer, and its chosen LR becomes ``base_lr``. A transferred schedule then needs no LR at all.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from .optimizers import is_sgd, optimizer_name

logger = logging.getLogger(__name__)

INPUT_NORMALIZATIONS = ("none", "log_num_classes")
GAMMA_RULES = ("auto", "relative", "range_test")
BASE_LR_RULES = ("relative", "range_test")  # gamma rules scaled by a base LR (given or measured)


def auto_gamma(average_loss: float, num_classes: int) -> float:
    """The released transfer rule ``|sqrt(L) * ln(L * C) / C ** 0.25 / 4|``."""
    if not (math.isfinite(average_loss) and average_loss > 0):
        raise ValueError(f'gamma="auto" needs a finite, positive average training loss, got {average_loss}.')
    if num_classes < 2:
        raise ValueError(f'gamma="auto" needs num_classes >= 2, got {num_classes}.')
    return abs(math.sqrt(average_loss) * math.log(average_loss * num_classes) / num_classes**0.25 / 4)


def check_relative_max_scale(value: Any) -> float:
    """``relative_max_scale`` as a float: a finite number above 0 (the one check for the config, drivers and schedule)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"relative_max_scale must be a positive number, got {value!r}.")
    return float(value)


def check_gamma(value: Any) -> float | str:
    """A gamma rule name, or a positive finite number as a float (the one check of a schedule's gamma)."""
    if isinstance(value, str) and value in GAMMA_RULES:
        return value
    if not isinstance(value, (bool, str)) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
        return float(value)
    raise ValueError(f"gamma must be a positive number or one of {', '.join(map(repr, GAMMA_RULES))}, got {value!r}.")


def check_input_normalization(value: Any) -> str:
    if value not in INPUT_NORMALIZATIONS:
        raise ValueError(f"input_normalization must be one of {', '.join(INPUT_NORMALIZATIONS)}, got {value!r}.")
    return value


def run_gamma(gamma: Any, online_scale: str | None, schedule_gamma: Any, optimizer: Any, base_lr: float) -> Any:
    """The gamma a run asks for (None: the schedule's own): ``"relative"`` under an online scale (it learns the
    scale) and, with a warning, for an optimizer other than SGD when no gamma was given and the schedule's rule
    does not already scale from a base LR; else ``gamma`` as given."""
    if online_scale:
        # The LR is S * shape_t, shape_t the schedule's LR relative to its first (1 at the first step) and S
        # learned: neither gamma nor learning_rate sets it (learning_rate keeps the parameter groups' ratios).
        if gamma not in (None, "relative"):
            logger.warning(
                "online_scale=%r learns the LR's scale: gamma=%r is not used (the schedule gives the shape only).",
                online_scale,
                gamma,
            )
        gamma = "relative"
    elif gamma is None and not is_sgd(optimizer) and schedule_gamma not in BASE_LR_RULES:
        logger.info(
            "%s is not SGD: using gamma='relative' (learning_rate=%g sets the scale, the schedule the shape). "
            "Pass gamma explicitly to override.",
            optimizer_name(optimizer),
            base_lr,
        )
        gamma = "relative"
    return gamma
