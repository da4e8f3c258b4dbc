"""The robustness study's corruptions: the CIFAR-10-C forms and severities, reproducible, on any image batch."""

import itertools

import pytest
import torch
from sklearn.datasets import load_digits

from mlrsnet_hf.experiments.corruptions import CORRUPTIONS, corrupt, symmetric_label_noise


def digits_images(n=200):
    x, _ = load_digits(return_X_y=True)
    return torch.tensor(x[:n], dtype=torch.float32).reshape(n, 8, 8) / 16


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_each_corruption_keeps_shape_and_range_is_seeded_and_grows_with_severity(name):
    x = digits_images()
    damage = []
    for severity in range(1, 6):
        a = corrupt(x, name, severity, torch.Generator().manual_seed(1))
        b = corrupt(x, name, severity, torch.Generator().manual_seed(1))
        assert a.shape == x.shape and a.dtype == x.dtype and torch.equal(a, b)
        assert a.min() >= 0 and a.max() <= 1
        damage.append((a - x).abs().mean().item())
    assert damage[-1] > 0
    assert damage[-1] >= damage[0]  # severity 5 hurts at least as much as severity 1
    assert all(b >= a - 2e-3 for a, b in itertools.pairwise(damage))  # and (up to sampling noise) monotonically


def test_known_values():
    x = torch.full((4, 3, 8, 8), 0.5)
    assert torch.allclose(corrupt(x, "contrast", 1), x)  # a flat image has no contrast to lose
    ramp = torch.linspace(0, 1, 64).reshape(1, 8, 8)
    assert torch.allclose(corrupt(ramp, "contrast", 5).std(), ramp.std() * 0.15, rtol=1e-5)
    noisy = corrupt(torch.full((1, 64, 64), 0.5), "gaussian_noise", 3)
    assert noisy.std().item() == pytest.approx(0.08, rel=0.05)
    hits = (corrupt(torch.full((1, 100, 100), 0.5), "impulse_noise", 5) != 0.5).float().mean().item()
    assert hits == pytest.approx(0.07, abs=0.01)
    blurred = corrupt(torch.eye(9)[None], "defocus_blur", 5)
    assert blurred.sum().item() == pytest.approx(9.0, rel=0.05) and blurred[0, 4, 4] < 0.5  # spread, mass kept


def test_bad_arguments():
    with pytest.raises(ValueError, match="Unknown corruption"):
        corrupt(digits_images(2), "fog")
    with pytest.raises(ValueError, match="severity"):
        corrupt(digits_images(2), "contrast", 6)
    with pytest.raises(TypeError, match="float"):
        corrupt(torch.zeros(2, 8, 8, dtype=torch.uint8), "contrast")


def test_symmetric_label_noise_flips_the_rate_to_other_classes():
    labels = torch.arange(10).repeat(1000)
    noisy = symmetric_label_noise(labels, 0.4, 10, torch.Generator().manual_seed(0))
    flipped = noisy != labels
    assert flipped.float().mean().item() == pytest.approx(0.4, abs=0.02)
    assert noisy.min() >= 0 and noisy.max() <= 9
    counts = torch.bincount(noisy[flipped], minlength=10).float()
    assert counts.min() > 0.8 * counts.mean()  # the wrong labels are spread over the classes
    assert torch.equal(symmetric_label_noise(labels, 0.0, 10), labels)
