"""Small local datasets written in exactly the Hub repos' schemas and layouts, from scikit-learn's digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image, Value
from PIL import Image as PILImage
from sklearn.datasets import load_digits

# (layout folder, image column, label column, size, test split) of each Hub repo.
LAYOUTS = {
    "cifar10": ("plain_text", "img", "label", 32, "test", 10),
    "cifar100": ("cifar100", "img", "fine_label", 32, "test", 100),
    "svhn": ("cropped_digits", "image", "label", 32, "test", 10),
    "tiny-imagenet": ("data", "image", "label", 64, "valid", 200),
}


def digit_images(size: int, gray: bool = False) -> tuple[list[PILImage.Image], np.ndarray]:
    digits = load_digits()
    images = []
    for i, img in enumerate(digits.images):
        pixels = (img / 16 * 255).astype(np.uint8)
        picture = PILImage.fromarray(pixels, mode="L").resize((size, size))
        # TinyImageNet has some grayscale images: keep every 7th one gray there.
        images.append(picture if gray and i % 7 == 0 else picture.convert("RGB"))
    return images, digits.target


def write_hub_layout(root: Path, name: str, n_train: int = 600, n_test: int = 200) -> Path:
    folder, image_col, label_col, size, test_split, num_classes = LAYOUTS[name]
    images, labels = digit_images(size, gray=name == "tiny-imagenet")
    features = {image_col: Image(), label_col: ClassLabel(num_classes=num_classes)}
    if name == "cifar100":
        features["coarse_label"] = ClassLabel(num_classes=20)
    splits = {"train": slice(0, n_train), test_split: slice(n_train, n_train + n_test)}
    for split, rows in splits.items():
        data = {image_col: images[rows], label_col: [int(v) for v in labels[rows]]}
        if name == "cifar100":
            data["coarse_label"] = [int(v) % 20 for v in labels[rows]]
        out = root / folder / f"{split}-00000-of-00001.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        Dataset.from_dict(data, features=Features(features)).to_parquet(str(out))
    return root


def write_cifar_c_layout(root: Path, corruptions: tuple[str, ...] = ("gaussian_noise", "fog"), n: int = 120) -> Path:
    """A CIFAR-10-C copy in the Hub copy's schema (randall-lab/cifar10-c): one ``test`` split with ``image``,
    ``label``, ``corruption_name`` and ``corruption_level``; ``n`` images per corruption and severity."""
    images, labels = digit_images(32)
    rows: dict[str, list] = {"image": [], "label": [], "corruption_name": [], "corruption_level": []}
    for name in corruptions:
        for level in range(1, 6):
            rows["image"] += images[:n]
            rows["label"] += [int(v) for v in labels[:n]]
            rows["corruption_name"] += [name] * n
            rows["corruption_level"] += [level] * n
    features = Features({"image": Image(), "label": Value("int64"), "corruption_name": Value("string"),
                         "corruption_level": Value("int64")})  # fmt: skip
    out = root / "data" / "test-00000-of-00001.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(rows, features=features).to_parquet(str(out))
    return root


__all__ = ["LAYOUTS", "Value", "write_cifar_c_layout", "write_hub_layout"]
