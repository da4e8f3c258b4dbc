"""A transferred schedule's whole step on a CPU as one compiled call (numba), when numba is installed.

The LSTM cell(s), the head, ``gamma * p``, the cap, the finite check and the step's bookkeeping (the new state, the
count of finite steps, the last LR) run in one call, on weights packed into one array, with five arguments.
Inside a training loop every call costs several times what it costs in a tight loop (by all appearances its code
and data are cold again after the Trainer's own work), so one call beats NumPy's ~15: 3.4 us against 22 in a
tight loop, about 10 us inside a Trainer step (``benchmarks/speed.py --only overhead`` / ``parts``). The tanh
of the gates is a rational function (Eigen's float tanh, within 6 ulp), which the compiler vectorises: libm's
tanh, called 250 times a step, took about 5 of those 10 us.

``pip install mlrsnet_hf[fast]`` installs numba; without it :class:`~mlrsnet_hf.device_step.DeviceStep` uses its
NumPy step (the same rule in float32, up to the order of sums and the tanh's last bits). The first call compiles
the kernel (about a second once, then about 0.2 s from numba's cache on disk)."""

from __future__ import annotations

import importlib.util
import logging
import math

import numpy as np

logger = logging.getLogger(__name__)

AVAILABLE = importlib.util.find_spec("numba") is not None

_kernel = None
# The kernel's one signature: (loss, scalars, states, counters, weights) -> lr, C-contiguous arrays (see kernel()).
SIGNATURE = "float64(float64, float64[::1], float32[:, :, :, ::1], int64[::1], float32[::1])"


def _compile():
    import numba

    # Compiled now, for the one signature used (C-contiguous arrays), so that a failure shows here.
    # reassoc/contract only: the sums may be vectorised, but NaN and inf keep their meaning (the finite check).
    fastmath = {"reassoc", "contract"}

    @numba.njit(inline="always", fastmath=fastmath)
    def tanh(x):  # pragma: no cover
        """float32 tanh as Eigen's rational function: vectorisable, within 6 ulp of tanh; NaN stays NaN."""
        if x == x:
            x = min(max(x, np.float32(-7.90531110763549805)), np.float32(7.90531110763549805))
        x2 = x * x
        p = np.float32(-2.76076847742355e-16)
        p = p * x2 + np.float32(2.00018790482477e-13)
        p = p * x2 + np.float32(-8.60467152213735e-11)
        p = p * x2 + np.float32(5.12229709037114e-08)
        p = p * x2 + np.float32(1.48572235717979e-05)
        p = p * x2 + np.float32(6.37261928875436e-04)
        p = p * x2 + np.float32(4.89352455891786e-03)
        q = np.float32(1.19825839466702e-06)
        q = q * x2 + np.float32(1.18534705686654e-04)
        q = q * x2 + np.float32(2.26843463243900e-03)
        q = q * x2 + np.float32(4.89352518554385e-03)
        return x * p / q

    @numba.njit(SIGNATURE, cache=True, fastmath=fastmath)
    def step(loss, scalars, states, counters, weights):  # pragma: no cover
        """One step; see :func:`kernel`."""
        divisor, gamma, cap, last_lr = scalars[0], scalars[1], scalars[2], scalars[3]
        x0 = np.float32(loss / divisor)
        if not math.isfinite(x0):
            return last_lr
        state, new_state = states[counters[0]], states[1 - counters[0]]
        num_layers, hidden = state.shape[1], state.shape[2]
        inner = 2 * (hidden // 2)  # both branches' first layers, side by side (_fuse_cell)
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
                gates[r] = tanh(acc)  # sigmoid rows were halved: sigmoid(2t) = (tanh(t) + 1) / 2
            for j in range(hidden):
                i = gates[j] * np.float32(0.5) + np.float32(0.5)
                f = gates[hidden + j] * np.float32(0.5) + np.float32(0.5)
                o = gates[2 * hidden + j] * np.float32(0.5) + np.float32(0.5)
                c = f * state[1, k, j] + i * gates[3 * hidden + j]
                new_state[1, k, j] = c
                new_state[0, k, j] = o * tanh(c)
        acc = weights[offset + hidden]  # the head's (halved) bias
        for j in range(hidden):
            acc += weights[offset + j] * new_state[0, num_layers - 1, j]
        p = np.float32(0.5 * math.tanh(acc) + 0.5)
        lr = float(np.float32(gamma) * p)  # the float32 product, as the tensor step computes it
        if not math.isfinite(lr):
            return last_lr
        lr = min(lr, cap)
        scalars[3] = lr
        counters[0] = 1 - counters[0]
        counters[1] += 1
        return lr

    return step


def packed_weights(network) -> np.ndarray:
    """The network's :meth:`~mlrsnet_hf.MLRSNet.numpy_weights` in one float32 array (cached on the network)."""
    cells, head_weight, head_bias = network.numpy_weights()
    if cells[0][0].shape[0] != 2 * (network.hidden_size // 2):  # the kernel derives the layout from hidden_size
        raise ValueError(f"The compiled step expects cells of inner width {network.hidden_size // 2} per branch.")
    if network.__dict__.get("_packed_of") is not cells:
        parts = [a.reshape(-1) for cell in cells for a in cell] + [head_weight, np.float32([head_bias])]
        network.__dict__["_packed"] = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
        network.__dict__["_packed_of"] = cells
    return network.__dict__["_packed"]


def arrays(
    network, h: np.ndarray, c: np.ndarray, divisor: float, gamma: float, cap: float, last_lr: float
) -> tuple[np.ndarray, ...]:
    """:func:`kernel`'s arguments after the loss, ``(scalars, states, counters, weights)``, for steps of ``network``
    from the state ``(h, c)`` (each of shape ``(num_layers, hidden_size)``); the kernel updates them in place."""
    states = np.empty((2, 2, *h.shape), np.float32)
    states[0, 0], states[0, 1] = h, c
    return np.array([divisor, gamma, cap, last_lr]), states, np.zeros(2, np.int64), packed_weights(network)


def kernel():
    """The compiled step (None when numba is not installed or could not compile it); compiled at the first call,
    then cached by numba.

    ``kernel(loss, scalars, states, counters, weights) -> lr`` (the arrays made by :func:`arrays`) takes one step of the network whose
    ``weights = packed_weights(network)``, for the input ``loss / divisor``, and returns the LR,
    ``min(float32(gamma) * p, cap)``. ``scalars`` (float64) is ``[divisor, gamma, cap, last_lr]``; ``states``
    (float32, shape ``(2, 2, num_layers, hidden_size)``) holds two ``(h, c)`` stacks and ``counters`` (int64)
    ``[index of the current stack in states, finite steps]``. A step with a finite loss and LR writes the new state
    into the other stack, makes it current, counts itself and stores its LR as ``last_lr``; any other step
    returns ``last_lr`` and changes nothing.
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
