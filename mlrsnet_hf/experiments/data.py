"""The paper's data on ``datasets``: image classification sets and the held-out meta split.

Images are loaded with ``datasets.load_dataset`` from their Hub ids (or a local directory in the Hub
repo's own layout, e.g. what ``hf download`` leaves: ``data/train-*.parquet``) and transformed on the
fly with ``with_transform``, in torch (no torchvision): training images get the standard
augmentation (4-pixel zero padding, random 32x32 / 64x64 crop, horizontal flip), every image the
per-dataset normalisation. Examples come out as ``{"pixel_values": (3, H, W) float tensor, "labels": int}``.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from datasets import DatasetDict, load_dataset

from ..repo_files import looks_local

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageDatasetSpec:
    """Where an image dataset lives on the Hub and how to read and normalise it."""

    hub_id: str
    image_column: str
    label_column: str
    num_classes: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    config: str | None = None
    train_split: str = "train"
    test_split: str = "test"


IMAGE_DATASETS: dict[str, ImageDatasetSpec] = {
    "cifar10": ImageDatasetSpec(
        "uoft-cs/cifar10", "img", "label", 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ),
    "cifar100": ImageDatasetSpec(
        "uoft-cs/cifar100", "img", "fine_label", 100, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    ),
    "svhn": ImageDatasetSpec(
        "ufldl-stanford/svhn",
        "image",
        "label",
        10,
        32,
        (0.4377, 0.4438, 0.4728),
        (0.1980, 0.2010, 0.1970),
        config="cropped_digits",
    ),
    "tiny-imagenet": ImageDatasetSpec(
        "zh-plus/tiny-imagenet",
        "image",
        "label",
        200,
        64,
        (0.4802, 0.4481, 0.3975),
        (0.2770, 0.2691, 0.2821),
        test_split="valid",
    ),
}


def to_tensor(image: Any) -> torch.Tensor:
    """A PIL image or array as a ``(3, H, W)`` float tensor in [0, 1]; grayscale is repeated to RGB."""
    array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def random_crop_flip(image: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """The standard CIFAR augmentation: zero-pad by ``padding``, crop back at a random offset, flip half the time."""
    _, height, width = image.shape
    padded = torch.nn.functional.pad(image, (padding, padding, padding, padding))
    top, left = torch.randint(0, 2 * padding + 1, (2,), generator=generator).tolist()
    out = padded[:, top : top + height, left : left + width]
    if torch.rand((), generator=generator).item() < 0.5:
        out = out.flip(-1)
    return out


def image_transform(spec: ImageDatasetSpec, train: bool) -> Callable[[dict[str, list]], dict[str, list]]:
    """The ``with_transform`` function for a split: to tensor, (augment), normalise, rename to the model's inputs."""
    mean = torch.tensor(spec.mean).view(3, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1)

    def transform(batch: dict[str, list]) -> dict[str, list]:
        pixels = []
        for image in batch[spec.image_column]:
            x = to_tensor(image)
            if x.shape[-2:] != (spec.image_size, spec.image_size):
                raise ValueError(f"Expected {spec.image_size}x{spec.image_size} images, got {tuple(x.shape[-2:])}.")
            if train:
                x = random_crop_flip(x)
            pixels.append((x - mean) / std)
        return {"pixel_values": pixels, "labels": list(batch[spec.label_column])}

    return transform


