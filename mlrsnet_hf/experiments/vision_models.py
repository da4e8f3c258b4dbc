"""The paper's image networks as ``transformers`` models (config + ``PreTrainedModel``), and the demo's small ones.

Image networks in their CIFAR variants (3x3 stride-1 stems, no max-pool): ResNet-18, Wide-ResNet-28-10,
MobileNetV2 and ShuffleNetV2, taking ``pixel_values`` and ``labels`` and returning an
``ImageClassifierOutput`` with the cross-entropy loss. ``Trainer``, ``save_pretrained``/``from_pretrained``
and the Hub work as for any transformers model. The PTB LSTM is in :mod:`.language_models`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import ImageClassifierOutput

ARCHITECTURES = ("resnet18", "wrn", "mobilenetv2", "shufflenetv2")


class CifarNetConfig(PretrainedConfig):
    """Config of :class:`CifarNetForImageClassification`.

    Args:
        architecture: ``"resnet18"`` (basic blocks [2, 2, 2, 2], widths 64-512), ``"wrn"`` (Wide-ResNet with
            ``depth`` and ``widen_factor``, pre-activation blocks, dropout ``dropout``), ``"mobilenetv2"`` or
            ``"shufflenetv2"`` (the CIFAR variants: stride-1 stems for 32x32 inputs).
        depth, widen_factor, dropout: Wide-ResNet settings (the paper: 28, 10, 0.0).
        num_labels: classes; ``image_size`` only documents the expected input (any size works).
    """

    model_type = "mlrsnet_cifar_net"

    def __init__(
        self,
        architecture: str = "resnet18",
        depth: int = 28,
        widen_factor: int = 10,
        dropout: float = 0.0,
        num_channels: int = 3,
        image_size: int = 32,
        **kwargs,
    ) -> None:
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {architecture!r}.")
        if architecture == "wrn" and (depth - 4) % 6:
            raise ValueError(f"Wide-ResNet depth must be 6n + 4, got {depth}.")
        self.architecture = architecture
        self.depth = depth
        self.widen_factor = widen_factor
        self.dropout = dropout
        self.num_channels = num_channels
        self.image_size = image_size
        super().__init__(**kwargs)


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3, relu=False))
        self.shortcut = conv_bn(cin, cout, 1, stride, relu=False) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class WideBlock(nn.Module):
    """Pre-activation wide block (BN-ReLU-conv, dropout between the convolutions)."""

    def __init__(self, cin: int, cout: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=True)
        self.dropout = nn.Dropout(dropout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride, 1, bias=True)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=True) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.conv1(torch.relu(self.bn1(x))))
        return self.conv2(torch.relu(self.bn2(out))) + self.shortcut(x)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: expand 1x1, depthwise 3x3, project 1x1 (linear), residual when shapes allow."""

    def __init__(self, cin: int, cout: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expansion
        expand = [conv_bn(cin, hidden, 1)] if expansion != 1 else []  # no expansion conv when t = 1
        self.body = nn.Sequential(
            *expand,
            conv_bn(hidden, hidden, 3, stride, groups=hidden),
            conv_bn(hidden, cout, 1, relu=False),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleBlock(nn.Module):
    """ShuffleNetV2 unit: half the channels pass through, the other half go 1x1 -> depthwise 3x3 -> 1x1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(
            conv_bn(half, half, 1), conv_bn(half, half, 3, groups=half, relu=False), conv_bn(half, half, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, through = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([keep, self.branch(through)], dim=1))


class ShuffleDownBlock(nn.Module):
    """ShuffleNetV2 down-sampling unit: two stride-2 branches, concatenated and shuffled."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        half = cout // 2
        self.left = nn.Sequential(conv_bn(cin, cin, 3, 2, groups=cin, relu=False), conv_bn(cin, half, 1))
        self.right = nn.Sequential(
            conv_bn(cin, half, 1), conv_bn(half, half, 3, 2, groups=half, relu=False), conv_bn(half, half, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], dim=1))


def build_backbone(config: CifarNetConfig) -> tuple[nn.Sequential, int]:
    """The feature extractor of an architecture and its output channels."""
    layers: list[nn.Module] = []
    if config.architecture == "resnet18":
        cin = 64
        layers.append(conv_bn(config.num_channels, 64, 3))
        for i, width in enumerate([64, 128, 256, 512]):
            for j in range(2):
                layers.append(BasicBlock(cin, width, 2 if (i > 0 and j == 0) else 1))
                cin = width
    elif config.architecture == "wrn":
        n = (config.depth - 4) // 6
        widths = [16 * config.widen_factor, 32 * config.widen_factor, 64 * config.widen_factor]
        cin = 16
        layers.append(nn.Conv2d(config.num_channels, 16, 3, 1, 1, bias=True))
        for i, width in enumerate(widths):
            for j in range(n):
                layers.append(WideBlock(cin, width, 2 if (i > 0 and j == 0) else 1, config.dropout))
                cin = width
        layers += [nn.BatchNorm2d(cin), nn.ReLU()]
    elif config.architecture == "mobilenetv2":
        # (expansion, channels, blocks, stride); strides of the first two stages are 1 for 32x32 inputs.
        stages = [
            (1, 16, 1, 1),
            (6, 24, 2, 1),
            (6, 32, 3, 2),
            (6, 64, 4, 2),
            (6, 96, 3, 1),
            (6, 160, 3, 2),
            (6, 320, 1, 1),
        ]
        cin = 32
        layers.append(conv_bn(config.num_channels, 32, 3))
        for expansion, width, blocks, stride in stages:
            for j in range(blocks):
                layers.append(InvertedResidual(cin, width, expansion, stride if j == 0 else 1))
                cin = width
        layers.append(conv_bn(cin, 1280, 1))
        cin = 1280
    else:  # shufflenetv2, width 1x: stages of 116, 232, 464 channels with 3, 7, 3 units
        cin = 24
        layers.append(conv_bn(config.num_channels, 24, 3))
        for width, blocks in ((116, 3), (232, 7), (464, 3)):
            layers.append(ShuffleDownBlock(cin, width))
            layers += [ShuffleBlock(width) for _ in range(blocks)]
            cin = width
        layers.append(conv_bn(cin, 1024, 1))
        cin = 1024
    return nn.Sequential(*layers), cin


class CifarNetForImageClassification(PreTrainedModel):
    """The paper's image networks (ResNet-18, WRN, MobileNetV2, ShuffleNetV2); ``forward(pixel_values, labels=None)``."""

    config_class = CifarNetConfig
    main_input_name = "pixel_values"

    def __init__(self, config: CifarNetConfig) -> None:
        super().__init__(config)
        self.features, channels = build_backbone(config)
        self.classifier = nn.Linear(channels, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs
    ) -> ImageClassifierOutput:
        logits = self.classifier(self.features(pixel_values).mean(dim=(2, 3)))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)


