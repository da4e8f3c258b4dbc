"""A transferred schedule's whole step on a CPU as one compiled call (numba), when numba is installed.

The LSTM cell(s), the head, ``gamma * p``, the cap, the finite check and the step's bookkeeping (the new state, the
count of finite steps, the last LR) run in one call, on weights packed into one array, with two arguments: the
loss and the address of a table of the step's arrays (:class:`KernelArgs`).
Inside a training loop a call costs several times what it costs in a tight loop: its code and data are cold again
after the Trainer's own work, and what it reads pushes out what the Trainer reads next. So the step reads as
little as it can:

* the first cell's loss branch (``Linear(1, inner) -> ReLU -> Linear(inner, 4 * hidden)``) is a piecewise-linear
  function of the loss, stored as a table of its pieces: a step reads one piece's slopes and intercepts, 400
  floats for the released 50-wide network, instead of the branch's 5,050 weights;
* the other branches skip the weights of units that the ReLU puts at 0.

Of the released networks' 12,851 weights a step reads 3,600-5,000 (36-64 % of the state branch's units are above 0
along a falling loss). Against reading them all, the call's own time inside a Trainer step fell from 12-15 to
9-10 us and its cost to the step from +23-30 to +10-16 us (``benchmarks/speed.py --only parts``); in a tight
loop, 1.8 us instead of 3.0. The tanh of the gates is a rational function (Eigen's float tanh, within 6 ulp),
which the compiler vectorises: libm's tanh, called 250 times a step, took about 5 us of the step.

``pip install mlrsnet_hf[fast]`` installs numba; without it :class:`~mlrsnet_hf.device_step.DeviceStep` uses its
NumPy step (the same rule in float32, up to the order of sums and the tanh's last bits). The first call compiles
the kernel (seconds, once for each version of this file, numba and CPU); later processes load it from numba's
cache on disk."""

from __future__ import annotations

import importlib.util
import logging
import math

import numpy as np

logger = logging.getLogger(__name__)

AVAILABLE = importlib.util.find_spec("numba") is not None

_kernel = None
# The kernel's one signature: (loss, address of the arrays' table) -> lr (see kernel() and KernelArgs).
SIGNATURE = "float64(float64, int64)"


# The kernel's helpers (set by _compile). Module globals, not closure cells: numba's cache key hashes what a closure
# holds, and a jitted function pickles differently in every process, so the kernel would be compiled in each one.
_at = _tanh = _branch = _run = None


