"""Metrics for the Trainer's ``compute_metrics``: ``evaluate`` accuracy for images, perplexity for language models."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from importlib.resources import files
from typing import Any

import evaluate
import numpy as np
import torch
from transformers import EvalPrediction

logger = logging.getLogger(__name__)


def load_metric(name: str) -> evaluate.EvaluationModule:
    """``evaluate.load(name)``; when the Hub cannot be reached, the copy of the module shipped with this library."""
    try:
        return evaluate.load(name)
    except (FileNotFoundError, ConnectionError, OSError) as e:
        local = files("mlrsnet_hf.experiments.metric_modules").joinpath(name)
        if not local.joinpath(f"{name}.py").is_file():
            raise
        logger.info("evaluate could not load %r from the Hub (%s): using the copy shipped with mlrsnet_hf.", name, e)
        return evaluate.load(str(local))


def accuracy_metrics() -> tuple[Callable[[EvalPrediction], dict[str, float]], Callable[..., torch.Tensor]]:
    """``(compute_metrics, preprocess_logits_for_metrics)`` for classification: accuracy from ``evaluate``.

    The logits are reduced to their argmax on the device, so evaluation keeps no logits in memory.
    """
    metric = load_metric("accuracy")

    def preprocess(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=-1)

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        return metric.compute(predictions=prediction.predictions, references=prediction.label_ids)

    return compute, preprocess


def perplexity_metrics() -> tuple[Callable[[EvalPrediction], dict[str, float]], Callable[..., torch.Tensor]]:
    """``(compute_metrics, preprocess_logits_for_metrics)`` for language models: perplexity over all tokens.

    Each batch is reduced to its summed token negative log-likelihood on the device; perplexity is
    ``exp(total NLL / number of tokens)``.
    """

    def preprocess(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), reduction="none", ignore_index=-100
        )
        return nll.view(labels.shape).sum(dim=-1, keepdim=True)  # per sequence, so batches concatenate

    def compute(prediction: EvalPrediction) -> dict[str, Any]:
        tokens = int((np.asarray(prediction.label_ids) != -100).sum())
        mean = float(np.asarray(prediction.predictions, dtype=np.float64).sum()) / tokens
        perplexity = math.exp(mean) if mean < 709.0 else math.inf  # a diverged run: inf, not an OverflowError
        return {"perplexity": perplexity, "token_nll": mean}

    return compute, preprocess
