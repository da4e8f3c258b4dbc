"""The meta-gradient: an exact first-order hypergradient of the meta loss w.r.t. the schedule.

The real step is ``w_{t+1} = w_t - lr(theta) * d``, where ``d`` is the update direction the optimizer
applies (for SGD: gradient + weight decay through the momentum buffer; for Adam/AdamW: the
preconditioned moment plus decoupled decay). ``d`` does not depend on ``theta``, so

    dL_meta(w_{t+1}) / dtheta = dL_meta/dlr * dlr/dtheta,    dL_meta/dlr = -<grad L_meta(w_{t+1}), d>

with no second-order terms. For optimizers whose update is linear in the LR (SGD with momentum,
Adam, AdamW, ...) ``d = (w_t - w_{t+1}) / lr_t`` is read off the real step, so ``w'`` *is* the real
next iterate and the meta batch is evaluated at the model's own weights: one extra forward/backward,
no model copy, no ``create_graph``, and a single parameter-sized buffer (``w_t``).

A longer horizon (``meta_horizon=K``): the LRs of the last ``K`` steps before a meta update all depend on
``theta``, and ``w_{T+1} = w_{T-K+1} - sum_s lr_s(theta) d_s`` with the directions ``d_s`` read off the real
steps and held fixed (first order in the directions, as above; the second-order terms through later
gradients are dropped), so

    dL_meta(w_{T+1}) / dtheta = sum_s dL_meta/dlr_s * dlr_s/dtheta,    dL_meta/dlr_s = -<grad L_meta(w_{T+1}), d_s>

Each step's LR is judged by the meta loss ``T + 1 - s`` steps after it, not only one step after: less
short-horizon bias (Wu et al., 2018). It costs one parameter-sized buffer per step of the horizon
(``w_s - w_{s+1}``) and still one meta forward/backward per meta update.

The meta forward is the model's own forward on *cloned* buffers, in training mode: BatchNorm uses batch
statistics (as in the training step the LR acts on) but the real running statistics are not updated by
meta batches, and dropout stays active (the meta loss is the training objective's, measured on held-out
data). The meta gradient is a ``backward()`` into the parameters' ``.grad``, so it works for any
``nn.Module``, including one whose parameters are shards: under FSDP2 the parameters are ``DTensor``
shards, the gradient arrives reduce-scattered (averaged over processes) and ``<grad, d>`` is summed over
each process's shard, then over processes (:func:`lr_derivatives`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def model_loss(output: Any) -> torch.Tensor | None:
    """The loss a model returned: ``output["loss"]`` for dict-like outputs, else a tuple's first item or the output
    itself when it is a scalar tensor (a tuple of logits and features has no loss: None, not the logits)."""
    if isinstance(output, Mapping):
        return output.get("loss")
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    return output if isinstance(output, torch.Tensor) and output.dim() == 0 else None


def meta_loss(model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """The model's loss on ``batch`` at its current weights, without touching its buffers (BN statistics).

    Every buffer is swapped for a clone during the forward and put back after it, so in-place updates (BN
    running statistics) and reassignments (a carried LSTM state) both leave the real buffers as they were.
    """
    originals = [(module, name, b) for module in model.modules() for name, b in module.named_buffers(recurse=False)]
    for module, name, b in originals:
        setattr(module, name, b.clone())
    try:
        loss = model_loss(model(**batch))
    finally:
        for module, name, b in originals:
            setattr(module, name, b)
    if loss is None:
        raise ValueError("The model returned no loss on the meta batch: the meta dataset must provide labels.")
    return loss


def is_sharded(params: Sequence[torch.Tensor]) -> bool:
    """Whether the parameters are shards (FSDP2's ``DTensor`` shards): each process holds part of every one.

    A mix of shards and whole tensors (e.g. FSDP2's ``ignored_params``) is refused: their gradients are reduced
    differently, so no single rule gives the hypergradient.
    """
    kinds = {is_dtensor(p) for p in params}
    if kinds == {True, False}:
        raise ValueError(
            "Meta-training found both sharded (DTensor) and unsharded trainable parameters (e.g. FSDP2 ignored_params): "
            "shard every trainable parameter, or freeze the ignored ones."
        )
    return kinds == {True}


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's part of ``t``: the local shard of a ``DTensor``, else ``t`` itself."""
    return t.to_local() if is_dtensor(t) else t


def is_dtensor(t: Any) -> bool:
    """Whether ``t`` is a ``DTensor``. ``torch.distributed.tensor`` (a second of imports) is not imported for it:
    were ``t`` one, its module would be loaded already."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def _shard_groups(param: Any) -> list[Any]:
    from torch.distributed.tensor import Shard

    """The process groups over which ``param``'s local dot products must be summed (its sharded mesh dims)."""
    mesh = param.device_mesh
    return [mesh.get_group(dim) for dim, placement in enumerate(param.placements) if isinstance(placement, Shard)]


def lr_derivatives(
    meta_loss_value: torch.Tensor,
    params: Sequence[torch.Tensor],
    deltas: Sequence[Sequence[torch.Tensor]],
    lrs: Sequence[float],
) -> torch.Tensor:
    """``dL_meta/dlr_s = -<grad L_meta(w_{T+1}), d_s>`` for each step ``s`` of a horizon, as a float64 vector.

    ``params`` hold ``w_{T+1}`` (the model after the last step); ``deltas[s]`` holds ``w_s - w_{s+1}`` (what
    step ``s`` moved each parameter; local shards when ``params`` are sharded) and ``lrs[s]`` its LR, so
    ``d_s = deltas[s] / lrs[s]`` is the update direction read off the real step. One backward of the meta loss
    serves every step; each parameter's dot product is accumulated in float64. The gradients are left in
    ``.grad`` only for the duration of the call.

    With sharded parameters the backward averages the gradient over processes (as the training step's does) and
    each process sums its shards' products, so the result, summed over the shard groups here, is the
    hypergradient of the processes' mean meta loss, the same on every process. With whole parameters the result is
    this process's own; the caller averages it over processes (as DDP averages gradients).
    """
    params = list(params)
    sharded = is_sharded(params)
    for p in params:
        p.grad = None
    meta_loss_value.backward()
    try:
        grads = [None if p.grad is None else local(p.grad) for p in params]
        out = []
        for delta, lr in zip(deltas, lrs, strict=True):
            # one kernel per parameter (each is a launch on a GPU), the conversions only where needed
            dots = []
            for g, d in zip(grads, delta, strict=True):
                if g is not None:
                    d = local(d)
                    g = g if g.dtype == d.dtype else g.to(d.dtype)
                    d = d if d.device == g.device else d.to(g.device)
                    dots.append(torch.dot(g.reshape(-1), d.reshape(-1)))
            if len({x.dtype for x in dots}) > 1:
                dots = [x.double() for x in dots]
            dot = torch.stack(dots).double().sum() if dots else torch.zeros((), dtype=torch.float64)
            out.append(-dot.to(meta_loss_value.device) / lr)
        out = torch.stack(out)
        if sharded:
            groups = {id(group): group for p in params for group in _shard_groups(p)}
            for group in groups.values():
                dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    finally:
        for p in params:
            p.grad = None
    return out


def step_delta(before: Sequence[torch.Tensor], params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``w_t - w_{t+1}``, computed in place in ``before`` (which held ``w_t``): no new parameter-sized buffer."""
    return [b.sub_(p.detach()) for b, p in zip(before, params, strict=True)]


class MetaBatches:
    """Batches of the meta (held-out) dataset: shuffled per epoch, sharded over processes, resumable.

    Epoch ``e`` uses the permutation of ``torch.randperm(n, generator=seed + e)``; process ``r`` of
    ``P`` takes every ``P``-th index from ``r``; batches are full and equally many on every process
    (the remainder is dropped). The
    position ``(epoch, index)`` is the whole state.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        collate_fn: Callable[[list[Any]], Any],
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(dataset) < batch_size * world_size:
            raise ValueError(
                f"The meta dataset has {len(dataset)} examples, fewer than one batch of {batch_size} per process "
                f"({world_size} process(es))."
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.collate_fn = collate_fn
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.index = 0
        self._epoch_indices: tuple[int, list[int]] | None = None

    def _indices(self) -> list[int]:
        """This process's indices of the current epoch (computed once per epoch)."""
        if self._epoch_indices is None or self._epoch_indices[0] != self.epoch:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            perm = torch.randperm(len(self.dataset), generator=generator)
            per_round = self.batch_size * self.world_size  # every process gets the same number of full batches
            perm = perm[: len(perm) - len(perm) % per_round]
            self._epoch_indices = (self.epoch, perm[self.rank :: self.world_size].tolist())
        return self._epoch_indices[1]

    def next(self) -> Any:
        indices = self._indices()
        if self.index + self.batch_size > len(indices):
            self.epoch += 1
            self.index = 0
            indices = self._indices()
        batch = [self.dataset[i] for i in indices[self.index : self.index + self.batch_size]]
        self.index += self.batch_size
        return self.collate_fn(batch)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.index = int(state["index"])


def trainable_parameters(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]
