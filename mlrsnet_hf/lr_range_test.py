"""The LR range test (Smith, 2017): the scale of the LR measured on the task at hand, before training.

An exponentially increasing LR is applied for a few optimizer steps to a *copy* of the model and of the
optimizer; the smoothed training loss is recorded against the LR and one LR is chosen from the curve.
The real run is untouched: its weights, optimizer state, data order and random streams (torch's on the
CPU and on the model's device, Python's and NumPy's: saved and restored) are the same as without the
test, so results stay reproducible and resume exact. (A collator with a generator of its own, e.g. a
seeded ``DataCollatorForLanguageModeling``, is advanced by collating the test's batches.) Under fp16 mixed
precision the test runs without loss scaling: prefer bf16, or give ``gamma`` explicitly.

``gamma="range_test"`` (:mod:`mlrsnet_hf.schedule`) makes the chosen LR the base LR of a learned
schedule, so a transferred schedule needs no LR from the user.

Rules for choosing the LR from the curve (``rule``):

* ``"min_loss"``: the LR at which the smoothed loss is lowest;
* ``"min_loss_div_3"`` / ``"min_loss_div_10"``: a third / a tenth of it (the latter is fastai's classic);
* ``"steepest"``: the LR at which the smoothed loss falls fastest (per decade of LR), before its minimum.
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

from .meta_gradient import model_loss

logger = logging.getLogger(__name__)

RULES = ("min_loss", "min_loss_div_3", "min_loss_div_10", "steepest")
DEFAULT_RULE = "min_loss_div_3"  # the best rule for transfer on the validation splits (benchmarks/select_mlrsnet.py)


def default_lr_range(optimizer: torch.optim.Optimizer) -> tuple[float, float]:
    """The LRs a range test spans by default: ``[1e-3, 1e3]`` for SGD, ``[1e-6, 1]`` for adaptive optimizers."""
    inner = getattr(optimizer, "optimizer", optimizer)
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

    def to_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "rule": self.rule, "lrs": self.lrs, "losses": self.losses, "seconds": self.seconds}


def choose_lr(lrs: list[float], smoothed: list[float], rule: str = DEFAULT_RULE) -> float:
    """The LR that ``rule`` picks from a smoothed loss curve (``lrs`` increasing geometrically)."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}.")
    if len(lrs) < 3:
        raise ValueError(f"The range test recorded {len(lrs)} finite losses: too few to choose an LR.")
    best = min(range(len(smoothed)), key=smoothed.__getitem__)
    if rule == "min_loss":
        return lrs[best]
    if rule.startswith("min_loss_div_"):
        return lrs[best] / int(rule.removeprefix("min_loss_div_"))
    if best == 0:
        return lrs[0]
    slopes = [(smoothed[i + 1] - smoothed[i]) / (math.log10(lrs[i + 1]) - math.log10(lrs[i])) for i in range(best)]
    steepest = min(range(len(slopes)), key=slopes.__getitem__)
    return math.sqrt(lrs[steepest] * lrs[steepest + 1])


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
        rule: how the LR is chosen from the curve (see the module docstring).
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
    inner = getattr(optimizer, "optimizer", optimizer)
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
    chosen = choose_lr(lrs, smoothed, rule)
    result = RangeTestResult(chosen, rule, lrs, losses, smoothed, time.perf_counter() - start)
    logger.info(
        "LR range test: %d steps over [%g, %g] in %.1f s, chose lr=%g (%s).",
        len(lrs), min_lr, lrs[-1] if lrs else min_lr, result.seconds, chosen, rule,
    )  # fmt: skip
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
