"""The paper's PTB LSTM language model as a ``transformers`` model (config + ``PreTrainedModel``).

``forward(input_ids, labels=None)`` with labels already shifted (see
:class:`~mlrsnet_hf.experiments.data.LMChunks`), returning a ``CausalLMOutput`` with the mean token
cross-entropy. ``Trainer``, ``save_pretrained``/``from_pretrained`` and the Hub work as for any transformers model.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput


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
    paper's contiguous batching; see :class:`~mlrsnet_hf.experiments.data.LMChunks`), detached between calls.
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
    forwards on cloned buffers (the meta batches of meta-training) leave it alone.
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