def _compile():
    global _at, _tanh, _branch, _run
    import numba
    from numba import types
    from numba.extending import intrinsic

    # Compiled now, for the one signature used, so that a failure shows here.
    # reassoc/contract only: the sums may be vectorised, but NaN and inf keep their meaning (the finite check).
    fastmath = {"reassoc", "contract"}

    @intrinsic
    def at(typingctx, address, dtype):  # pragma: no cover
        """A pointer to ``dtype`` values at the integer ``address`` (an array's ``ctypes.data``)."""
        if not isinstance(address, types.Integer) or not isinstance(dtype, types.NumberClass):
            return None
        pointer = types.CPointer(dtype.dtype)

        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(pointer))

        return pointer(address, dtype), codegen

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

    @numba.njit(inline="always", fastmath=fastmath)
    def branch(gates, v, weights, offset, inner, width, skip):  # pragma: no cover
        """``gates += W2 relu(W1 v + b1)`` for one input branch stored at ``offset`` as ``W1`` (inner x width),
        ``b1`` and ``W2`` transposed (inner x gates): a unit's gate weights are contiguous, and with ``skip`` the
        units at 0 are left out (their weights not read). Returns the offset after the branch."""
        rows = gates.size
        w1 = weights[offset : offset + inner * width]
        b1 = weights[offset + inner * width : offset + inner * (width + 1)]
        offset += inner * (width + 1)
        for r in range(inner):
            z = b1[r]
            for j in range(width):
                z += w1[r * width + j] * v[j]
            z = np.float32(0) if z <= 0 else z  # relu that keeps a NaN, as np.maximum does
            if z == 0 and skip:
                continue
            w2 = weights[offset + r * rows : offset + (r + 1) * rows]
            for j in range(rows):
                gates[j] += z * w2[j]
        return offset + inner * rows

    _at, _tanh, _branch = at, tanh, branch

    @numba.njit(inline="always", fastmath=fastmath)
    def run(loss, scalars, states, counters, weights, buffer):  # pragma: no cover
        """One step; see :func:`kernel`, and :func:`packed_weights` for the layout of ``weights``."""
        divisor, gamma, cap, last_lr = scalars[0], scalars[1], scalars[2], scalars[3]
        x0 = np.float32(loss / divisor)
        if not math.isfinite(x0):
            return last_lr
        state, new_state = states[counters[0]], states[1 - counters[0]]
        num_layers, hidden = state.shape[1], state.shape[2]
        inner, rows = hidden // 2, 4 * hidden
        fast = weights[0] == 1  # all weights finite: the loss branch's table, units at 0 skipped
        gates, x = buffer[:rows], buffer[rows:]  # the gates, and the loss as a vector (dense path)
        x[0] = x0
        offset = 1
        for k in range(num_layers):
            width = 1 if k == 0 else hidden
            piece = 0
            if k == 0:  # the loss branch is piecewise linear in the loss: the piece is the breakpoints below it
                for i in range(inner):
                    piece += weights[offset + i] < x0
                offset += inner
                slope = weights[offset + piece * rows : offset + (piece + 1) * rows]
                offset += (inner + 1) * rows
                intercept = weights[offset + piece * rows : offset + (piece + 1) * rows]
                offset += (inner + 1) * rows
            bias = offset + inner * (width + 1 + rows) + inner * (hidden + 1 + rows)  # the gates' bias, after both
            if k == 0 and fast:
                for j in range(rows):
                    gates[j] = slope[j] * x0 + intercept[j]
                offset += inner * (width + 1 + rows)
            else:
                for j in range(rows):
                    gates[j] = weights[bias + j]
                offset = _branch(gates, x if k == 0 else new_state[0, k - 1], weights, offset, inner, width, fast)
            offset = _branch(gates, state[0, k], weights, offset, inner, hidden, fast) + rows
            for j in range(rows):
                gates[j] = _tanh(gates[j])  # sigmoid rows were halved: sigmoid(2t) = (tanh(t) + 1) / 2
            for j in range(hidden):
                i = gates[j] * np.float32(0.5) + np.float32(0.5)
                f = gates[hidden + j] * np.float32(0.5) + np.float32(0.5)
                o = gates[2 * hidden + j] * np.float32(0.5) + np.float32(0.5)
                c = f * state[1, k, j] + i * gates[3 * hidden + j]
                new_state[1, k, j] = c
                new_state[0, k, j] = o * _tanh(c)
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

    _run = run

    @numba.njit(SIGNATURE, cache=True, fastmath=fastmath)
    def step(loss, address):  # pragma: no cover
        """:func:`run` on the arrays whose addresses and sizes are in the table at ``address`` (see KernelArgs)."""
        table = numba.carray(_at(address, numba.int64), 8)
        num_layers, hidden = table[5], table[6]
        return _run(
            loss,
            numba.carray(_at(table[0], numba.float64), 4),
            numba.carray(_at(table[1], numba.float32), (2, 2, num_layers, hidden)),
            numba.carray(_at(table[2], numba.int64), 2),
            numba.carray(_at(table[3], numba.float32), table[7]),
            numba.carray(_at(table[4], numba.float32), 4 * hidden + 1),
        )

    return step


