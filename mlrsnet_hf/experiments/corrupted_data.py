"""CIFAR-10-C / CIFAR-100-C for the paper's robustness study (Sec. 4.3), on ``datasets``.

The paper trains on one corruption of CIFAR-10-C / CIFAR-100-C (the 10,000 corrupted images of one
corruption at one severity: each corruption is one task), meta-learns from a clean set of 10 images per
class, and tests on the clean CIFAR training set. Here:

* **train**: the rows of the Hub copy ``randall-lab/cifar10-c`` (``randall-lab/cifar100-c``) whose
  ``corruption_name`` and ``corruption_level`` match; its schema: one split ``test`` with columns
  ``image`` (32x32 PNG), ``label``, ``corruption_name`` (e.g. ``"gaussian_noise"``) and
  ``corruption_level`` (1-5). A local directory in that layout works the same (``--dataset``).
  (At the time of writing the CIFAR-100-C copy is served by a loading script, which ``datasets`` 4 no
  longer runs: convert it to parquet, or pass a local copy.)
* **meta**: ``meta_per_class`` clean images per class, class-balanced, from the clean CIFAR training set
  (``uoft-cs/cifar10`` / ``uoft-cs/cifar100``, or ``--clean_dataset``);
* **test**: the rest of the clean CIFAR training set (the paper's test set, minus the meta images).

CIFAR-C's images are corruptions of the CIFAR *test* images, so the three sets share no image.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from datasets import DatasetDict

from .data import IMAGE_DATASETS, ImageDatasetSpec, balanced_split, image_transform, load_raw

# The 15 benchmark corruptions of CIFAR-10-C (the Hub copies also hold 4 extra ones, accepted as well).
CIFAR_C_CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)


@dataclasses.dataclass(frozen=True)
class CorruptedDatasetSpec:
    """Where a CIFAR-C copy lives and which clean dataset it corrupts."""

    clean: str  # a key of IMAGE_DATASETS
    hub_id: str
    split: str = "test"
    image_column: str = "image"
    label_column: str = "label"
    corruption_column: str = "corruption_name"
    severity_column: str = "corruption_level"


CORRUPTED_DATASETS = {
    "cifar10c": CorruptedDatasetSpec("cifar10", "randall-lab/cifar10-c"),
    "cifar100c": CorruptedDatasetSpec("cifar100", "randall-lab/cifar100-c"),
}


def load_corrupted_dataset(
    name: str,
    corruption: str,
    severity: int = 5,
    dataset: str | None = None,
    clean_dataset: str | None = None,
    meta_per_class: int = 10,
    seed: int = 0,
    **load_kwargs: Any,
) -> tuple[DatasetDict, ImageDatasetSpec]:
    """Train (one corruption at one severity), meta (clean, ``meta_per_class`` per class) and test (clean) splits.

    Returns ``(DatasetDict(train=..., meta=..., test=...), spec)`` with ``spec`` the clean dataset's; the
    images come out as ``{"pixel_values", "labels"}`` like :func:`~mlrsnet_hf.experiments.data.load_image_dataset`'s.
    """
    if name not in CORRUPTED_DATASETS:
        raise ValueError(f"Unknown corrupted dataset {name!r}: expected one of {', '.join(CORRUPTED_DATASETS)}.")
    if severity not in range(1, 6):
        raise ValueError(f"severity must be 1, 2, 3, 4 or 5, got {severity!r}.")
    spec = CORRUPTED_DATASETS[name]
    clean = IMAGE_DATASETS[spec.clean]
    source = dataset or spec.hub_id
    raw = load_raw(source, **load_kwargs)
    if spec.split not in raw:
        raise ValueError(f"{source} has no {spec.split!r} split (it has {list(raw)}): is it a CIFAR-C copy?")
    raw = raw[spec.split]
    columns = (spec.image_column, spec.label_column, spec.corruption_column, spec.severity_column)
    if missing := [c for c in columns if c not in raw.column_names]:
        raise ValueError(f"{source} has no {missing} column(s) (it has {raw.column_names}): is it a CIFAR-C copy?")
    train = raw.filter(
        lambda names, levels: [
            n == corruption and int(level) == severity for n, level in zip(names, levels, strict=True)
        ],
        input_columns=[spec.corruption_column, spec.severity_column],
        batched=True,
    )
    if len(train) == 0:
        present = sorted(set(raw[spec.corruption_column]))
        raise ValueError(
            f"{source} has no images of corruption {corruption!r} at severity {severity} (its corruptions: {present})."
        )
    clean_train = load_raw(clean_dataset or clean.hub_id, clean.config, **load_kwargs)[clean.train_split]
    meta_idx = balanced_split(
        clean_train[clean.label_column], meta_per_class * clean.num_classes, clean.num_classes, seed
    )
    test_idx = np.setdiff1d(np.arange(len(clean_train)), meta_idx)
    corrupted = dataclasses.replace(clean, image_column=spec.image_column, label_column=spec.label_column)
    splits = {
        "train": train.with_transform(image_transform(corrupted, train=True)),
        "meta": clean_train.select(meta_idx).with_transform(image_transform(clean, train=False)),
        "test": clean_train.select(test_idx).with_transform(image_transform(clean, train=False)),
    }
    return DatasetDict(splits), clean
