"""The task registry: what a benchmark trains on (data, model factory, metric, step budget, batch, clipping).

A task is one :class:`Task` entry of :data:`TASKS`; a biased-training-set variant of one (robustness.py's: a
CIFAR-10-C corruption or label noise on the digits) is a :class:`Task` too, made with :meth:`Task.biased`, not a
string to parse. The rows (:mod:`common.rows`) take their LR grids from the task's ``lr_ranges``. The data and models
are the library's (:mod:`mlrsnet_hf.experiments`) and the benchmark's own small ones (``benchmarks/toys.py``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import torch
from toys import MNIST1DCNN, RegressionMLP, corrupted_digits_splits, mnist1d_splits, mse_metrics, regression_splits
from toys import small_gpt2_lm as _small_gpt2_lm

from mlrsnet_hf.experiments.corruptions import CORRUPTIONS
from mlrsnet_hf.experiments.data import digits_splits, ptb_small_splits
from mlrsnet_hf.experiments.language_models import lstm_lm
from mlrsnet_hf.experiments.metrics import accuracy_metrics, perplexity_metrics
from mlrsnet_hf.experiments.vision_models import DigitsCNN

from . import SHARED

# The tasks' metrics, and whether larger is better.
HIGHER_IS_BETTER = {"accuracy": True, "perplexity": False, "mse": False}
Data = dict[str, Any]  # train / meta / val / test sets, "model" (a factory), "metrics", "num_classes" (None: none)


@dataclasses.dataclass(frozen=True)
class Task:
    """One task of the benchmarks. ``data(task, quick)`` loads its sets and names its model factory and metrics."""

    name: str
    modality: str  # "image", "text" or "tabular"
    metric: str  # a key of HIGHER_IS_BETTER: what the tables report (test) and the LR grids choose by (validation)
    steps: int
    batch: int
    sgd_grid: tuple[float, ...]  # where the LRs of plain SGD lie on this task (the "sgd" rows' grid)
    adam_grid: tuple[float, ...]  # the same for Adam-type optimizers (the "adam" rows' grid)
    clip: float
    weight_decay: float
    source: str  # the task whose meta-trained schedule is transferred here
    gamma: str  # MLR-SNet's LR scale here (meta-trained and transferred): the paper's 1 (images) / 40 (text)
    description: str
    data: Callable[[Task, bool], Data] = dataclasses.field(repr=False, compare=False, default=None)
    variant: str | None = None  # a biased training set (see :meth:`biased`); None: the task as it is

    @property
    def paper_scale(self) -> float:
        """The paper's gamma as a number: the reference LR of the rows that learn the scale (GPT-2's "auto": 1)."""
        return 1.0 if self.gamma == "auto" else float(self.gamma)

    def lr_range(self, family: str) -> tuple[float, ...]:
        """The LR grid of an optimizer family ("sgd" or "adam") on this task."""
        return {"sgd": self.sgd_grid, "adam": self.adam_grid}[family]

    def biased(self, variant: str) -> Task:
        """This task with a biased training set: a corruption of :data:`CORRUPTIONS` or ``"labels40"`` (40 % of the
        labels flipped); its meta/validation set is 10 clean images per class. Named ``"<task>@<variant>"`` in the
        results files."""
        return dataclasses.replace(self, name=f"{self.name}@{variant}", variant=variant,
                                   description=f"{self.description}; training set: {variant}", data=_biased_digits)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """The entry as the results files record it (the data loader left out)."""
        entry = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("data", "variant")}
        return entry | ({"variant": self.variant} if self.variant else {})


def _classifier(splits: dict[str, Any], model: Callable[[], torch.nn.Module]) -> Data:
    return {**splits, "val": splits["meta"], "model": model, "metrics": accuracy_metrics(), "num_classes": 10}


def _digits(task: Task, quick: bool) -> Data:
    return _classifier(digits_splits(0), DigitsCNN)


def _mnist1d(task: Task, quick: bool) -> Data:
    return _classifier(mnist1d_splits(0), MNIST1DCNN)


def _biased_digits(task: Task, quick: bool) -> Data:
    """The biased training set, a clean meta set of 10 per class (also the baselines' validation set)."""
    return _classifier(corrupted_digits_splits(task.variant, seed=0), DigitsCNN)


def _regression(task: Task, quick: bool) -> Data:
    splits = regression_splits(0)
    return {**splits, "val": splits["meta"], "model": RegressionMLP, "metrics": mse_metrics(), "num_classes": None}


def _ptb(model: Callable[[int], torch.nn.Module]) -> Callable[[Task, bool], Data]:
    """PTB text (train on ptb.valid; the test file cut into a validation quarter and a test rest) for ``model(V)``."""

    def load(task: Task, quick: bool) -> Data:
        ptb = SHARED / "data" / "ptb"
        if not (ptb / "ptb.valid.txt").is_file():
            raise FileNotFoundError(f"Penn Treebank text not found in {ptb} (task {task.name}).")
        chunks, vocab = ptb_small_splits(str(ptb), batch_size=task.batch, seq_len=35, eval_batch_size=20)
        n_val, n_test = (40, 40) if quick else (100, 600)  # 3.5k / 21k tokens: cheap periodic evaluation
        return {
            "train": chunks["train"], "meta": chunks["meta"],
            "val": torch.utils.data.Subset(chunks["meta"], range(n_val)),
            "test": torch.utils.data.Subset(chunks["test"], range(n_test)),
            "model": functools.partial(model, len(vocab)), "metrics": perplexity_metrics(), "num_classes": len(vocab),
        }  # fmt: skip

    return load


def _lstm(vocab: int) -> torch.nn.Module:
    return lstm_lm(vocab, hidden_size=128, dropout=0.3)


def _gpt2(vocab: int) -> torch.nn.Module:
    return _small_gpt2_lm(vocab)


TASKS = {
    t.name: t
    for t in (
        Task("digits-cnn", "image", "accuracy", 600, 64, (0.1, 0.3, 1.0, 3.0), (1e-3, 3e-3, 1e-2, 3e-2), 1.0, 5e-4, "mnist1d-cnn", "1",
             "2-layer CNN on scikit-learn's 8x8 digits (1197 train / 200 val / 400 test)", _digits),
        Task("mnist1d-cnn", "image", "accuracy", 600, 100, (0.1, 0.3, 1.0, 3.0), (1e-3, 3e-3, 1e-2, 3e-2), 1.0, 5e-4, "digits-cnn", "1",
             "MNIST-1D reference CNN (3500 train / 500 val / 1000 test)", _mnist1d),
        Task("ptb-lstm", "text", "perplexity", 200, 10, (10.0, 30.0, 90.0), (1e-3, 3e-3, 1e-2), 0.25, 0.0, "digits-cnn", "40",
             "2-layer LSTM (128 units) on PTB text, batch 10 x 35 tokens", _ptb(_lstm)),
        Task("ptb-gpt2", "text", "perplexity", 200, 10, (0.3, 1.0, 3.0), (1e-3, 3e-3, 1e-2), 1.0, 0.0, "digits-cnn", "auto",
             "GPT-2 (2 layers, 64 wide, transformers) on PTB text, batch 10 x 35 tokens", _ptb(_gpt2)),
        Task("regression-mlp", "tabular", "mse", 600, 64, (0.1, 0.3, 1.0, 3.0), (1e-3, 3e-3, 1e-2, 3e-2), 1.0, 1e-4,
             "digits-cnn", "1",
             "MLP (16-64-64-1) on a generated nonlinear regression, noise std 0.3 (2000 train / 500 val / 2000 test)",
             _regression),
    )
}  # fmt: skip
# robustness.py's tasks: the digits with a biased training set, every corruption family and 40 % label noise
VARIANTS = {v: TASKS["digits-cnn"].biased(v) for v in (*CORRUPTIONS, "labels40")}
ALL_TASKS = {**TASKS, **{t.name: t for t in VARIANTS.values()}}
# the quality benchmark's: every task, and digits with 40 % of its training labels flipped
QUALITY_TASKS = (*TASKS, VARIANTS["labels40"].name)


def task_spec(name: str) -> Task:
    """The task named ``name`` (a key of :data:`TASKS`, or a variant's ``"digits-cnn@<variant>"``)."""
    if name not in ALL_TASKS:
        raise ValueError(f"Unknown task {name!r}: expected one of {', '.join(ALL_TASKS)}.")
    return ALL_TASKS[name]


def task_data(name: str, quick: bool) -> Data:
    """Train / val / test sets, the meta set, the model factory, metrics and C (None: no classes) for one task."""
    task = task_spec(name)
    return task.data(task, quick)