def _loss_branch_table(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, bias: np.ndarray) -> list[np.ndarray]:
    """The first cell's loss branch, ``W2 relu(w1 x + b1) + bias`` for a scalar ``x``, as the piecewise-linear
    function it is: the sorted breakpoints ``-b1 / w1`` (inf for a unit whose ``w1`` is 0) and, for each of the
    ``inner + 1`` pieces, the slope and intercept of every gate (summed in float64, then rounded). A step reads one
    piece (``2 * 4 * hidden`` floats) instead of the branch's ``inner * (4 * hidden + 2)`` weights."""
    a, b, w = w1.astype(np.float64), b1.astype(np.float64), w2.astype(np.float64)  # w: (inner, gates)
    inner = a.size
    with np.errstate(divide="ignore", invalid="ignore"):
        breaks = np.where(a != 0, -b / np.where(a != 0, a, 1.0), np.inf)
    rank = np.empty(inner, np.int64)
    rank[np.argsort(breaks, kind="stable")] = np.arange(inner)
    slopes, intercepts = np.empty((inner + 1, w.shape[1])), np.empty((inner + 1, w.shape[1]))
    for piece in range(inner + 1):  # x above the first `piece` breakpoints and below the others
        active = np.where(a > 0, rank < piece, np.where(a < 0, rank >= piece, b > 0))
        slopes[piece] = a[active] @ w[active]
        intercepts[piece] = b[active] @ w[active] + bias
    return [np.sort(breaks), slopes, intercepts]


def packed_weights(network) -> np.ndarray:
    """The network's :meth:`~mlrsnet_hf.MLRSNet.numpy_weights` in one float32 array, laid out for the kernel
    (cached on the network).

    ``[fast]``, then per cell (the first one's loss-branch table first, see :func:`_loss_branch_table`) each input
    branch as ``W1, b1, W2^T`` and the gates' bias, then the head's weight and bias. ``fast`` is 1 when every weight
    is finite; otherwise 0, and the kernel computes every unit densely (no table, no skipped units), so that a
    non-finite weight gives a non-finite LR, as in the other paths (``0 * inf`` is NaN).
    """
    cells, head_weight, head_bias = network.numpy_weights()
    inner, width = network.hidden_size // 2, 1
    if cells[0][0].shape[0] != 2 * inner:  # the kernel derives the layout from hidden_size
        raise ValueError(f"The compiled step expects cells of inner width {inner} per branch.")
    if network.__dict__.get("_packed_of") is not cells:
        fast = all(np.isfinite(a).all() for cell in cells for a in cell) and np.isfinite(head_weight).all()
        fast = fast and math.isfinite(head_bias)
        parts = [np.float32([1.0 if fast else 0.0])]
        for k, (w1, b1, w2, b2) in enumerate(cells):
            loss_branch = w1[:inner, :width], b1[:inner], w2[:, :inner].T
            state_branch = w1[inner:, width:], b1[inner:], w2[:, inner:].T
            if k == 0:
                table = _loss_branch_table(loss_branch[0][:, 0], loss_branch[1], loss_branch[2], b2) if fast else None
                parts += table or [np.zeros(inner), np.zeros((inner + 1) * b2.size), np.zeros((inner + 1) * b2.size)]
            parts += [*loss_branch, *state_branch, b2]
            width = network.hidden_size
        parts += [head_weight, np.float32([head_bias])]
        network.__dict__["_packed"] = np.concatenate([np.asarray(a, np.float32).reshape(-1) for a in parts])
        network.__dict__["_packed_of"] = cells
    return network.__dict__["_packed"]


def packed_size(num_layers: int, hidden: int) -> int:
    """The length of :func:`packed_weights` for a network of ``num_layers`` cells of hidden size ``hidden``."""
    inner, rows = hidden // 2, 4 * hidden
    size = 1 + inner + 2 * (inner + 1) * rows + hidden + 1  # fast, the loss-branch table, the head
    for k in range(num_layers):
        width = 1 if k == 0 else hidden
        size += inner * (width + 1 + rows) + inner * (hidden + 1 + rows) + rows
    return size


