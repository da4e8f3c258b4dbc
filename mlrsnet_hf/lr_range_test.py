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

A rule does not guess silently (:func:`choose_lr_checked`): its pick is checked against the curve, and replaced,
with a warning, when the curve gives it no support:

* the loss never fell: the smoothed loss never went clearly below its start (by more than ``FALL_SIGMAS``
  times the losses' step-to-step noise). The minimum of such a curve is noise, and so is an LR read from it
  (reported: on 8x8 digits with 40 % noisy labels, ``min_loss_div_3`` picked 4e-4 and 7e-4 on two seeds of
  three, where LR 1 trains, and those runs stayed at chance). The LR used is a tenth of the *edge*, the largest
  LR before the smoothed loss rose clearly;
* the pick is far below the onset: more than 10x below the LR at which the loss began its clear fall. The LR
  used is the rule read again off the curve after the first steps (where the bias-corrected EMA is one or two
  batches' losses, so one easy batch makes a spurious minimum).

The rule's own pick, the LR used, the reason and what was measured are in :class:`RangeTestResult`
(``to_dict``, ``summary``) and in the log; the card of a model trained with ``gamma="range_test"`` shows them.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import math
import random
import statistics
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from accelerate.utils import send_to_device
from torch import nn

from .meta_gradient import model_loss
from .optimizers import unwrap

logger = logging.getLogger(__name__)

RULES = ("min_loss", "min_loss_div_3", "min_loss_div_10", "steepest")
DEFAULT_RULE = "min_loss_div_3"  # the best rule for transfer on the validation splits (benchmarks/select_mlrsnet.py)

# How a pick is checked against the curve (choose_lr_checked). Measured on the benchmarks' tasks (60 steps, SGD, 3
# seeds; digits, MNIST-1D, the PTB LSTM and GPT-2, and digits with 5 corruptions or 40 % noisy labels): the
# smoothed loss falls by only 0.6-16 % of its start in a range test (MNIST-1D 0.9-1.1 %, where the min_loss_div_3
# pick trains well; the LSTM 6-7 %; the noisy labels 0.6-2.2 %), so no fixed fraction tells a fall from noise (5 %
# would flag 8 of the 27 curves, MNIST-1D's three among them). The noise does: one batch's loss varies by 0.04 %
# (LSTM) to 0.7-2 % (digits, 64 images) of the loss. A change is *clear* beyond FALL_SIGMAS times that noise (sigma): the start (a median of
# 5 losses) carries ~0.55 sigma of noise, and the lowest point of the EMA (0.9: ~0.23 sigma of noise), a minimum
# over ~5 independent stretches of it, sits ~0.5 sigma below the level; so on a flat curve start - lowest is about
# 0.5 +- 0.6 sigma, and 2.5 sigma is over 3 standard deviations above it (simulated with Gaussian noise: a flat
# curve passes for a fall in 0.1 % of 60-step tests, 0.5 % of 30-step ones). Of the 27 curves, all but 3 fell
# clearly and kept their pick: two noisy-label seeds, and one contrast-corrupted seed (0.96 -> 0.73).
FALL_SIGMAS = 2.5
# Below this fraction of the start loss a change is rounding, not training (a floor for noise-free curves).
MIN_RELATIVE_CHANGE = 1e-3
# The start: the median of the first START_STEPS losses (at most a tenth of the test), and the curve checked after
# it is the same EMA started there. Not the rule's first smoothed values: its bias-corrected EMA is one batch's loss
# at step 0 and mostly two at step 1, where the spurious minima of the noisy-label runs sat (steps 1 and 3), and an
# odd batch there lingers in it for tens of steps; a median of 5 is moved by no single batch. Over the default
# span, 60 steps over 6 decades, these are LRs of 1e-3 to 2.5e-3 for SGD (1e-6 to 2.5e-6 otherwise): no training.
START_STEPS = 5
# A pick more than ONSET_FACTOR below the onset is not read off the fall: the rules back off from the minimum by
# at most 10x (min_loss_div_10) and the minimum of a curve that fell is at or above the onset, so a rule reading
# the fall lands at most 10x below it (only the steepest-fall rule can land below the onset at all).
ONSET_FACTOR = 10.0
# The LR used when the loss never fell: EDGE_FRACTION of the edge, the largest LR before the curve rose clearly
# above its lowest value so far (the start included). Such a curve shows no LR that trains, only where the LR gets
# too large; and the EMA lags the losses by ~9 steps (~0.9 decade over 60 steps), so the losses themselves rose up
# to ~8x below the edge. Smith (2017) puts the low end of a cyclical LR at a third or a quarter of where the curve
# turns; with no fall to go by, a tenth is the cautious choice, and it is still within a decade of the largest LR
# that did not make the loss rise (digits with 40 % noisy labels: 0.36-0.46, where the tuned LRs are 0.1-1).
EDGE_FRACTION = 0.1


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


@dataclass(frozen=True)
class LRChoice:
    """The LR chosen from a range-test curve, checked (:func:`choose_lr_checked`).

    ``lr`` is the LR to use; ``rule_lr`` the rule's own pick; ``fallback_reason`` why it was replaced (None when
    kept). What was measured: ``start_loss``, the median of the first losses; ``min_loss``, the lowest value of the
    smoothed curve after them; ``onset_lr``, where its fall to that lowest value began (None: it never fell
    clearly below the start); ``edge_lr``, the largest LR before it rose clearly above its lowest value so far;
    ``noise``, the step-to-step noise of the losses (a clear change is ``FALL_SIGMAS`` times it).
    """

    lr: float
    rule_lr: float
    fallback_reason: str | None
    start_loss: float
    min_loss: float
    onset_lr: float | None
    edge_lr: float
    noise: float


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


def loss_noise(losses: list[float]) -> float:
    """The step-to-step noise (standard deviation) of a loss curve: robust to its trend and to a diverging tail.

    The median absolute second difference, ``|x[i+1] - 2 x[i] + x[i-1]|``, divided by its value for independent
    Gaussian noise of unit standard deviation (``0.6745 * sqrt(6)``): a linear trend cancels, and fewer than half
    the steps (the divergence at the end) cannot move a median.
    """
    if len(losses) < 3:
        return 0.0
    second = [abs(losses[i + 1] - 2 * losses[i] + losses[i - 1]) for i in range(1, len(losses) - 1)]
    return statistics.median(second) / (0.6745 * math.sqrt(6))


def choose_lr_checked(
    lrs: list[float],
    smoothed: list[float],
    rule: str = DEFAULT_RULE,
    losses: list[float] | None = None,
    smoothing: float = 0.9,
) -> LRChoice:
    """The LR that ``rule`` picks from a smoothed loss curve, checked against the curve (see the module docstring).

    Args:
        lrs: the LRs tested, increasing geometrically.
        smoothed: the smoothed loss at each of them (what the rule reads).
        rule: one of :data:`RULES`.
        losses: the raw losses; None for a curve given smooth (then ``smoothed`` is read for everything).
        smoothing: the EMA factor of ``smoothed`` (used with ``losses``).

    What is measured: the *start*, the median of the first ``START_STEPS`` losses (at most a tenth of the test;
    a median, so that one odd batch moves it not), and after it the *curve*: the losses through the same EMA,
    started from the start (the rule's bias-corrected EMA is mostly one or two batches' losses at its first steps,
    and an odd batch there lingers for tens of steps). The *noise* (:func:`loss_noise`) is that of the losses up
    to the curve's lowest point; a change is *clear* beyond ``FALL_SIGMAS`` times it. The *onset* is the LR at
    which the fall to the lowest point began: from there on the curve stays clearly below the start (None when
    even its lowest point does not); the *edge* is the largest LR before the curve is clearly above its lowest
    value so far, the start included (the last LR tested if never).

    The pick is kept when the loss fell clearly and the pick is within ``ONSET_FACTOR`` below the onset. Else it
    is replaced, with a warning: with no onset (the loss never fell clearly) by ``EDGE_FRACTION`` times the edge;
    far below the onset, by the rule read off the curve after the start (or the onset, if that reading is still
    far below it).
    """
    picked = choose_lr(lrs, smoothed, rule)
    n = len(smoothed)
    raw = list(smoothed if losses is None else losses)
    if len(raw) != n or len(lrs) != n:
        raise ValueError(f"lrs, smoothed and losses must have one value per step, got {len(lrs)}, {n}, {len(raw)}.")
    warmup = max(1, min(START_STEPS, n // 10))
    start = statistics.median(raw[:warmup])
    curve = list(smoothed)
    if losses is not None:
        curve[:warmup], average = [start] * warmup, start
        for i in range(warmup, n):
            average = smoothing * average + (1 - smoothing) * raw[i]
            curve[i] = average
    later = range(warmup, n)
    lowest = min(later, key=curve.__getitem__)
    # The noise of the losses up to the lowest point (at least over the first half of the test): past it, LRs
    # large enough to shake the loss more than the batches do would pass for noise and hide a fall.
    noise = loss_noise(raw[: max(lowest + 1, n // 2)])
    clear = max(FALL_SIGMAS * noise, MIN_RELATIVE_CHANGE * abs(start))
    onset = None  # where the fall to the lowest point began (not a dip that came back up before it)
    if curve[lowest] < start - clear:
        onset = lowest
        while onset > warmup and curve[onset - 1] < start - clear:
            onset -= 1
    edge, floor = n - 1, start  # the last index before the curve rose clearly above its lowest value so far
    for i in later:
        if curve[i] > floor + clear:
            edge = i - 1
            break
        floor = min(floor, curve[i])
    measured = f"start {start:.4g}, lowest {curve[lowest]:.4g} at lr={lrs[lowest]:.3g}, a clear change > {clear:.3g}"
    if onset is None:
        lr = EDGE_FRACTION * lrs[edge]
        reason = (
            f"the loss never fell clearly below its start ({measured}): the rule's pick lr={picked:.3g} reads "
            f"noise; using {EDGE_FRACTION:g} x lr={lrs[edge]:.3g}, the largest LR before the loss rose"
        )
    elif picked * ONSET_FACTOR < lrs[onset]:
        # The rule read off the curve after the start: for the minimum's rules always within ONSET_FACTOR of the
        # onset (the lowest point is at or above it); the steepest fall may still be a blip before it: the onset.
        lr = choose_lr(lrs[warmup:], curve[warmup:], rule) if n - warmup >= 3 else lrs[onset]
        lr = lr if lr * ONSET_FACTOR >= lrs[onset] else lrs[onset]
        reason = (
            f"the rule's pick lr={picked:.3g} is over {ONSET_FACTOR:g}x below lr={lrs[onset]:.3g}, where the loss "
            f"began its clear fall ({measured}); using the rule read after the first {warmup} steps"
        )
    else:
        lr, reason = picked, None
    if reason is not None:
        logger.warning("LR range test (%s): %s: lr=%.3g.", rule, reason, lr)
    return LRChoice(
        lr=lr,
        rule_lr=picked,
        fallback_reason=reason,
        start_loss=start,
        min_loss=curve[lowest],
        onset_lr=None if onset is None else lrs[onset],
        edge_lr=lrs[edge],
        noise=noise,
    )


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
