"""Tiny real tasks for Trainer tests: scikit-learn's bundled digits (8x8 images, 10 classes)."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch import nn


class DigitsNet(nn.Module):
    """An MLP with BatchNorm and dropout that returns ``{"loss", "logits"}`` like a transformers model."""

    def __init__(
        self, hidden: int = 32, dropout: float = 0.0, nan_at_call: int | None = None, batchnorm: bool = True
    ) -> None:
        super().__init__()
        norm = nn.BatchNorm1d(hidden) if batchnorm else nn.Identity()
        self.body = nn.Sequential(nn.Linear(64, hidden), norm, nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, 10)
        self.nan_at_call = nan_at_call  # report a NaN loss (with finite gradients) at this training forward
        self.calls = 0

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.head(self.body(x))
        out = {"logits": logits}
        if labels is not None:
            loss = nn.functional.cross_entropy(logits, labels)
            if self.training and torch.is_grad_enabled():
                self.calls += 1
                if self.calls == self.nan_at_call:
                    loss = loss + torch.tensor(float("nan"))  # constant: gradients stay finite
            out["loss"] = loss
        return out


def digits(n: int | None = None, dtype: torch.dtype = torch.float32) -> list[dict[str, torch.Tensor]]:
    x, y = load_digits(return_X_y=True)
    data = [
        {"x": torch.tensor(a, dtype=dtype) / 16, "labels": torch.tensor(int(b))} for a, b in zip(x, y, strict=True)
    ]
    return data[:n] if n else data