class KernelArgs:
    """What :func:`kernel` reads and updates for steps of ``network`` from the state ``(h, c)`` (each of shape
    ``(num_layers, hidden_size)``), and ``address``, its one argument besides the loss.

    The kernel takes the address of ``table`` (the addresses of the arrays below and their sizes), not the arrays:
    numba's conversion of four arrays at each call cost more than the step's float work in a tight loop. This
    object keeps the arrays alive; the kernel must not be called with its address after it is gone. A copy
    (``copy``, ``deepcopy``, pickle) has a table of its own arrays.
    """

    def __init__(
        self, network, h: np.ndarray, c: np.ndarray, divisor: float, gamma: float, cap: float, last_lr: float
    ) -> None:
        self.scalars = np.array([divisor, gamma, cap, last_lr])
        self.states = np.empty((2, 2, *h.shape), np.float32)
        self.states[0, 0], self.states[0, 1] = h, c
        self.counters = np.zeros(2, np.int64)
        self.weights = packed_weights(network)
        self._bind()

    def _bind(self) -> None:
        """Check the arrays (the kernel reads them unchecked, by address) and make the table of their addresses."""
        num_layers, hidden = self.states.shape[2:]
        expected = (
            (self.scalars, np.float64, (4,)),
            (self.states, np.float32, (2, 2, num_layers, hidden)),
            (self.counters, np.int64, (2,)),
            (self.weights, np.float32, (packed_size(num_layers, hidden),)),
        )
        for array, dtype, shape in expected:
            if array.dtype != dtype or array.shape != shape or not array.flags.c_contiguous:
                raise ValueError(
                    f"The compiled step needs a C-contiguous {np.dtype(dtype).name} array of shape {shape} here, got "
                    f"{array.dtype} {array.shape} (a network of {num_layers} cells of hidden size {hidden})."
                )
        self.scratch = np.empty(4 * hidden + 1, np.float32)
        arrays = self.scalars, self.states, self.counters, self.weights, self.scratch
        self.table = np.array([*(a.ctypes.data for a in arrays), num_layers, hidden, self.weights.size], np.int64)
        self.address = self.table.ctypes.data

    def __reduce__(self) -> tuple:
        return _rebound, (self.scalars, self.states, self.counters, self.weights)

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the current ``(h, c)``."""
        current = self.states[self.counters[0]]
        return current[0].copy(), current[1].copy()


def _rebound(scalars: np.ndarray, states: np.ndarray, counters: np.ndarray, weights: np.ndarray) -> KernelArgs:
    """A copy of a :class:`KernelArgs` (its ``__reduce__``), with a table of these arrays."""
    args = KernelArgs.__new__(KernelArgs)
    args.scalars, args.states, args.counters = scalars, states, counters
    args.weights = weights
    args._bind()
    return args


def kernel():
    """The compiled step (None when numba is not installed or could not compile it); compiled at the first call,
    then loaded from numba's cache on disk.

    ``kernel(loss, args.address) -> lr``, for a :class:`KernelArgs` ``args``, takes one step of the network whose
    ``weights = packed_weights(network)``, for the input ``loss / divisor``, and returns the LR,
    ``min(float32(gamma) * p, cap)``. ``args.scalars`` (float64) is ``[divisor, gamma, cap, last_lr]``;
    ``args.states`` (float32, shape ``(2, 2, num_layers, hidden_size)``) holds two ``(h, c)`` stacks and
    ``args.counters`` (int64) ``[index of the current stack in states, finite steps]``. A step with a finite loss
    and LR writes the new state into the other stack, makes it current, counts itself and stores its LR as
    ``last_lr``; any other step returns ``last_lr`` and changes nothing.

    It is the compiled function's own entry point, not numba's dispatcher, which matches the arguments' types at
    every call (about 3 us of a Trainer step's cost, ``benchmarks/speed.py --only parts``). Nothing is checked:
    pass only a float and the address of a :class:`KernelArgs` that is still alive.
    """
    global _kernel
    if _kernel is None:
        _kernel = False
        if AVAILABLE:
            try:
                dispatcher = _compile()
                compiled = dispatcher.overloads.get(dispatcher.signatures[0])
                _kernel = getattr(compiled, "entry_point", None) or dispatcher
            except Exception as error:  # e.g. a numba that does not support this platform or NumPy
                logger.warning("The compiled LR-schedule step is not available (%s): using the NumPy step.", error)
    return _kernel or None
