"""How the LR range test reads an LR off its loss curve (:mod:`mlrsnet_hf.lr_range_test` runs the test).

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

import logging
import math
import statistics
from dataclasses import dataclass

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
