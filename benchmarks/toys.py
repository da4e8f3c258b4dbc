"""The quality benchmark's small tasks that nothing else uses: MNIST-1D, its CNN, and a small GPT-2 for PTB text.

The digits task, its networks and the PTB text splits are shared with the demo and live in
:mod:`mlrsnet_hf.experiments`; these are the benchmark's own (``tests/test_small_tasks.py`` checks them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput, ImageClassifierOutput

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
