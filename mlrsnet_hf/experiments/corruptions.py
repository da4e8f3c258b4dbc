"""Corrupted training data for the robustness study (paper Sec. 4.3), in torch on images in [0, 1].

The corruption families of CIFAR-10-C (Hendrycks & Dietterich, 2019) that make sense on any small image,
with its five severities for CIFAR: Gaussian, shot (Poisson) and impulse (salt-and-pepper) noise, defocus
blur, contrast and pixelate. They reproduce the generator's forms, not its random draws (that uses NumPy's
global generator and, for blur and pixelate, OpenCV/PIL resampling); every function here takes a
``torch.Generator`` so a corrupted dataset is a pure function of its seed. And the other kind of bias the
paper's robustness claim concerns: symmetric label noise.

    x = corrupt(images, "gaussian_noise", severity=3, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

# The five severities of each family, as the CIFAR-10-C generator (make_cifar_c.py) sets them.
SEVERITIES: dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # noise std
    "shot_noise": (500, 250, 100, 75, 50),  # photons per unit intensity
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),  # fraction of pixels set to 0 or 1
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),  # disk radius, then Gaussian sigma
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor towards the image mean
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # downscale factor before upscaling back
}
CORRUPTIONS = tuple(SEVERITIES)


def _images(x: torch.Tensor) -> torch.Tensor:
    """A batch ``(N, H, W)`` (grayscale) or ``(N, C, H, W)`` of float images in [0, 1], as ``(N, C, H, W)``."""
    if not torch.is_floating_point(x):
        raise TypeError(f"Corruptions take float images in [0, 1], got {x.dtype}.")
    if x.dim() not in (3, 4):
        raise ValueError(f"Expected a batch of images (N, H, W) or (N, C, H, W), got shape {tuple(x.shape)}.")
    return x[:, None] if x.dim() == 3 else x


def gaussian_noise(x: torch.Tensor, c: float, generator: torch.Generator) -> torch.Tensor:
    return (x + c * torch.randn(x.shape, generator=generator, dtype=x.dtype)).clamp(0, 1)


def shot_noise(x: torch.Tensor, c: float, generator: torch.Generator) -> torch.Tensor:
    return (torch.poisson(x * c, generator=generator) / c).clamp(0, 1)


def impulse_noise(x: torch.Tensor, c: float, generator: torch.Generator) -> torch.Tensor:
    hit = torch.rand(x.shape, generator=generator) < c
    salt = torch.rand(x.shape, generator=generator) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


def _blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    pad = kernel.shape[-1] // 2
    weight = kernel.to(x.dtype)[None, None].expand(x.shape[1], 1, *kernel.shape)
    return F.conv2d(F.pad(x, (pad,) * 4, mode="replicate"), weight, groups=x.shape[1])


def defocus_blur(x: torch.Tensor, c: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    radius, sigma = c
    grid = torch.arange(-(math.ceil(radius) + 1), math.ceil(radius) + 2, dtype=torch.float64)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    disk = ((xx**2 + yy**2) <= radius**2).double()
    # the generator's disk kernel, anti-aliased by a 3x3 Gaussian blur of width sigma
    offsets = torch.arange(-1, 2, dtype=torch.float64)
    gauss = torch.exp(-(offsets[:, None] ** 2 + offsets[None] ** 2) / (2 * sigma**2))
    kernel = F.conv2d(disk[None, None], (gauss / gauss.sum())[None, None], padding=1)[0, 0]
    return _blur(x, kernel / kernel.sum()).clamp(0, 1)


def contrast(x: torch.Tensor, c: float, generator: torch.Generator) -> torch.Tensor:
    mean = x.mean(dim=(-2, -1), keepdim=True)  # per image and channel
    return ((x - mean) * c + mean).clamp(0, 1)


def pixelate(x: torch.Tensor, c: float, generator: torch.Generator) -> torch.Tensor:
    height, width = x.shape[-2:]
    small = (max(1, round(height * c)), max(1, round(width * c)))
    return F.interpolate(F.interpolate(x, size=small, mode="area"), size=(height, width), mode="nearest")


FUNCTIONS: dict[str, Callable[[torch.Tensor, object, torch.Generator], torch.Tensor]] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "contrast": contrast,
    "pixelate": pixelate,
}


def corrupt(
    images: torch.Tensor, corruption: str, severity: int = 5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A batch of ``images`` (float, in [0, 1]) with one corruption at ``severity`` 1-5, in the shape given."""
    if corruption not in FUNCTIONS:
        raise ValueError(f"Unknown corruption {corruption!r}: expected one of {', '.join(CORRUPTIONS)}.")
    if severity not in range(1, 6):
        raise ValueError(f"severity must be 1, 2, 3, 4 or 5, got {severity!r}.")
    generator = generator or torch.Generator().manual_seed(0)
    batch = _images(images)
    out = FUNCTIONS[corruption](batch, SEVERITIES[corruption][severity - 1], generator)
    return out.reshape(images.shape)


def symmetric_label_noise(
    labels: torch.Tensor, rate: float, num_classes: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Each label replaced, with probability ``rate``, by one of the *other* classes drawn uniformly."""
    if not 0 <= rate <= 1:
        raise ValueError(f"rate must be in [0, 1], got {rate}.")
    generator = generator or torch.Generator().manual_seed(0)
    flip = torch.rand(labels.shape, generator=generator) < rate
    shift = torch.randint(1, num_classes, labels.shape, generator=generator)
    return torch.where(flip, (labels + shift) % num_classes, labels)
