"""The MLR-SNet network: an LSTM that maps the training loss to a value in (0, 1).

One step reads the (normalised) training loss and the recurrent state and returns
``p_t = sigmoid(Linear(h_t))`` with the new state; the learning rate is ``gamma * p_t``
(see :mod:`mlrsnet_hf.mlrsnet.run`). The state is explicit: nothing is stored on the module.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

GATE_LAYOUTS = ("ifgo", "ifog_shifted")
"""Supported gate layouts of the cell's pre-activation vector.

``"ifgo"``: chunks (input, forget, cell, output), no bias shift. The layout that reproduces the
released checkpoints (the released evaluation script).
``"ifog_shifted"``: chunks (input, forget, output, cell) with ``sigmoid(f - 1)``, the cell of the
released meta-training script.
"""


class MLRSNetState(NamedTuple):
    """Recurrent state ``(h, c)``, each of shape ``(num_layers, hidden_size)``."""

    h: torch.Tensor
    c: torch.Tensor

    def detach(self) -> MLRSNetState:
        return MLRSNetState(self.h.detach(), self.c.detach())


def check_gate_layout(gate_layout: str) -> None:
    if gate_layout not in GATE_LAYOUTS:
        raise ValueError(f"Unknown gate_layout {gate_layout!r}: expected one of {', '.join(GATE_LAYOUTS)}.")


class MLRSNetCell(nn.Module):
    """The paper's LSTM cell: input and hidden state each go through Linear -> ReLU -> Linear into the gates."""

    def __init__(self, input_size: int, hidden_size: int, gate_layout: str = "ifgo") -> None:
        super().__init__()
        check_gate_layout(gate_layout)
        inner = hidden_size // 2
        self.hidden_size = hidden_size
        self.gate_layout = gate_layout
        self.fc_i2h = nn.Sequential(nn.Linear(input_size, inner), nn.ReLU(), nn.Linear(inner, 4 * hidden_size))
        self.fc_h2h = nn.Sequential(nn.Linear(hidden_size, inner), nn.ReLU(), nn.Linear(inner, 4 * hidden_size))

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gates = self.fc_i2h(x) + self.fc_h2h(h)
        if self.gate_layout == "ifgo":
            i, f, g, o = gates.chunk(4, dim=-1)
            f = torch.sigmoid(f)
        else:  # "ifog_shifted"
            i, f, o, g = gates.chunk(4, dim=-1)
            f = torch.sigmoid(f - 1.0)
        c = f * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class MLRSNet(nn.Module):
    """The MLR-SNet network: stacked :class:`MLRSNetCell` s and a sigmoid output head.

    Args:
        hidden_size: width of the LSTM state (the paper's 50); the cell's inner width is ``hidden_size // 2``.
        num_layers: number of stacked cells (the first reads the loss, the others the previous cell's ``h``).
        gate_layout: one of :data:`GATE_LAYOUTS`.

    Example::

        net = MLRSNet()
        state = net.initial_state()
        p, state = net(torch.tensor(2.3), state)  # p in (0, 1), differentiable w.r.t. net's parameters
    """

    def __init__(self, hidden_size: int = 50, num_layers: int = 1, gate_layout: str = "ifgo") -> None:
        super().__init__()
        if hidden_size < 2:
            raise ValueError(f"hidden_size must be >= 2, got {hidden_size}.")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}.")
        check_gate_layout(gate_layout)
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.gate_layout = gate_layout
        self.cells = nn.ModuleList(
            MLRSNetCell(1 if k == 0 else hidden_size, hidden_size, gate_layout) for k in range(num_layers)
        )
        self.head = nn.Linear(hidden_size, 1)

    def initial_state(self, dtype: torch.dtype | None = None, device: torch.device | None = None) -> MLRSNetState:
        """The zero state every run starts from."""
        ref = self.head.weight
        shape = (self.num_layers, self.hidden_size)
        zeros = torch.zeros(shape, dtype=dtype or ref.dtype, device=device or ref.device)
        return MLRSNetState(zeros, zeros.clone())

    def forward(self, loss: torch.Tensor | float, state: MLRSNetState) -> tuple[torch.Tensor, MLRSNetState]:
        """One step: returns ``p`` (a 0-d tensor in (0, 1)) and the new state."""
        ref = self.head.weight
        x = torch.as_tensor(loss, dtype=ref.dtype, device=ref.device).reshape(1)
        hs, cs = [], []
        for k, cell in enumerate(self.cells):
            h, c = cell(x, state.h[k], state.c[k])
            hs.append(h)
            cs.append(c)
            x = h
        p = torch.sigmoid(self.head(x)).reshape(())
        return p, MLRSNetState(torch.stack(hs), torch.stack(cs))
