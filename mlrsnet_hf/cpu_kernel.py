"""A transferred schedule's whole step on a CPU as one compiled call (numba), when numba is installed.

The LSTM cell(s), the head, ``gamma * p``, the cap and the finite check run in one call, on weights packed into one
array. Inside a training loop every call costs several times what it costs in a tight loop (by all appearances its
code and data are cold again after the Trainer's own work), so one call beats NumPy's ~15: 5 us
against 21 in a tight loop, 12-18 us inside a Trainer step (``benchmarks/speed.py --only overhead`` / ``parts``).

``pip install mlrsnet_hf[fast]`` installs numba; without it :class:`~mlrsnet_hf.device_step.DeviceStep` uses its
NumPy step (the same rule in float32, up to the order of sums). The first call compiles the kernel (about a second
once, then about 0.2 s from numba's cache on disk)."""

from __future__ import annotations

import importlib.util
import logging
import math

import numpy as np

logger = logging.getLogger(__name__)

AVAILABLE = importlib.util.find_spec("numba") is not None

_kernel = None


def _compile():
    import numba

    # Compiled now, for the one signature used (C-contiguous float32 arrays), so that a failure shows here.
    # reassoc/contract only: the sums may be vectorised, but NaN and inf keep their meaning (the finite check).
    signature = (
        "float64(float64, float64, float64, float64, "
        "float32[:, :, ::1], float32[:, :, ::1], float32[::1], int64, int64, int64)"
    )

    @numba.njit(signature, cache=True, fastmath={"reassoc", "contract"})
    def step(loss, divisor, gamma, max_lr, state, new_state, weights, num_layers, hidden, inner):  # pragma: no cover
        """``lr`` of one step and the new ``(h, c)`` in ``new_state``; NaN (state untouched) when not finite."""
        x0 = np.float32(loss / divisor)
        if not math.isfinite(x0):
            return math.nan
        z = np.empty(inner, np.float32)
        gates = np.empty(4 * hidden, np.float32)
        offset = 0
        for k in range(num_layers):
            width = 1 if k == 0 else hidden  # the loss, or the new h of the layer below
            columns = width + hidden
            w1 = weights[offset : offset + inner * columns]
            offset += inner * columns
            b1 = weights[offset : offset + inner]
            offset += inner
            w2 = weights[offset : offset + 4 * hidden * inner]
            offset += 4 * hidden * inner
            b2 = weights[offset : offset + 4 * hidden]
            offset += 4 * hidden
            for r in range(inner):
                row = r * columns
                acc = b1[r]
                if k == 0:
                    acc += w1[row] * x0
                else:
                    for j in range(width):
                        acc += w1[row + j] * new_state[0, k - 1, j]
                for j in range(hidden):
                    acc += w1[row + width + j] * state[0, k, j]
                z[r] = np.float32(0) if acc <= 0 else acc  # relu that keeps a NaN, as np.maximum does
            for r in range(4 * hidden):
                row = r * inner
                acc = b2[r]
                for j in range(inner):
                    acc += w2[row + j] * z[j]
                gates[r] = np.tanh(acc)  # sigmoid rows were halved: sigmoid(2t) = (tanh(t) + 1) / 2
            for j in range(hidden):
                i = gates[j] * np.float32(0.5) + np.float32(0.5)
                f = gates[hidden + j] * np.float32(0.5) + np.float32(0.5)
                o = gates[2 * hidden + j] * np.float32(0.5) + np.float32(0.5)
                c = f * state[1, k, j] + i * gates[3 * hidden + j]
                new_state[1, k, j] = c
                new_state[0, k, j] = o * np.tanh(c)
        acc = weights[offset + hidden]  # the head's (halved) bias
        for j in range(hidden):
            acc += weights[offset + j] * new_state[0, num_layers - 1, j]
        p = np.float32(0.5 * math.tanh(acc) + 0.5)
        lr = float(np.float32(gamma) * p)  # the float32 product, as the tensor step computes it
        if not math.isfinite(lr):
            return math.nan
        return min(lr, max_lr)

    return step


def packed_weights(network) -> tuple[np.ndarray, int]:
    """The network's :meth:`~mlrsnet_hf.MLRSNet.numpy_weights` in one float32 array, and the width of its cells'
    first layers (``inner``)."""
    cells, head_weight, head_bias = network.numpy_weights()
    if network.__dict__.get("_packed_of") is not cells:
        parts = [a.reshape(-1) for cell in cells for a in cell] + [head_weight, np.float32([head_bias])]
        network.__dict__["_packed"] = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
        network.__dict__["_packed_of"] = cells
    return network.__dict__["_packed"], cells[0][0].shape[0]


def kernel():
    """The compiled step (None when numba is not installed or could not compile it), ``kernel(loss, divisor, gamma, max_lr, state, new_state, weights, num_layers, hidden_size,
    inner)`` (``weights, inner = packed_weights(network)``; compiled at the first call, then cached by numba).

    Returns the LR of one step, ``min(float32(gamma) * p, max_lr)``, for the input ``loss / divisor``; the new state
    (``h`` and ``c`` stacked, shape ``(2, num_layers, hidden_size)``, float32) is written into ``new_state``. NaN
    when the loss or the LR is not finite (``new_state`` is then not to be used).
    """
    global _kernel
    if _kernel is None:
        _kernel = False
        if AVAILABLE:
            try:
                _kernel = _compile()
            except Exception as error:  # e.g. a numba that does not support this platform or NumPy
                logger.warning("The compiled LR-schedule step is not available (%s): using the NumPy step.", error)
    return _kernel or None
