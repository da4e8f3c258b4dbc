"""What the library reads off the run's optimizer: the torch optimizer under accelerate's wrapper, and how its step
uses the LR (plain SGD or not, linear in the LR or not, a device LR applied without a host read or not)."""

from __future__ import annotations

import torch

# Optimizers whose update is linear in the LR (``w_{t+1} = w_t - lr * d`` with ``d`` independent of
# ``lr``): meta-training reads ``d`` off the real step for these.
LR_LINEAR_OPTIMIZERS = ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adamax", "NAdam", "RAdam")


def unwrap(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer itself: the one an ``accelerate`` ``AcceleratedOptimizer`` holds, else ``optimizer``."""
    return getattr(optimizer, "optimizer", optimizer)


def optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    """The class name of the torch optimizer (for messages and records)."""
    return type(unwrap(optimizer)).__name__


def is_sgd(optimizer: torch.optim.Optimizer) -> bool:
    return isinstance(unwrap(optimizer), torch.optim.SGD)


def is_lr_linear(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the update is linear in the LR (:data:`LR_LINEAR_OPTIMIZERS`), as meta-training needs."""
    return optimizer_name(optimizer) in LR_LINEAR_OPTIMIZERS


def takes_tensor_lr(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer applies a tensor LR on the device without reading it on the host.

    Fused SGD, Adam and AdamW do (``optim="adamw_torch_fused"``), and capturable Adam/AdamW; the other paths
    either refuse a tensor LR (foreach Adam) or turn it into a Python number inside the step (a device sync).
    """
    inner = unwrap(optimizer)
    groups = inner.param_groups
    if isinstance(inner, torch.optim.SGD):
        return all(g.get("fused") for g in groups)
    if isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
        return all(g.get("fused") or g.get("capturable") for g in groups)
    return False


def tensor_lr_dtype(optimizer: torch.optim.Optimizer) -> torch.dtype | None:
    """The dtype of the device LR that ``optimizer`` applies without a host read, or None where it needs a number.

    Where :func:`takes_tensor_lr`: the fused CUDA kernels read a float32 LR whatever the parameters' dtype
    (PyTorch 2.11's fused Adam refuses a float64 one); capturable Adam/AdamW computes with the LR in the
    parameters' dtype, so it gets float64 only when every parameter is float64.
    """
    if not takes_tensor_lr(optimizer):
        return None
    groups = unwrap(optimizer).param_groups
    double = all(p.dtype == torch.float64 for group in groups for p in group["params"])
    return torch.float64 if double and not any(group.get("fused") for group in groups) else torch.float32
