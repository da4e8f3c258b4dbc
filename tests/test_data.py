"""Image datasets in their Hub schemas (built locally from scikit-learn's digits): loading, transforms, meta split."""

import numpy as np
import pytest
import torch
from hub_data import LAYOUTS, write_hub_layout

from mlrsnet_hf.experiments.data import IMAGE_DATASETS, balanced_split, load_image_dataset, random_crop_flip, to_tensor


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_load_each_dataset_from_its_hub_layout(name, tmp_path):
    root = write_hub_layout(tmp_path / name, name, n_train=600, n_test=200)
    splits, spec = load_image_dataset(name, str(root), meta_size=100, cache_dir=str(tmp_path / "cache"))
    assert spec is IMAGE_DATASETS[name]
    assert {k: len(v) for k, v in splits.items()} == {"meta": 100, "train": 500, "test": 200}
    size = spec.image_size
    example = splits["test"][3]
    assert example["pixel_values"].shape == (3, size, size) and example["pixel_values"].dtype == torch.float32
    assert set(example) == {"pixel_values", "labels"}
    # Normalised with the dataset's statistics: undoing it gives back pixels in [0, 1].
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    raw = example["pixel_values"] * std + mean
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    # The meta split is class-balanced and disjoint from train.
    meta_labels = np.array(splits["meta"][:]["labels"])
    counts = np.bincount(meta_labels, minlength=10)[:10]  # (the digits stand-ins only use labels 0-9)
    assert counts.sum() == 100 and counts.max() - counts.min() <= 1


def test_training_images_are_augmented_test_images_are_not(tmp_path):
    root = write_hub_layout(tmp_path / "c", "cifar10", n_train=200, n_test=50)
    splits, _ = load_image_dataset("cifar10", str(root), meta_size=0, cache_dir=str(tmp_path / "cache"))
    assert set(splits) == {"train", "test"}
    torch.manual_seed(0)
    draws = [splits["train"][0]["pixel_values"] for _ in range(6)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    assert torch.equal(splits["test"][0]["pixel_values"], splits["test"][0]["pixel_values"])


def test_random_crop_flip_is_a_shifted_padded_copy():
    image = torch.arange(3 * 8 * 8, dtype=torch.float32).view(3, 8, 8) + 1
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        out = random_crop_flip(image, padding=2, generator=gen)
        assert out.shape == image.shape
        # Every non-zero value comes from the image (zeros are padding).
        values = set(out[out != 0].tolist())
        assert values <= set(image.flatten().tolist())


def test_grayscale_becomes_rgb():
    from PIL import Image

    gray = Image.fromarray(np.full((4, 4), 128, dtype=np.uint8), mode="L")
    x = to_tensor(gray)
    assert x.shape == (3, 4, 4) and torch.allclose(x, torch.full((3, 4, 4), 128 / 255))


def test_balanced_split():
    labels = np.repeat(np.arange(10), 50)
    idx = balanced_split(labels, 1000 // 10 * 3, 10, seed=1)
    assert len(idx) == 300 and len(set(idx)) == 300
    assert (np.bincount(labels[idx]) == 30).all()
    uneven = np.array([0] * 5 + [1] * 100 + [2] * 100)  # class 0 is short: the rest is spread evenly
    idx = balanced_split(uneven, 31, 3)
    assert len(idx) == 31 and sorted(np.bincount(uneven[idx]).tolist()) == [5, 13, 13]
    assert not np.array_equal(balanced_split(labels, 20, 10, seed=1), balanced_split(labels, 20, 10, seed=2))
    with pytest.raises(ValueError, match="Cannot take a meta set"):
        balanced_split(labels, 501, 10)


def test_clear_errors(tmp_path):
    root = write_hub_layout(tmp_path / "c", "cifar10", n_train=50, n_test=20)
    with pytest.raises(ValueError, match="Unknown image dataset 'mnist'"):
        load_image_dataset("mnist", str(root))
    with pytest.raises(ValueError, match="no 'fine_label' column"):
        load_image_dataset("cifar100", str(root), meta_size=0, cache_dir=str(tmp_path / "cache"))