def balanced_split(labels: list[int] | np.ndarray, size: int, num_classes: int, seed: int = 0) -> np.ndarray:
    """Indices of ``size`` random examples with counts per class as equal as the data allows.

    Classes take one example each in turn (in a seeded random order of classes), skipping classes that
    have run out, so short classes give all they have and the rest is spread evenly over the others.
    """
    labels = np.asarray(labels)
    if size > len(labels):
        raise ValueError(f"Cannot take a meta set of {size} from {len(labels)} examples.")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"Labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}].")
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
    available = np.array([len(idx) for idx in per_class])
    take = np.zeros(num_classes, dtype=int)
    full_rounds = min(size // num_classes, int(available.min()))
    take[:] = full_rounds
    order = rng.permutation(num_classes)
    while take.sum() < size:
        for c in order:
            if take.sum() == size:
                break
            if take[c] < available[c]:
                take[c] += 1
    return np.sort(np.concatenate([idx[:k] for idx, k in zip(per_class, take, strict=True)]))


def load_image_dataset(
    name: str, dataset: str | None = None, meta_size: int = 1000, seed: int = 0, **load_kwargs: Any
) -> tuple[DatasetDict, ImageDatasetSpec]:
    """Train / meta / test splits of one of :data:`IMAGE_DATASETS`, transformed for training.

    Args:
        name: ``"cifar10"``, ``"cifar100"``, ``"svhn"`` or ``"tiny-imagenet"``.
        dataset: a Hub id or a local directory in the Hub repo's layout; defaults to the spec's Hub id.
        meta_size: examples carved from the training set for the meta (validation) split, class-balanced
            (the paper: 1000); 0 for none.
        seed: for the meta split.

    Returns ``(DatasetDict(train=..., meta=..., test=...), spec)``; "train" has the augmentation.
    """
    if name not in IMAGE_DATASETS:
        raise ValueError(f"Unknown image dataset {name!r}: expected one of {', '.join(IMAGE_DATASETS)}.")
    spec = IMAGE_DATASETS[name]
    raw = load_raw(dataset or spec.hub_id, spec.config, **load_kwargs)
    for split in (spec.train_split, spec.test_split):
        if split not in raw:
            raise ValueError(f"{dataset or spec.hub_id} has no {split!r} split (it has {list(raw)}).")
    for column in (spec.image_column, spec.label_column):
        if column not in raw[spec.train_split].column_names:
            raise ValueError(
                f"{dataset or spec.hub_id} has no {column!r} column (it has {raw[spec.train_split].column_names}): "
                f"is it really {name}?"
            )
    train, test = raw[spec.train_split], raw[spec.test_split]
    splits = {}
    if meta_size:
        meta_idx = balanced_split(train[spec.label_column], meta_size, spec.num_classes, seed)
        keep = np.setdiff1d(np.arange(len(train)), meta_idx)
        splits["meta"] = train.select(meta_idx).with_transform(image_transform(spec, train=False))
        train = train.select(keep)
    splits["train"] = train.with_transform(image_transform(spec, train=True))
    splits["test"] = test.with_transform(image_transform(spec, train=False))
    return DatasetDict(splits), spec


def load_raw(path: str, config: str | None = None, **load_kwargs: Any) -> DatasetDict:
    """``load_dataset`` on a Hub id or a local directory in the Hub repo's layout; a local path (``./x``, ``/x``,
    ``~/x``, ``a/b/c``...) that is no directory is a ``ValueError`` at once, not a Hub lookup."""
    if os.path.isfile(path):
        raise ValueError(f"--dataset {path} is a file: pass the directory that holds the dataset's files.")
    if not os.path.isdir(path) and looks_local(path):
        raise ValueError(f"--dataset {path}: no such directory (a local path, so no Hub dataset was looked up).")
    if os.path.isdir(path):
        if config and os.path.isdir(os.path.join(path, config)):
            return load_dataset(path, data_dir=config, **load_kwargs)
        return load_dataset(path, **load_kwargs)
    return load_dataset(path, config, **load_kwargs)


# ------------------------------------------------------------------ Penn Treebank
PTB_HUB_ID = "ptb-text-only/ptb_text_only"
PTB_FILES = {"train": "ptb.train.txt", "validation": "ptb.valid.txt", "test": "ptb.test.txt"}
EOS = "<eos>"


def load_ptb(dataset: str | None = None, **load_kwargs: Any) -> dict[str, list[str]]:
    """PTB sentences per split (``train``, ``validation``, ``test``: those present).

    ``dataset`` is the Hub id (default ``ptb-text-only/ptb_text_only``, column ``sentence``), a local
    copy of it, or a directory of Mikolov's ``ptb.{train,valid,test}.txt`` files (one sentence a line).
    """
    path = dataset or PTB_HUB_ID
    if os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in PTB_FILES.values()):
        splits = {}
        for split, name in PTB_FILES.items():
            file = os.path.join(path, name)
            if os.path.isfile(file):
                with open(file, encoding="utf-8") as f:
                    splits[split] = [line.strip() for line in f if line.strip()]
        return splits
    raw = load_raw(path, **load_kwargs)
    if "sentence" not in raw[next(iter(raw))].column_names:
        raise ValueError(f"{path} has no 'sentence' column: is it Penn Treebank ({PTB_HUB_ID})?")
    return {split: [s.strip() for s in raw[split]["sentence"] if s.strip()] for split in raw}


