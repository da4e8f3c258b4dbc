"""The paper's task networks as ``transformers`` models (config + ``PreTrainedModel``).

Image networks in their CIFAR variants (3x3 stride-1 stems, no max-pool): ResNet-18, Wide-ResNet-28-10,
MobileNetV2 and ShuffleNetV2, taking ``pixel_values`` and ``labels`` and returning an
``ImageClassifierOutput`` with the cross-entropy loss; and the PTB LSTM language model. ``Trainer``,
``save_pretrained``/``from_pretrained`` and the Hub work as for any transformers model.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput, ImageClassifierOutput

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


def token_loss(
    logits: torch.Tensor, labels: torch.Tensor | None, num_items_in_batch: torch.Tensor | int | None = None
) -> torch.Tensor | None:
    """Mean token cross-entropy against (already shifted) labels, or the token sum divided by
    ``num_items_in_batch`` when the Trainer passes it (exact averaging under gradient accumulation)."""
    if labels is None:
        return None
    total = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum")
    return total / (num_items_in_batch if num_items_in_batch is not None else labels.numel())


class LSTMLMConfig(PretrainedConfig):
    """Config of :class:`LSTMForLanguageModeling` (the paper's PTB models: 2 or 3 layers of 512, tied, dropout 0.5).

    ``carry_state``: keep the LSTM state across consecutive forward calls of the same batch size (the
    paper's contiguous batching; see :class:`~mlrsnet_hf.data.LMChunks`), detached between calls.
    """

    model_type = "mlrsnet_lstm_lm"

    def __init__(
        self,
        vocab_size: int = 10000,
        hidden_size: int = 512,
        num_layers: int = 2,
        dropout: float = 0.5,
        carry_state: bool = True,
        tie_word_embeddings: bool = True,
        **kwargs,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout
        self.carry_state = carry_state
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


class LSTMForLanguageModeling(PreTrainedModel):
    """Word-level LSTM language model; ``forward(input_ids, labels=None)`` with labels already shifted.

    The loss is the mean cross-entropy per token, or the token sum divided by ``num_items_in_batch``
    when the Trainer passes it (exact averaging under gradient accumulation). The carried state lives in
    non-persistent buffers: it is reset when the batch size or the train/eval mode changes, and
    forwards through ``torch.func.functional_call`` (the meta batches of meta-training) leave it alone.
    With several processes set ``ddp_broadcast_buffers=False`` so each rank keeps its own streams' state.
    """

    config_class = LSTMLMConfig
    main_input_name = "input_ids"
    _tied_weights_keys = {"decoder.weight": "embed.weight"}

    def __init__(self, config: LSTMLMConfig) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.drop = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(
            config.hidden_size, config.hidden_size, config.num_layers, dropout=config.dropout, batch_first=True
        )
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.register_buffer("state_h", torch.zeros(0), persistent=False)
        self.register_buffer("state_c", torch.zeros(0), persistent=False)
        self._state_training: bool | None = None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def get_output_embeddings(self) -> nn.Linear:
        return self.decoder

    def _init_weights(self, module: nn.Module) -> None:
        if module is self.embed or module is self.decoder:
            nn.init.uniform_(module.weight, -0.1, 0.1)
        if module is self.decoder:
            nn.init.zeros_(module.bias)

    def reset_state(self) -> None:
        """Forget the carried LSTM state (e.g. at the start of an epoch or of an evaluation)."""
        self.state_h = torch.zeros(0, device=self.state_h.device)
        self.state_c = torch.zeros(0, device=self.state_c.device)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        **kwargs,
    ) -> CausalLMOutput:
        batch = input_ids.shape[0]
        if self._state_training is not self.training:
            self.reset_state()
            self._state_training = self.training
        carry = self.config.carry_state and self.state_h.dim() == 3 and self.state_h.shape[1] == batch
        state = (self.state_h, self.state_c) if carry else None
        out, (h, c) = self.lstm(self.drop(self.embed(input_ids)), state)
        if self.config.carry_state:
            self.state_h, self.state_c = h.detach(), c.detach()
        logits = self.decoder(self.drop(out))
        return CausalLMOutput(loss=token_loss(logits, labels, num_items_in_batch), logits=logits)


def lstm_lm(vocab_size: int, num_layers: int = 2, hidden_size: int = 512, dropout: float = 0.5):
    """The paper's 2- or 3-layer PTB LSTM (embedding and hidden 512, tied weights, dropout 0.5)."""
    config = LSTMLMConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers, dropout=dropout)
    return LSTMForLanguageModeling(config)


# --- Small networks for the CPU-scale tasks (digits, MNIST-1D, PTB text) ---


def _classifier_output(logits: torch.Tensor, labels: torch.Tensor | None) -> ImageClassifierOutput:
    loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
    return ImageClassifierOutput(loss=loss, logits=logits)


class DigitsCNN(nn.Module):
    """A small CNN for scikit-learn's 8x8 digits: two conv-BN-ReLU layers, global pooling, a linear head."""

    def __init__(self, num_labels: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_labels),
        )  # fmt: skip

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ImageClassifierOutput:
        return _classifier_output(self.net(pixel_values), labels)


class DigitsMLP(nn.Module):
    """A one-hidden-layer MLP (128 units, dropout 0.2) for 8x8 digits."""

    def __init__(self, num_labels: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, num_labels)
        )

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ImageClassifierOutput:
        return _classifier_output(self.net(pixel_values), labels)


class MNIST1DCNN(nn.Module):
    """The MNIST-1D reference CNN (Greydanus, 2020): three strided Conv1d layers of 25 channels, a linear head."""

    def __init__(self, num_labels: int = 10, channels: int = 25) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(1, channels, 5, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(channels * 5, num_labels),  # length 40 -> 19 -> 10 -> 5
        )  # fmt: skip

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ImageClassifierOutput:
        return _classifier_output(self.net(pixel_values), labels)


class ShiftedLabelsLM(nn.Module):
    """A ``transformers`` causal LM trained on :class:`~mlrsnet_hf.data.LMChunks` (labels already shifted).

    Causal LMs shift ``labels`` themselves; this wrapper takes the model's logits and computes the token
    cross-entropy against the given (pre-shifted) labels, exactly as :class:`LSTMForLanguageModeling` does.
    """

    def __init__(self, lm: PreTrainedModel) -> None:
        super().__init__()
        self.lm = lm
        self.config = lm.config

    def get_output_embeddings(self) -> nn.Module:
        return self.lm.get_output_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        **kwargs,
    ) -> CausalLMOutput:
        logits = self.lm(input_ids=input_ids).logits
        return CausalLMOutput(loss=token_loss(logits, labels, num_items_in_batch), logits=logits)


def small_gpt2_lm(vocab_size: int, n_embd: int = 64, n_layer: int = 2, n_head: int = 2, n_positions: int = 64):
    """A small GPT-2 from ``transformers`` (random init) for word-level PTB, wrapped in :class:`ShiftedLabelsLM`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab_size, n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_positions=n_positions)
    return ShiftedLabelsLM(GPT2LMHeadModel(config))
