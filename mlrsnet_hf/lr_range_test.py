"""The LR range test (Smith, 2017): the scale of the LR measured on the task at hand, before training.

An exponentially increasing LR is applied for a few optimizer steps to a *copy* of the model and of the
optimizer; the smoothed training loss is recorded against the LR and one LR is chosen from the curve.
The real run is untouched: its weights, optimizer state, data order and random streams (torch's on the
CPU and on the model's device, Python's and NumPy's: saved and restored) are the same as without the
test, so results stay reproducible and resume exact. (A collator with a generator of its own, e.g. a
seeded ``DataCollatorForLanguageModeling``, is advanced by collating the test's batches.) Under fp16 mixed
precision the test runs without loss scaling: prefer bf16, or give ``gamma`` explicitly.

``gamma="range_test"`` (:mod:`mlrsnet_hf.mlrsnet.run`) makes the chosen LR the base LR of a learned
schedule, so a transferred schedule needs no LR from the user.

The rules that read the LR off the curve, and the checks of their pick, are :mod:`mlrsnet_hf.lr_range_rules`.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import math
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from accelerate.utils import send_to_device
from torch import nn

from .lr_range_rules import DEFAULT_RULE, RULES, LRChoice, choose_lr, choose_lr_checked, loss_noise
from .meta_gradient import model_loss
from .optimizers import unwrap

logger = logging.getLogger(__name__)

# the rules, importable from here as before
__all__ = [
    "DEFAULT_RULE",
    "RULES",
    "LRChoice",
    "RangeTestResult",
    "choose_lr",
    "choose_lr_checked",
    "default_lr_range",
    "loss_noise",
    "lr_range_test",
]


def default_lr_range(optimizer: torch.optim.Optimizer) -> tuple[float, float]:
    """The LRs a range test spans by default: ``[1e-3, 1e3]`` for SGD, ``[1e-6, 1]`` for adaptive optimizers."""
    inner = unwrap(optimizer)
    return (1e-3, 1e3) if isinstance(inner, torch.optim.SGD) else (1e-6, 1.0)


@dataclass
class RangeTestResult:
    """The curve of a range test and the LR chosen from it."""

    lr: float
    rule: str
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    seconds: float = 0.0
    # The check of the pick (choose_lr_checked, LRChoice): the rule's own pick (``lr`` is the LR used), why it
    # was replaced (None: it was kept), and what the check measured.
    rule_lr: float | None = None
    fallback_reason: str | None = None
    start_loss: float | None = None
    min_loss: float | None = None
    onset_lr: float | None = None
    edge_lr: float | None = None
    noise: float | None = None

    def summary(self) -> dict[str, Any]:
        """The choice without the curve: the LR used, the rule, its own pick, the fallback reason, the measurements."""
        return {
            "lr": self.lr,
            "rule": self.rule,
            "rule_lr": self.rule_lr,
            "fallback_reason": self.fallback_reason,
            "start_loss": self.start_loss,
            "min_loss": self.min_loss,
            "onset_lr": self.onset_lr,
            "edge_lr": self.edge_lr,
            "noise": self.noise,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "lrs": self.lrs, "losses": self.losses, "seconds": self.seconds}


def lr_range_test(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Mapping[str, Any]],
    num_steps: int = 60,
    min_lr: float | None = None,
    max_lr: float | None = None,
    rule: str = DEFAULT_RULE,
    max_grad_norm: float | None = None,
    smoothing: float = 0.9,
    divergence_factor: float = 4.0,
    device: torch.device | str | None = None,
) -> RangeTestResult:
    """Run an LR range test on copies of ``model`` and ``optimizer``; neither (nor any RNG) is changed.

    Args:
        model: the model at its starting weights (copied; its forward hooks are not carried over).
        optimizer: the run's optimizer: a fresh one of the same class and parameter-group settings is built
            for the copy (the groups' LR ratios are kept; the first group gets the tested LR).
        batches: training batches, used in order (cycled if fewer than ``num_steps``).
        num_steps: optimizer steps, the LR going geometrically from ``min_lr`` to ``max_lr``.
        rule: how the LR is chosen from the curve (see the module docstring); its pick is checked against the
            curve, and replaced with a warning when the curve does not support it (:func:`choose_lr_checked`).
        max_grad_norm: clip gradients as the real run does (None or <= 0: no clipping).
        smoothing: EMA factor of the loss (bias-corrected).
        divergence_factor: stop once the smoothed loss exceeds this multiple of its minimum (or is not finite).
    """
    if num_steps < 3:
        raise ValueError(f"num_steps must be >= 3, got {num_steps}.")
    default_min, default_max = default_lr_range(optimizer)
    min_lr, max_lr = min_lr or default_min, max_lr or default_max
    if not 0 < min_lr < max_lr:
        raise ValueError(f"The range test needs 0 < min_lr < max_lr, got {min_lr} and {max_lr}.")
    inner = unwrap(optimizer)
    start = time.perf_counter()
    param = next(model.parameters())
    accelerator = param.device.type if param.device.type != "cpu" else "cuda"
    devices = [param.device.index or 0] if param.device.type != "cpu" else []
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=devices, device_type=accelerator), _restored(python_state, numpy_state):
        probe = _copy_without_hooks(model)
        probe.train()
        mapping = dict(zip(model.parameters(), probe.parameters(), strict=True))
        groups = [
            {**{k: v for k, v in g.items() if k != "params"}, "params": [mapping[p] for p in g["params"]]}
            for g in inner.param_groups
        ]
        test_optimizer = type(inner)(groups)
        ratios = [g["lr"] / groups[0]["lr"] if groups[0]["lr"] else 1.0 for g in groups]
        trainable = [p for p in probe.parameters() if p.requires_grad]
        lrs, losses, smoothed = [], [], []
        average, best = 0.0, math.inf
        for step, batch in zip(range(num_steps), itertools.cycle(batches), strict=False):
            lr = min_lr * (max_lr / min_lr) ** (step / (num_steps - 1))
            for group, ratio in zip(test_optimizer.param_groups, ratios, strict=True):
                group["lr"] = lr * ratio
            test_optimizer.zero_grad(set_to_none=True)
            loss = model_loss(probe(**(send_to_device(dict(batch), device) if device is not None else batch)))
            if loss is None:
                raise ValueError("The model returned no loss on a training batch: the LR range test needs labels.")
            value = loss.item()
            if not math.isfinite(value):
                break
            average = smoothing * average + (1 - smoothing) * value
            ema = average / (1 - smoothing ** (step + 1))
            if best > 0 and ema > divergence_factor * best:  # (a loss that can be negative has no such test)
                break
            best = min(best, ema)
            lrs.append(lr)
            losses.append(value)
            smoothed.append(ema)
            loss.backward()
            if max_grad_norm is not None and max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
            test_optimizer.step()
        del probe, test_optimizer
    choice = choose_lr_checked(lrs, smoothed, rule, losses, smoothing)
    result = RangeTestResult(
        choice.lr,
        rule,
        lrs,
        losses,
        smoothed,
        time.perf_counter() - start,
        rule_lr=choice.rule_lr,
        fallback_reason=choice.fallback_reason,
        start_loss=choice.start_loss,
        min_loss=choice.min_loss,
        onset_lr=choice.onset_lr,
        edge_lr=choice.edge_lr,
        noise=choice.noise,
    )
    logger.info(
        "LR range test: %d steps over [%g, %g] in %.1f s, chose lr=%g (%s%s).",
        len(lrs),
        min_lr,
        lrs[-1],
        result.seconds,
        choice.lr,
        rule,
        "" if choice.fallback_reason is None else f"; not its pick lr={choice.rule_lr:g}: {choice.fallback_reason}",
    )
    return result


@contextlib.contextmanager
def _restored(python_state: Any, numpy_state: Any):
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _copy_without_hooks(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose modules carry no forward hooks (e.g. the schedule's loss reader)."""
    saved = {m: (m._forward_hooks, m._forward_hooks_with_kwargs) for m in model.modules()}
    try:
        for m in saved:
            m._forward_hooks, m._forward_hooks_with_kwargs = type(m._forward_hooks)(), {}
        return copy.deepcopy(model)
    finally:
        for m, (hooks, with_kwargs) in saved.items():
            m._forward_hooks, m._forward_hooks_with_kwargs = hooks, with_kwargs
