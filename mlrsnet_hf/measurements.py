"""What the drivers measure on the run's own data, the same way on every process.

:func:`average_training_loss` (``gamma="auto"`` at each stage start) and the in-order batches it and the LR
range test use; :func:`agree` raises an error met on one process on all of them, so none is left waiting in
a collective.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate.state import PartialState
from accelerate.utils import gather_object, reduce, send_to_device
from torch import nn
from torch.utils.data import DataLoader

from .meta_gradient import model_loss


def agree(error: str | None) -> None:
    """Raise ``ValueError`` on every process when any process met an error (so no rank waits in a collective)."""
    if PartialState().num_processes > 1:
        errors = [e for e in gather_object([error]) if e is not None]
        error = errors[0] if errors else None
    if error is not None:
        raise ValueError(error)


def loader_batch_size(loader: DataLoader | None) -> int | None:
    """This process's batch size of a data loader (None without a loader, or one that gives none).

    (Under several processes accelerate's loader reports no ``batch_size``; its ``total_batch_size`` counts
    every process, so the per-process size is that divided by the number of processes.)
    """
    size = getattr(loader, "batch_size", None)
    if size:
        return size
    total = getattr(loader, "total_batch_size", None)
    return max(1, total // PartialState().num_processes) if total else None


def ordered_batches(train_dataloader: DataLoader) -> DataLoader:
    """The training set in order, in this process's batch size and the run's collation; the run's loader is untouched."""
    return DataLoader(
        train_dataloader.dataset,
        batch_size=loader_batch_size(train_dataloader) or 1,
        collate_fn=train_dataloader.collate_fn,
        shuffle=False,
    )


@torch.no_grad()
def average_training_loss(
    model: nn.Module, train_dataloader: DataLoader | None, device: torch.device, num_batches: int
) -> float:
    """Mean loss over the first ``num_batches`` training batches of this process (in order, eval mode), over processes."""
    if train_dataloader is None:
        raise ValueError("gamma='auto' needs the training data to measure the average loss at stage starts.")
    state = PartialState()
    loader = ordered_batches(train_dataloader)
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    error = None
    try:
        for index, batch in enumerate(loader):
            if count == num_batches:
                break
            if index % state.num_processes != state.process_index:
                continue
            loss = model_loss(model(**send_to_device(batch, device)))
            if loss is None:
                error = "The model returned no loss on a training batch: gamma='auto' needs labels."
                break
            total += loss.double().mean()
            count += 1
    finally:
        model.train(was_training)
    if error is None and count == 0:
        error = (
            f"No training batch available to measure the average loss for gamma='auto' on process "
            f"{state.process_index} of {state.num_processes}: the training set has fewer batches than processes."
        )
    agree(error)
    mean = total / count
    if state.num_processes > 1:
        mean = reduce(mean, reduction="mean")
    return mean.item()


def check_labels(batch: dict[str, Any], label_names: list[str] | None, what: str) -> None:
    """Refuse a held-out batch that carries none of the labels its loss needs (caught at train start, not later)."""
    if label_names and not all(batch.get(name) is not None for name in label_names):
        raise ValueError(f"The {what} batches carry no {label_names}: its loss needs labels (got {sorted(batch)}).")


def default_num_classes(model: nn.Module) -> int | None:
    """C for a model: the vocabulary size of a language model, else ``config.num_labels``."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    get_output = getattr(model, "get_output_embeddings", None)
    is_lm = callable(get_output) and get_output() is not None
    if is_lm and getattr(config, "vocab_size", None):
        return int(config.vocab_size)
    return getattr(config, "num_labels", None)
