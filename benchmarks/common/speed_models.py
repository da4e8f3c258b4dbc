"""The speed benchmark's small models, synthetic data, timer and peak-memory reader (``benchmarks/speed.py``)."""

from __future__ import annotations

import resource
import statistics
import time

import torch
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(
            block(3, width, 1), block(width, 2 * width, 2), block(2 * width, 4 * width, 2), nn.AdaptiveAvgPool2d(1)
        )
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.fc(self.features(x).flatten(1))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


def synthetic(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return [{"x": x[i], "labels": y[i]} for i in range(n)]


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def timed(fn, repeats: int, device: str, warmup: int = 2) -> float:
    """Median milliseconds of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


class WideMLP(nn.Module):
    """Parameter-heavy (about 23M parameters) so that a parameter-sized buffer shows in peak memory."""

    def __init__(self, width: int = 2048, depth: int = 5) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(3 * 32 * 32, width), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.fc(self.body(x))
        return {"logits": logits, "loss": nn.functional.cross_entropy(logits, labels)}


class LinearClassifier(nn.Module):
    """64 -> 10, for steps where the Trainer's own cost dominates (the overhead benchmarks)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.fc(x)
        return {"logits": logits, "loss": nn.functional.cross_entropy(logits, labels)}

    @staticmethod
    def examples(n: int) -> list[dict[str, torch.Tensor]]:
        """``n`` synthetic examples (seeded: the same in every run)."""
        g = torch.Generator().manual_seed(0)
        return [{"x": torch.randn(64, generator=g), "labels": torch.randint(0, 10, (), generator=g)} for _ in range(n)]


# Each transfer configuration of the overhead table, and the Trainer + cosine run with the same optimizer.
