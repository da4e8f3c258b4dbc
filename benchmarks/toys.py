"""The quality benchmark's small tasks that nothing else uses: MNIST-1D, its CNN, a small GPT-2 for PTB text, and a
regression task on generated data (a teacher function with noise, an MLP, the MSE metric).

The digits task, its networks and the PTB text splits are shared with the demo and live in
:mod:`mlrsnet_hf.experiments`; these are the benchmark's own (``tests/test_small_tasks.py`` checks them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import EvalPrediction, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput, ImageClassifierOutput
from transformers.utils import ModelOutput

from mlrsnet_hf.experiments.data import balanced_split, tensor_rows
from mlrsnet_hf.experiments.language_models import token_loss
from mlrsnet_hf.experiments.vision_models import classifier_output


def mnist1d_splits(seed: int = 0, meta_size: int = 500) -> dict[str, list[dict[str, Any]]]:
    """Train / meta / test splits of MNIST-1D (Greydanus, 2020), generated offline by the ``mnist1d`` package.

    The package's default dataset (4000 training and 1000 test signals of length 40, 10 classes) is
    generated, not downloaded; ``meta_size`` class-balanced training signals are held out as the meta set.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())
    x, y = np.asarray(data["x"]), np.asarray(data["y"])
    meta_idx = balanced_split(y, meta_size, 10, seed)
    train_idx = np.setdiff1d(np.arange(len(y)), meta_idx)
    return {
        "train": tensor_rows(x[train_idx], y[train_idx], (1, x.shape[1])),
        "meta": tensor_rows(x[meta_idx], y[meta_idx], (1, x.shape[1])),
        "test": tensor_rows(np.asarray(data["x_test"]), np.asarray(data["y_test"]), (1, x.shape[1])),
    }


class MNIST1DCNN(nn.Module):
    """The MNIST-1D reference CNN (Greydanus, 2020): three strided Conv1d layers of 25 channels, a linear head."""

    def __init__(self, num_labels: int = 10, channels: int = 25) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(1, channels, 5, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(channels * 5, num_labels),  # length 40 -> 19 -> 10 -> 5
        )  # fmt: skip

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ImageClassifierOutput:
        return classifier_output(self.net(pixel_values), labels)


class ShiftedLabelsLM(nn.Module):
    """A ``transformers`` causal LM trained on :class:`~mlrsnet_hf.experiments.data.LMChunks` (labels shifted).

    Causal LMs shift ``labels`` themselves; this wrapper takes the model's logits and computes the token
    cross-entropy against the given (pre-shifted) labels, exactly as the PTB LSTM
    (:class:`~mlrsnet_hf.experiments.language_models.LSTMForLanguageModeling`) does.
    """

    def __init__(self, lm: PreTrainedModel) -> None:
        super().__init__()
        self.lm = lm
        self.config = lm.config

    def get_output_embeddings(self) -> nn.Module:
        return self.lm.get_output_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        **kwargs,
    ) -> CausalLMOutput:
        logits = self.lm(input_ids=input_ids).logits
        return CausalLMOutput(loss=token_loss(logits, labels, num_items_in_batch), logits=logits)


