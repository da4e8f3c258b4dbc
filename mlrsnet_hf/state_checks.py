"""Checks of what a checkpoint's ``scheduler.pt`` restores, before the first resumed step.

A checkpoint may come from a shared repo, a truncated copy or another program: every value a run takes back
from it (the run's stage, LSTM state, gammas and counters, the schedule's weights, the meta-learner's state) is
checked for presence, type, shape, finiteness and range, and a bad one raises a :class:`CheckpointStateError`
naming the checkpoint and the field.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from .repo_checks import listed


class CheckpointStateError(ValueError):
    """A value restored from ``scheduler.pt`` is missing, malformed or out of range."""


@contextmanager
def restoring(source: str) -> Iterator[None]:
    """Name ``source`` (the checkpoint's ``scheduler.pt``) in any error raised while restoring from it."""
    try:
        yield
    except KeyError as e:
        raise CheckpointStateError(
            f"{source} cannot be resumed: the field {e} is missing (truncated or foreign?)"
        ) from e
    except (TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
        raise CheckpointStateError(f"{source} cannot be resumed: {str(e)[:400]}") from e


def check_int(value: Any, field: str, low: int = 0, high: int | None = None) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f">= {low}"
        raise CheckpointStateError(f"{field} must be an integer {bounds}, got {str(value)[:60]}.")
    return value


def check_number(value: Any, field: str, *, positive: bool = False, optional: bool = False) -> float | None:
    """A finite number (``positive``: > 0, else >= 0); ``optional``: None is allowed."""
    if value is None and optional:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CheckpointStateError(f"{field} must be a finite number, got {str(value)[:60]}.")
    if value < 0 or (positive and value == 0):
        raise CheckpointStateError(f"{field} must be {'> 0' if positive else '>= 0'}, got {value}.")
    return float(value)


def check_tensor(value: Any, field: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """A finite floating-point tensor (of ``shape``)."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise CheckpointStateError(f"{field} must be a floating-point tensor, got {type(value).__name__}.")
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise CheckpointStateError(f"{field} has shape {tuple(value.shape)}, expected {tuple(shape)}.")
    if not torch.isfinite(value).all():
        raise CheckpointStateError(f"{field} holds non-finite values.")
    return value


def check_weights(weights: Any, reference: Mapping[str, torch.Tensor], field: str) -> dict[str, torch.Tensor]:
    """A state dict with exactly ``reference``'s names and shapes, finite."""
    if not isinstance(weights, Mapping):
        raise CheckpointStateError(f"{field} must be a dict of tensors, got {type(weights).__name__}.")
    missing, unexpected = sorted(set(reference) - set(weights)), sorted(set(weights) - set(reference))
    if missing or unexpected:
        raise CheckpointStateError(
            f"{field} does not match this schedule: missing {listed(missing)}, unexpected {listed(unexpected)}."
        )
    for name, tensor in reference.items():
        check_tensor(weights[name], f"{field}[{name!r}]", tuple(tensor.shape))
    return dict(weights)


def check_finite_tree(value: Any, field: str) -> None:
    """Every tensor and number inside ``value`` (dicts, lists) is finite (e.g. an optimizer's state)."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointStateError(f"{field} holds non-finite values.")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise CheckpointStateError(f"{field} is not finite ({value}).")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            check_finite_tree(item, f"{field}[{str(key)[:40]!r}]")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_finite_tree(item, f"{field}[{index}]")


def check_driver_state(state: Mapping[str, Any], num_groups: int) -> tuple[int, list[float], list[float]]:
    """``(last_epoch, last_lrs, initial_lrs)`` of a driver's state, for an optimizer of ``num_groups`` groups."""
    lists = {}
    for key in ("last_lrs", "initial_lrs"):
        values = state[key]
        if not isinstance(values, list | tuple) or len(values) not in (
            (0, num_groups) if key == "last_lrs" else (num_groups,)
        ):
            raise CheckpointStateError(
                f"{key} must hold one LR per parameter group ({num_groups}), got {str(values)[:80]}."
            )
        lists[key] = [check_number(v, f"{key}[{i}]") for i, v in enumerate(values)]
    if not lists["initial_lrs"][0] > 0:
        raise CheckpointStateError("initial_lrs[0] must be > 0 (the first group's LR is the reference of the others).")
    return check_int(state["last_epoch"], "last_epoch"), lists["last_lrs"], lists["initial_lrs"]


def check_optimizer_state(saved: Any, optimizer: torch.optim.Optimizer, field: str) -> None:
    """A torch optimizer's ``state_dict`` that ``optimizer`` can take: its groups' sizes and hyperparameters' types,
    and each parameter's state with the keys, shapes and values that one step of ``optimizer``'s kind gives."""
    if not isinstance(saved, Mapping) or set(saved) != {"state", "param_groups"}:
        raise CheckpointStateError(f"{field} is not an optimizer's state (keys 'state' and 'param_groups').")
    groups = optimizer.param_groups
    if not isinstance(saved["param_groups"], list) or len(saved["param_groups"]) != len(groups):
        raise CheckpointStateError(f"{field}['param_groups'] must hold {len(groups)} groups.")
    for g, (old, new) in enumerate(zip(saved["param_groups"], groups, strict=True)):
        for key, value in new.items():
            got = old.get(key) if isinstance(old, Mapping) else None
            if key == "params":
                if not isinstance(got, list) or len(got) != len(value):
                    raise CheckpointStateError(f"{field}['param_groups'][{g}]['params'] must list {len(value)}.")
            elif type(got) is not type(value) or (isinstance(value, float) and not math.isfinite(got)):
                raise CheckpointStateError(
                    f"{field}['param_groups'][{g}][{key!r}] must be like {value!r}, got {got!r}."
                )
    params = [p for group in groups for p in group["params"]]
    twins = [torch.zeros_like(p, requires_grad=True) for p in params]  # one step of this kind shows its state
    sizes = [len(group["params"]) for group in groups]
    starts = [sum(sizes[:g]) for g in range(len(groups))]
    twin = type(optimizer)(
        [
            {**group, "params": twins[start : start + size]}
            for group, start, size in zip(groups, starts, sizes, strict=True)
        ]
    )
    for t in twins:
        t.grad = torch.zeros_like(t)
    twin.step()
    state = saved["state"]
    if not isinstance(state, Mapping) or not set(state) <= set(range(len(params))):
        raise CheckpointStateError(f"{field}['state'] must be keyed by the indices of {len(params)} parameters.")
    for index, entry in state.items():
        expected = twin.state[twins[index]]
        where = f"{field}['state'][{index}]"
        if not isinstance(entry, Mapping) or set(entry) != set(expected):
            raise CheckpointStateError(f"{where} must hold {sorted(expected)}.")
        for key, reference in expected.items():
            value = entry[key]
            if key == "step":
                check_number(value, f"{where}['step']", positive=True)
            elif isinstance(reference, torch.Tensor):
                check_tensor(value, f"{where}[{key!r}]", tuple(reference.shape))