def cifar_resnet18(num_labels: int = 10) -> CifarNetForImageClassification:
    """The paper's ResNet-18 for CIFAR."""
    return CifarNetForImageClassification(CifarNetConfig(architecture="resnet18", num_labels=num_labels))


def wide_resnet(num_labels: int = 100, depth: int = 28, widen_factor: int = 10, dropout: float = 0.0):
    """The paper's Wide-ResNet-28-10 (other depths/widths for small runs)."""
    config = CifarNetConfig(
        architecture="wrn", depth=depth, widen_factor=widen_factor, dropout=dropout, num_labels=num_labels
    )
    return CifarNetForImageClassification(config)


def cifar_net(architecture: str, num_labels: int = 10) -> CifarNetForImageClassification:
    """Any of :data:`ARCHITECTURES` with its paper settings."""
    return CifarNetForImageClassification(CifarNetConfig(architecture=architecture, num_labels=num_labels))


# --- Small networks for the CPU-scale digits task (the demo, the quality benchmark) ---


def classifier_output(logits: torch.Tensor, labels: torch.Tensor | None) -> ImageClassifierOutput:
    loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
    return ImageClassifierOutput(loss=loss, logits=logits)


class DigitsCNN(nn.Module):
    """A small CNN for scikit-learn's 8x8 digits: two conv-BN-ReLU layers, global pooling, a linear head."""

    def __init__(self, num_labels: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, stride=2),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, num_labels),
        )

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ImageClassifierOutput:
        return classifier_output(self.net(pixel_values), labels)


class DigitsMLP(nn.Module):
    """A one-hidden-layer MLP (128 units, dropout 0.2) for 8x8 digits."""

    def __init__(self, num_labels: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, num_labels)
        )

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ImageClassifierOutput:
        return classifier_output(self.net(pixel_values), labels)
