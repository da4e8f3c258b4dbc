"""What the rows' runs need besides a schedule: readers of the step size an optimizer used, and small callbacks.

:class:`LRRecorder` records the LR of every optimizer step (or, for the optimizers that scale the group's lr
themselves, the step size they used); :class:`HypergradientDescent`, :class:`IterateAveraging` and
:class:`LambdaScheduleTrainer` are the pieces of the baselines and rivals that transformers does not have.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer, TrainerCallback

HYPERGRADIENT_BETA = 0.02  # multiplicative rule of Baydin et al. (2018): lr *= 1 + beta * cos(g_t, g_{t-1})


# The step size a parameter-free optimizer used, from its param group 0 just before and just after the step
# (the group's "lr" is only a multiplier there). Prodigy and D-Adaptation Adam (bias correction off) take
# Adam steps of d * lr with the d held before the step; D-Adaptation SGD steps by d * lr / |g_0| (g_0 the
# first gradient, known after the first step); DoG computes its eta in the step.
def d_times_lr(before: dict, after: dict) -> float:
    return before["d"] * before["lr"]


def d_times_scheduled_lr(before: dict, after: dict) -> float:
    """Prodigy under an MLR-SNet schedule: the lr is set after the recorder's snapshot (it is read after the step)."""
    return before["d"] * after["lr"]


def dadapt_sgd_scheduled_step(before: dict, after: dict) -> float:
    """D-Adaptation SGD under an MLR-SNet schedule (as :func:`d_times_scheduled_lr`): d * lr_t / |g_0|."""
    return before["d"] * after["lr"] / (after.get("g0_norm") or math.nan)


# The scales that are an LR-free optimizer run with the learned shape as its LR multiplier (lr 1, the task's weight
# decay): MLRSNetRow.scale -> (the optimizer, its other keyword arguments, the step size it used).
def dadapt_sgd_step(before: dict, after: dict) -> float:
    g0 = after.get("g0_norm") or math.nan
    return before["d"] * before["lr"] / g0


def dog_eta(before: dict, after: dict) -> float:
    return float(after["eta"][0])


def dog_kwargs(model: torch.nn.Module) -> dict[str, Any]:
    """DoG's reps_rel: 1e-6, or 1e-4 for a model with batch norm (its README and docstring)."""
    bn = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
    return {"reps_rel": 1e-4 if any(isinstance(m, bn) for m in model.modules()) else 1e-6}


class LRRecorder(TrainerCallback):
    """The LR each optimizer step used (read after the step, before the scheduler moves it).

    With ``step_size(before, after)`` (param group 0 just before and just after the step), the step size
    the optimizer actually used is recorded instead: for those that scale the group's lr themselves.
    """

    def __init__(self, step_size: Callable[[dict, dict], float] | None = None) -> None:
        self.lrs: list[float] = []
        self.step_size = step_size
        self.before: dict[str, Any] = {}

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        if self.step_size is not None:
            self.before = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        group = optimizer.param_groups[0]
        self.lrs.append(float(group["lr"] if self.step_size is None else self.step_size(self.before, group)))


class MechanicRecorder(LRRecorder):
    """The step size of a Mechanic-wrapped optimizer: its learned scale S (the sum of its per-beta scales, after the
    step: the one this step's iterate was set with) times the group's lr."""

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        scale = optimizer.state["_mechanic"]["s"].sum()
        self.lrs.append(float(scale) * float(optimizer.param_groups[0]["lr"]))


class IterateAveraging(TrainerCallback):
    """DoG's recommended polynomial-decay iterate averaging (``dog.PolynomialDecayAverager``, gamma 8).

    Its ``step`` runs over the state dict, where tied weights (the LSTM's and GPT-2's embeddings) appear
    twice and would be averaged twice per step: here every shared tensor is updated once.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        from dog import PolynomialDecayAverager

        self.averager = PolynomialDecayAverager(model)

    def on_optimizer_step(self, args, state, control, **kwargs):
        a = self.averager
        weight = (a.gamma + 1) / (a.gamma + a.t)
        averaged, seen = a.av_model.state_dict(), set()
        for key, value in a.model.state_dict().items():
            target = averaged[key]
            if target.data_ptr() in seen:
                continue
            seen.add(target.data_ptr())
            if target.is_floating_point():
                target.mul_(1 - weight).add_(value, alpha=weight)
            else:  # batch norm's step counter
                target.copy_(value)
        a.t += 1


def import_object(path: str) -> Any:
    """``"module.name"`` imported at run time (another package's optimizer, or a function that wraps one)."""
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


class HypergradientDescent(TrainerCallback):
    """SGD-HD, multiplicative rule (Baydin et al., 2018): before each step, lr *= 1 + beta * cos(g_t, g_{t-1})."""

    def __init__(self, beta: float = HYPERGRADIENT_BETA) -> None:
        self.beta = beta
        self.previous: torch.Tensor | None = None

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        grad = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]).detach().clone()
        if self.previous is not None:
            cos = torch.nn.functional.cosine_similarity(grad, self.previous, dim=0).item()
            if math.isfinite(cos):
                for group in optimizer.param_groups:
                    group["lr"] *= 1 + self.beta * cos
        self.previous = grad


class LambdaScheduleTrainer(Trainer):
    """A Trainer with a ``LambdaLR`` schedule (exponential and multi-step decay are not transformers types)."""

    def __init__(self, *args, lr_lambda: Callable[[int], float], **kwargs) -> None:
        self.lr_lambda = lr_lambda
        super().__init__(*args, **kwargs)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            self.lr_scheduler = LambdaLR(optimizer or self.optimizer, self.lr_lambda)
        return self.lr_scheduler


def lr_lambda(kind: str, steps: int) -> Callable[[int], float]:
    if kind == "exponential":  # to 1% of the initial LR at the end
        return lambda s: 0.01 ** (s / steps)
    return lambda s: 1.0 if s < steps // 2 else 0.1 if s < 3 * steps // 4 else 0.01  # multi-step: /10 at 50%, 75%
