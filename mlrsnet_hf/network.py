"""The MLR-SNet network: an LSTM that maps the training loss to a value in (0, 1).

One step reads the (normalised) training loss and the recurrent state and returns
``p_t = sigmoid(Linear(h_t))`` with the new state; the learning rate is ``gamma * p_t``
(see :mod:`mlrsnet_hf.schedule`). The state is explicit: nothing is stored on the module.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
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

    def fused_weights(self) -> tuple[list[tuple[torch.Tensor, ...]], torch.Tensor, torch.Tensor]:
        """The weights of :meth:`fast_forward` (per cell, then the head's), detached; rebuilt when a parameter changed."""
        params = self.__dict__.get("_fused_params")
        if params is None:
            params = self.__dict__["_fused_params"] = list(self.parameters())
        # in-place updates (optimizer steps, load_state_dict) bump _version; .to() moves the data
        key = [(p.data_ptr(), p._version) for p in params]
        if self.__dict__.get("_fused_key") != key:
            with torch.no_grad():
                head = self.head.weight.detach().reshape(-1).clone(), self.head.bias.detach().clone()
                self.__dict__["_fused"] = ([_fuse_cell(cell) for cell in self.cells], *head)
            self.__dict__["_fused_key"] = key
        return self.__dict__["_fused"]

    def fast_forward(self, loss: torch.Tensor, state: MLRSNetState) -> tuple[torch.Tensor, MLRSNetState]:
        """:meth:`forward` for a transferred schedule: no autograd, fewer operations, nothing read on the host.

        Each cell's two input branches run as one block matrix-vector product and their second layers as one,
        with the gates reordered to (i, f, o, g) and ``sigmoid(f - 1)`` of the shifted layout folded into the
        bias. The same function as :meth:`forward` up to floating-point rounding (sums taken in another order).
        ``loss`` is a detached 1-element tensor on the network's device, ``state`` a detached state.
        """
        cells, head_weight, head_bias = self.fused_weights()
        x = loss.reshape(1)
        if x.dtype != head_weight.dtype:
            x = x.to(head_weight.dtype)
        hidden = self.__dict__["hidden_size"]
        hs, cs = [], []
        for k, (w1, b1, w2, b2) in enumerate(cells):
            z = torch.addmv(b1, w1, torch.cat((x, state.h[k]))).relu_()
            gates = torch.addmv(b2, w2, z)
            i, f, o = torch.sigmoid(gates[: 3 * hidden]).view(3, hidden).unbind()
            c = torch.addcmul(f * state.c[k], i, torch.tanh(gates[3 * hidden :]))
            x = o * torch.tanh(c)
            hs.append(x)
            cs.append(c)
        p = torch.sigmoid(torch.dot(head_weight, x) + head_bias[0])
        if len(hs) == 1:
            return p, MLRSNetState(hs[0].unsqueeze(0), cs[0].unsqueeze(0))
        return p, MLRSNetState(torch.stack(hs), torch.stack(cs))

    def numpy_weights(self) -> tuple[list[tuple[np.ndarray, ...]], np.ndarray, float]:
        """:meth:`fused_weights` as float32 NumPy arrays, the sigmoid rows halved (``sigmoid(x) = (tanh(x/2) + 1) / 2``)."""
        fused = self.fused_weights()
        if self.__dict__.get("_numpy_of") is not fused:
            cells, head_weight, head_bias = fused
            half = np.ones(4 * self.hidden_size, dtype=np.float32)
            half[: 3 * self.hidden_size] = 0.5
            arrays = [
                (
                    w1.float().cpu().numpy(),
                    b1.float().cpu().numpy(),
                    w2.float().cpu().numpy() * half[:, None],
                    b2.float().cpu().numpy() * half,
                )
                for w1, b1, w2, b2 in cells
            ]
            head = 0.5 * head_weight.float().cpu().numpy(), 0.5 * float(head_bias)
            self.__dict__["_numpy"], self.__dict__["_numpy_of"] = (arrays, *head), fused
        return self.__dict__["_numpy"]

    def numpy_forward(self, loss: float, h: np.ndarray, c: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """:meth:`fast_forward` in NumPy on the host (float32): the fastest step on a CPU, where reading a loss costs
        nothing. ``h`` and ``c`` have shape ``(num_layers, hidden_size)``; new arrays are returned."""
        cells, head_weight, head_bias = self.numpy_weights()
        hidden = self.__dict__["hidden_size"]
        x = np.float32(loss)
        new_h, new_c = np.empty_like(h), np.empty_like(c)
        for k, (w1, b1, w2, b2) in enumerate(cells):
            z = w1 @ np.concatenate(((x,) if k == 0 else x, h[k])) + b1  # x: the loss, then the cell below's h
            np.maximum(z, 0, out=z)
            t = np.tanh(w2 @ z + b2)
            s = t[: 3 * hidden] * 0.5 + 0.5
            new_c[k] = s[hidden : 2 * hidden] * c[k] + s[:hidden] * t[3 * hidden :]
            new_h[k] = s[2 * hidden :] * np.tanh(new_c[k])
            x = new_h[k]
        p = 0.5 * math.tanh(float(head_weight @ x) + head_bias) + 0.5
        return p, new_h, new_c

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


def _fuse_cell(cell: MLRSNetCell) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(W1, b1, W2, b2)``: both branches' first layers as one block-diagonal matrix over ``[x; h]``, their
    second layers side by side with the biases summed, the gate rows in the order (i, f, o, g) (``f``'s bias
    shifted by -1 for "ifog_shifted")."""
    in1, in2 = cell.fc_i2h[0], cell.fc_h2h[0]
    out1, out2 = cell.fc_i2h[2], cell.fc_h2h[2]
    inner, hidden = in1.out_features, cell.hidden_size
    w1 = in1.weight.new_zeros(2 * inner, in1.in_features + in2.in_features)
    w1[:inner, : in1.in_features] = in1.weight
    w1[inner:, in1.in_features :] = in2.weight
    b1 = torch.cat((in1.bias, in2.bias))
    w2 = torch.cat((out1.weight, out2.weight), dim=1)
    b2 = out1.bias + out2.bias
    chunks = range(4)
    if cell.gate_layout == "ifgo":
        chunks = (0, 1, 3, 2)  # (i, f, g, o) -> (i, f, o, g)
    else:
        b2 = b2.clone()
        b2[hidden : 2 * hidden] -= 1.0  # sigmoid(f - 1)
    rows = torch.cat([torch.arange(k * hidden, (k + 1) * hidden) for k in chunks]).to(w2.device)
    return w1.detach(), b1.detach(), w2[rows].contiguous().detach(), b2[rows].detach()