def small_gpt2_lm(vocab_size: int, n_embd: int = 64, n_layer: int = 2, n_head: int = 2, n_positions: int = 64):
    """A small GPT-2 from ``transformers`` (random init) for word-level PTB, wrapped in :class:`ShiftedLabelsLM`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab_size, n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_positions=n_positions)
    return ShiftedLabelsLM(GPT2LMHeadModel(config))


def corrupted_digits_splits(
    variant: str, seed: int = 0, severity: int = 5, meta_per_class: int = 10
) -> dict[str, list[dict[str, Any]]]:
    """The digits task with a biased training set and a small clean meta set (the paper's Sec. 4.3 at CPU scale).

    The same test and training images as ``digits_splits(seed)``; the training images get one corruption of
    :mod:`mlrsnet_hf.experiments.corruptions` at ``severity`` (applied to the raw pixels in [0, 1]), or, with
    ``variant="labels40"``, 40 % of the training labels are flipped to another class. The meta set is
    ``meta_per_class`` clean images per class, drawn class-balanced from ``digits_splits``'s meta split.
    Pixels are standardised with the clean data's statistics, as in ``digits_splits``.
    """
    from sklearn.datasets import load_digits

    from mlrsnet_hf.experiments.corruptions import corrupt, symmetric_label_noise

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    test_idx, rest = order[:400], order[400:]
    meta_idx = rest[balanced_split(y[rest], 200, 10, seed)]
    train_idx = np.setdiff1d(rest, meta_idx)
    meta_idx = meta_idx[balanced_split(y[meta_idx], 10 * meta_per_class, 10, seed)]
    mean, std = x.mean(), x.std()
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y = x[train_idx], y[train_idx]
    if variant == "labels40":
        train_y = symmetric_label_noise(torch.as_tensor(train_y), 0.4, 10, generator).numpy()
    else:
        images = torch.as_tensor(train_x, dtype=torch.float32).reshape(-1, 8, 8) / 16
        train_x = corrupt(images, variant, severity, generator).reshape(len(train_idx), 64).double().numpy() * 16
    return {
        "train": tensor_rows((train_x - mean) / std, train_y, (1, 8, 8)),
        "meta": tensor_rows((x[meta_idx] - mean) / std, y[meta_idx], (1, 8, 8)),
        "test": tensor_rows((x[test_idx] - mean) / std, y[test_idx], (1, 8, 8)),
    }


def regression_splits(
    seed: int = 0, inputs: int = 16, sizes: tuple[int, int, int] = (2000, 500, 2000), noise: float = 0.3
) -> dict[str, list[dict[str, Any]]]:
    """Train / meta / test splits of a nonlinear regression problem, generated (deterministic for a ``seed``).

    ``x ~ N(0, I)`` in ``inputs`` dimensions; the teacher is a fixed random function, the same for every seed: a
    2-layer tanh network (32 units) plus a product of two inputs and a sine of a third, standardised to unit
    variance over the data; the target is the teacher plus Gaussian noise of standard deviation ``noise`` in every
    split (so the best possible test MSE is about ``noise ** 2``, 0.09; predicting the mean scores about 1.09).
    ``sizes``: the training, meta (validation) and test examples.
    """
    teacher = np.random.default_rng(1234)  # the task's function: fixed, whatever the data seed
    w1 = teacher.standard_normal((inputs, 32)) * 2 / np.sqrt(inputs)
    b1 = teacher.uniform(-1, 1, 32)
    w2 = teacher.standard_normal(32) / np.sqrt(32)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((sum(sizes), inputs))
    f = np.tanh(x @ w1 + b1) @ w2 + x[:, 0] * x[:, 1] + np.sin(2 * x[:, 2])
    f = (f - f.mean()) / f.std()
    y = f + noise * rng.standard_normal(len(f))
    bounds = np.cumsum((0, *sizes))
    return {
        name: [{"inputs": torch.tensor(xi, dtype=torch.float32), "labels": float(yi)}
               for xi, yi in zip(x[a:b], y[a:b], strict=True)]
        for name, a, b in zip(("train", "meta", "test"), bounds[:-1], bounds[1:], strict=True)
    }  # fmt: skip


@dataclass
class RegressionOutput(ModelOutput):
    """The loss (MSE) and the predictions (``logits``: one number per example, as the Trainer gathers them)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class RegressionMLP(nn.Module):
    """An MLP for :func:`regression_splits`: two hidden ReLU layers of 64 units, a scalar output, MSE loss."""

    def __init__(self, inputs: int = 16, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )  # fmt: skip

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor | None = None) -> RegressionOutput:
        predictions = self.net(inputs).squeeze(-1)
        loss = nn.functional.mse_loss(predictions, labels.to(predictions.dtype)) if labels is not None else None
        return RegressionOutput(loss=loss, logits=predictions)


def mse_metrics() -> tuple[Callable[[EvalPrediction], dict[str, float]], Callable[..., torch.Tensor]]:
    """``(compute_metrics, preprocess_logits_for_metrics)`` for regression: the mean squared error (``"mse"``)."""

    def preprocess(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return logits.float()

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        errors = np.asarray(prediction.predictions, dtype=np.float64) - np.asarray(prediction.label_ids)
        mse = float(np.mean(errors**2))
        return {"mse": mse if np.isfinite(mse) else float("inf")}  # a diverged run: inf, the worst

    return compute, preprocess