def build_vocabulary(*corpora: list[str]) -> list[str]:
    """Words in order of first appearance, ``<eos>`` included (the PTB files share one 10k vocabulary)."""
    index: dict[str, None] = {}
    for sentences in corpora:
        for sentence in sentences:
            for word in [*sentence.split(), EOS]:
                index.setdefault(word, None)
    return list(index)


def encode(sentences: list[str], vocabulary: list[str]) -> torch.Tensor:
    """Word ids of the sentences, each followed by ``<eos>``; unknown words become ``<unk>``."""
    ids = {word: i for i, word in enumerate(vocabulary)}
    unk = ids.get("<unk>")
    out = []
    for sentence in sentences:
        for word in [*sentence.split(), EOS]:
            if word not in ids and unk is None:
                raise ValueError(f"Word {word!r} is not in the vocabulary, which has no '<unk>'.")
            out.append(ids.get(word, unk))
    return torch.tensor(out, dtype=torch.long)


class LMChunks(torch.utils.data.Dataset):
    """Contiguous language-model batches (the paper's batching): ``batch_size`` parallel streams, ``seq_len`` steps.

    The token sequence is cut into ``batch_size`` equal streams; example ``i`` is chunk ``i // batch_size``
    of stream ``i % batch_size``, with ``labels`` the inputs shifted by one token. Read in order with batches
    of ``batch_size`` (``train_sampling_strategy="sequential"``), batch ``t`` continues batch ``t - 1`` in
    every stream, so a model can carry its hidden state across batches.
    """

    def __init__(self, ids: torch.Tensor, batch_size: int, seq_len: int = 35) -> None:
        stream_len = len(ids) // batch_size
        if stream_len < seq_len + 1:
            raise ValueError(f"{len(ids)} tokens are too few for {batch_size} streams of {seq_len + 1} tokens.")
        self.streams = ids[: stream_len * batch_size].view(batch_size, stream_len)
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.num_chunks = (stream_len - 1) // seq_len

    def __len__(self) -> int:
        return self.num_chunks * self.batch_size

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        chunk, stream = divmod(i, self.batch_size)
        start = chunk * self.seq_len
        row = self.streams[stream]
        return {"input_ids": row[start : start + self.seq_len], "labels": row[start + 1 : start + self.seq_len + 1]}


def load_ptb_lm(
    dataset: str | None = None,
    batch_size: int = 32,
    seq_len: int = 35,
    eval_batch_size: int = 10,
    train_split: str = "train",
    meta_split: str | None = "validation",
    test_split: str = "test",
    **load_kwargs: Any,
) -> tuple[dict[str, LMChunks | None], list[str]]:
    """PTB as contiguous LM batches: ``({"train", "meta", "test"}, vocabulary)``.

    The meta split is PTB's validation split (the paper's setting); with only the validation and test
    files at hand (e.g. a CPU-scale run), carve splits apart with ``datasets``' slice syntax, e.g.
    ``train_split="validation[:90%]", meta_split="validation[90%:]"``. Overlapping splits are refused;
    ``meta_split=None``: no meta split (``"meta"`` is None; a transfer does not read one). The vocabulary covers all
    splits, as in the standard PTB setup. The schedule's
    loss input is the loss divided by ``ln(len(vocabulary))`` (``input_normalization="log_num_classes"``).
    """
    sentences = load_ptb(dataset, **load_kwargs)
    roles = {"train": train_split, "meta": meta_split, "test": test_split}
    ranges = disjoint_splits({role: split for role, split in roles.items() if split is not None})
    for role, (name, _, _) in ranges.items():
        if name not in sentences:
            raise ValueError(
                f"PTB split {name!r} ({role}) not found (have {sorted(sentences)}): choose the splits with "
                "--train_split, --meta_split and --test_split, e.g. --train_split 'validation[:90%]' "
                "--meta_split 'validation[90%:]' with only the validation and test text."
            )
    vocabulary = build_vocabulary(*(sentences[s] for s in ("train", "validation", "test") if s in sentences))

    def part(role: str) -> list[str]:
        name, start, end = ranges[role]
        rows = sentences[name]
        return rows[round(start * len(rows)) : round(end * len(rows))]

    chunks = {
        "train": LMChunks(encode(part("train"), vocabulary), batch_size, seq_len),
        "meta": LMChunks(encode(part("meta"), vocabulary), batch_size, seq_len) if meta_split is not None else None,
        "test": LMChunks(encode(part("test"), vocabulary), eval_batch_size, seq_len),
    }
    return chunks, vocabulary


