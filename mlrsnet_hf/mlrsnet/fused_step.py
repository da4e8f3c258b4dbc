"""A transferred network's step on fused weights: the fast step, in torch (any device) and NumPy (a CPU).

:meth:`MLRSNet.forward <mlrsnet_hf.MLRSNet.forward>` is the reference (autograd: meta-training and the
schedule's own step). A transferred schedule's weights are fixed, so its step can run on fused ones: each cell's
two input branches as one block matrix-vector product and their second layers as one, the gates reordered to
(i, f, o, g), ``sigmoid(f - 1)`` of the shifted layout folded into the bias. The same function as the reference
up to floating-point rounding (sums taken in another order).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .network import MLRSNetCell, MLRSNetState

Tensors = tuple[list[tuple[torch.Tensor, ...]], torch.Tensor, torch.Tensor]  # per cell (W1, b1, W2, b2); head w, b
Arrays = tuple[list[tuple[np.ndarray, ...]], np.ndarray, float]  # the same in float32, sigmoid rows halved


class FusedWeights:
    """The fused weights of one network, rebuilt when one of its parameters changed.

    The cache lives here, not on the module: it is keyed on each parameter's storage and version counter
    (in-place updates such as optimizer steps and ``load_state_dict`` bump it; ``.to()`` moves the storage).
    """

    def __init__(self, network: nn.Module) -> None:
        self.network = network
        self._key: list[tuple[int, int]] | None = None
        self._tensors: Tensors | None = None
        self._arrays: Arrays | None = None

    def _version_key(self) -> list[tuple[int, int]]:
        return [(p.data_ptr(), p._version) for p in self.network.parameters()]

    def current(self) -> bool:
        """Whether the weights built last are still the network's."""
        return self._key is not None and self._key == self._version_key()

    def tensors(self) -> Tensors:
        """``([(W1, b1, W2, b2) per cell], head weight, head bias)``, detached, on the network's device."""
        if not self.current():
            with torch.no_grad():
                head = self.network.head
                self._tensors = (
                    [_fuse_cell(cell) for cell in self.network.cells],
                    head.weight.detach().reshape(-1).clone(),
                    head.bias.detach().clone(),
                )
            self._arrays, self._key = None, self._version_key()
        return self._tensors

    def arrays(self) -> Arrays:
        """:meth:`tensors` as float32 NumPy arrays, the sigmoid rows halved (``sigmoid(x) = (tanh(x/2) + 1) / 2``)."""
        cells, head_weight, head_bias = self.tensors()
        if self._arrays is None:
            hidden = self.network.hidden_size
            half = np.ones(4 * hidden, dtype=np.float32)
            half[: 3 * hidden] = 0.5
            arrays = [
                (
                    w1.float().cpu().numpy(),
                    b1.float().cpu().numpy(),
                    w2.float().cpu().numpy() * half[:, None],
                    b2.float().cpu().numpy() * half,
                )
                for w1, b1, w2, b2 in cells
            ]
            self._arrays = (arrays, 0.5 * head_weight.float().cpu().numpy(), 0.5 * float(head_bias))
        return self._arrays


def tensor_step(weights: Tensors, loss: torch.Tensor, state: MLRSNetState) -> tuple[torch.Tensor, MLRSNetState]:
    """``p`` and the new state for a detached 1-element ``loss`` on the network's device, from
    :meth:`FusedWeights.tensors`: no autograd, nothing read on the host (so it can be captured as a CUDA graph)."""
    cells, head_weight, head_bias = weights
    x = loss.reshape(1)
    if x.dtype != head_weight.dtype:
        x = x.to(head_weight.dtype)
    hidden = state.h.shape[-1]
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


def numpy_step(weights: Arrays, loss: float, h: np.ndarray, c: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """:func:`tensor_step` in NumPy on the host (float32), from :meth:`FusedWeights.arrays`; ``h`` and ``c`` of shape
    ``(num_layers, hidden_size)``, new arrays returned."""
    cells, head_weight, head_bias = weights
    hidden = h.shape[-1]
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
