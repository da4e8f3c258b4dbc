"""Metrics wired into compute_metrics: evaluate accuracy and LM perplexity."""

import math

import pytest
import torch
from tiny import DigitsNet, digits
from transformers import Trainer, TrainingArguments

from mlrsnet_hf.experiments.data import LMChunks
from mlrsnet_hf.experiments.language_models import lstm_lm
from mlrsnet_hf.experiments.metrics import accuracy_metrics, load_metric, perplexity_metrics


def args(tmp_path, **kwargs):
    return TrainingArguments(output_dir=str(tmp_path), report_to="none", disable_tqdm=True, use_cpu=True, **kwargs)


def test_accuracy_module():
    metric = load_metric("accuracy")  # the Hub's module, or the shipped copy when offline
    assert metric.compute(predictions=[0, 1, 2, 2], references=[0, 1, 1, 2])["accuracy"] == 0.75
    assert metric.compute(predictions=[0, 1], references=[0, 0], normalize=False)["accuracy"] == 1.0
    assert metric.compute(predictions=[0, 1], references=[0, 0], sample_weight=[3, 1])["accuracy"] == 0.75


def test_accuracy_in_trainer_evaluate(tmp_path):
    torch.manual_seed(0)
    model = DigitsNet().eval()
    data = digits(300)
    compute, preprocess = accuracy_metrics()
    trainer = Trainer(
        model=model, args=args(tmp_path, per_device_eval_batch_size=50), eval_dataset=data, compute_metrics=compute,
        preprocess_logits_for_metrics=preprocess,
    )  # fmt: skip
    metrics = trainer.evaluate()
    with torch.no_grad():
        logits = model(torch.stack([d["x"] for d in data]))["logits"]
    expected = (logits.argmax(-1) == torch.stack([d["labels"] for d in data])).float().mean().item()
    assert metrics["eval_accuracy"] == pytest.approx(expected)


def test_perplexity_in_trainer_evaluate(tmp_path):
    torch.manual_seed(0)
    model = lstm_lm(40, hidden_size=16, dropout=0.0)
    chunks = LMChunks(torch.randint(0, 40, (2000,)), batch_size=10, seq_len=7)
    compute, preprocess = perplexity_metrics()
    trainer = Trainer(
        model=model, args=args(tmp_path, per_device_eval_batch_size=10), eval_dataset=chunks,
        compute_metrics=compute, preprocess_logits_for_metrics=preprocess,
    )  # fmt: skip
    metrics = trainer.evaluate()
    # Every batch has the same number of tokens, so exp(mean batch loss) is the token-level perplexity.
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]), rel=1e-4)
    assert 20 < metrics["eval_perplexity"] < 80  # an untrained model on 40 random words: about 40