def disjoint_splits(specs: dict[str, str]) -> dict[str, tuple[str, float, float]]:
    """Each role's split (``{"train": "validation[:90%]", ...}``) as :func:`split_range`; overlapping ones refused.

    Raises ``ValueError`` naming the two roles when two parts of the same split share examples.
    """
    ranges = {role: split_range(spec) for role, spec in specs.items()}
    for (a, (name_a, start_a, end_a)), (b, (name_b, start_b, end_b)) in itertools.combinations(ranges.items(), 2):
        if name_a == name_b and max(start_a, start_b) < min(end_a, end_b):
            raise ValueError(
                f"The {a} and {b} splits overlap ({name_a} [{start_a:g}, {end_a:g}) and [{start_b:g}, {end_b:g})): "
                "give disjoint splits, e.g. 'validation[:90%]' and 'validation[90%:]'."
            )
    return ranges


def split_range(spec: str) -> tuple[str, float, float]:
    """``"validation"`` -> ``("validation", 0, 1)``; ``"validation[:90%]"`` -> ``("validation", 0, 0.9)`` (``datasets``' slice syntax, in %)."""
    match = re.fullmatch(r"(\w+)(?:\[(?:(\d+)%)?:(?:(\d+)%)?\])?", spec)
    if match is None:
        raise ValueError(
            f"Cannot read the split {spec!r}: expected a name, optionally sliced like 'validation[:90%]'."
        )
    name, start, end = match.groups()
    start, end = float(start or 0) / 100, float(end or 100) / 100
    if not 0 <= start < end <= 1:
        raise ValueError(f"The split {spec!r} selects nothing.")
    return name, start, end


# --- Small real tasks that train in seconds on a CPU (the demo, the quality benchmark) ---


def tensor_rows(x: np.ndarray, y: np.ndarray, shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """Examples ``{"pixel_values": float tensor of ``shape``, "labels": int}`` from feature rows and labels."""
    return [
        {"pixel_values": torch.tensor(xi, dtype=torch.float32).view(shape), "labels": int(yi)}
        for xi, yi in zip(x, y, strict=True)
    ]


def digits_splits(seed: int = 0, test_size: int = 400, meta_size: int = 200) -> dict[str, list[dict[str, Any]]]:
    """Train / meta / test splits of scikit-learn's bundled 8x8 digits (1797 real images, 10 classes).

    ``test_size`` random images are the test set; ``meta_size`` class-balanced images of the rest are the
    held-out meta (validation) set; the remaining ~1200 are the training set. Pixels are standardised.
    """
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    test_idx, rest = order[:test_size], order[test_size:]
    meta_idx = rest[balanced_split(y[rest], meta_size, 10, seed)]
    train_idx = np.setdiff1d(rest, meta_idx)
    x = (x - x.mean()) / x.std()
    return {
        name: tensor_rows(x[i], y[i], (1, 8, 8))
        for name, i in (("train", train_idx), ("meta", meta_idx), ("test", test_idx))
    }


def ptb_small_splits(
    dataset: str, batch_size: int = 20, seq_len: int = 35, eval_batch_size: int = 20, meta_fraction: float = 0.25
) -> tuple[dict[str, LMChunks], list[str]]:
    """PTB from its validation and test files only (the text in ``../shared/data/ptb``), for CPU-scale runs.

    Train on the validation text (~74k words); the first ``meta_fraction`` of the test sentences are the
    meta (validation) set, the rest the test set, so the three never overlap.
    """
    sentences = load_ptb(dataset)
    for split in ("validation", "test"):
        if split not in sentences:
            raise ValueError(f"PTB split {split!r} not found in {dataset} (have {sorted(sentences)}).")
    vocabulary = build_vocabulary(*(sentences[s] for s in ("train", "validation", "test") if s in sentences))
    cut = int(len(sentences["test"]) * meta_fraction)
    chunks = {
        "train": LMChunks(encode(sentences["validation"], vocabulary), batch_size, seq_len),
        "meta": LMChunks(encode(sentences["test"][:cut], vocabulary), eval_batch_size, seq_len),
        "test": LMChunks(encode(sentences["test"][cut:], vocabulary), eval_batch_size, seq_len),
    }
    return chunks, vocabulary
