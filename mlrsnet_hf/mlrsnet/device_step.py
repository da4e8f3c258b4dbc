"""``DeviceStep``: a transferred schedule's step at the cost of a built-in schedule.

:meth:`ScheduleRun.step <mlrsnet_hf.mlrsnet.run.ScheduleRun.step>` runs the network's reference forward (about 25
small tensor operations, autograd-ready) and returns the LR as a Python float, which on a GPU costs a device
synchronisation per optimizer step (the host waits for the loss, then for the LR). In transfer mode the weights
are fixed, so the step runs on fused weights (:mod:`mlrsnet_hf.mlrsnet.fused_step`), by one of these backends (the
``step_backend`` option; all compute the same rule: ``gamma * p``, capped in relative mode; a non-finite loss or
LR keeps the LSTM state and the last LR, and is counted):

* ``"cuda_graph"`` (the default on CUDA): the step stays on the device and is captured once per stage as a CUDA
  graph (at the stage entry, which may synchronise), then replayed: three launches per step instead of ~25,
  nothing read on the host. The LR comes out as a 0-d tensor (float32 for an optimizer whose kernel reads a
  float32 LR, see ``lr_dtype``), the guard is a ``torch.where``;
* ``"tensor"``: the same step run eagerly (any device; the default for a network that is not float32 on a CPU);
* ``"numpy"`` (the default for a float32 network on a CPU, where reading a loss costs nothing): the network steps
  in NumPy on the host, about 19 us a step against 75 for the eager tensor step (50 units, one thread); the LR
  is a float.

What the host needs (the last LR, the LSTM state, the steps taken and skipped) is folded into the run by
:meth:`DeviceStep.sync`, called at logging, checkpoints, stage switches and the end of a run. Stage entries
(and so the first step, which fixes gamma in relative mode) use the run's own ``step``
(:meth:`ScheduleRun.step <mlrsnet_hf.mlrsnet.run.ScheduleRun.step>`).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn

from ..options import check_step_backend
from .fused_step import FusedWeights, numpy_step, tensor_step
from .network import MLRSNetState
from .run import ScheduleRun

logger = logging.getLogger(__name__)


class _TensorStep:
    """The accelerator step on fixed buffers: one network's step, runnable eagerly or replayed as a CUDA graph.

    Everything the step reads or writes lives in the buffers below, so on CUDA the ~25 small operations are
    captured once (:meth:`capture`, at a step that may synchronise) and each step is then a copy of the loss, one
    graph replay and a copy of the LR: three launches instead of ~25. The loss, ``ln C`` and gamma are applied as
    :meth:`ScheduleRun.step <mlrsnet_hf.mlrsnet.run.ScheduleRun.step>` applies them (the division in float64, gamma
    in the precision of the network's multiplication), whatever the network's dtype.
    """

    def __init__(self, network: nn.Module, lr_dtype: torch.dtype) -> None:
        ref = network.head.weight
        num_layers, hidden = len(network.cells), network.hidden_size
        self.weights = FusedWeights(network)
        self.network, self.fused, self.graph = network, self.weights.tensors(), None
        self.loss, self.divisor = (torch.zeros((), dtype=torch.float64, device=ref.device) for _ in range(2))
        # a Python float times a tensor is computed in float32 for float32/bf16/fp16 tensors, in float64 for float64
        scalar = torch.float64 if ref.dtype == torch.float64 else torch.float32
        self.gamma = torch.zeros((), dtype=scalar, device=ref.device)
        self.cap, self.last_lr = (torch.zeros((), dtype=lr_dtype, device=ref.device) for _ in range(2))
        self.finite = torch.zeros((), dtype=torch.int64, device=ref.device)
        self.h, self.c = (torch.zeros(num_layers, hidden, dtype=ref.dtype, device=ref.device) for _ in range(2))

    def current(self) -> bool:
        """Whether the network's weights are still the ones these buffers (and the graph) were made for."""
        return self.weights.current()

    def load(self, gamma: float, divisor: float, cap: float, last_lr: float, state: MLRSNetState) -> None:
        """Set the values that stay fixed until the next sync, and the state to start from (no host read)."""
        if self.cap.dtype == torch.float32 and math.isfinite(cap):  # rounded down: the cap holds in float32 too
            rounded = np.float32(cap)
            if float(rounded) > cap:  # (compared in float64: NumPy would compare in float32)
                rounded = np.nextafter(rounded, np.float32(0))
            cap = float(rounded)
            last_lr = min(float(np.float32(last_lr)), cap)
        self.gamma.fill_(gamma)
        self.divisor.fill_(divisor)
        self.cap.fill_(cap)
        self.last_lr.fill_(last_lr)
        self.finite.zero_()
        self.h.copy_(state.h)
        self.c.copy_(state.c)

    def run(self) -> None:
        """One step on the buffers: ``lr = min(gamma * p, cap)``; a non-finite loss or LR keeps the state and LR."""
        p, state = tensor_step(self.fused, self.loss / self.divisor, MLRSNetState(self.h, self.c))
        lr = (p.to(self.gamma.dtype) * self.gamma).to(p.dtype)  # gamma * p as step() has it, then capped
        lr = torch.minimum(lr.to(self.cap.dtype), self.cap)
        ok = torch.isfinite(self.loss) & torch.isfinite(lr)
        self.last_lr.copy_(torch.where(ok, lr, self.last_lr))
        self.h.copy_(torch.where(ok, state.h, self.h))
        self.c.copy_(torch.where(ok, state.c, self.c))
        self.finite.add_(ok)

    def step(self, loss: torch.Tensor) -> torch.Tensor:
        self.loss.copy_(loss.detach().reshape(()))
        if self.graph is not None:
            self.graph.replay()
        elif torch.is_autocast_enabled(self.h.device.type):
            with torch.autocast(self.h.device.type, enabled=False):  # the network's own precision, as captured
                self.run()
        else:
            self.run()
        return self.last_lr.clone()  # the buffer changes at the next step; the optimizer and history keep this one

    def capture(self) -> None:
        """Record :meth:`run` as a CUDA graph on the buffers' GPU.

        ``torch.cuda.graph`` synchronises the device and empties the caching allocators: call this where a host
        read is allowed (a stage entry). The capture is thread-local, so that CUDA calls of other threads (the
        DataLoader's pin-memory thread) cannot break it; if it fails, the stream in use before is restored.
        """
        kept = [t.clone() for t in (self.last_lr, self.finite, self.h, self.c)]
        with torch.cuda.device(self.h.device), torch.autocast("cuda", enabled=False):
            current = torch.cuda.current_stream()
            side = torch.cuda.Stream()
            side.wait_stream(current)
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up off the capture (lazy library initialisation), as torch.cuda.graph asks
                    self.run()
            current.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, stream=torch.cuda.Stream(), capture_error_mode="thread_local"):
                    self.run()
            finally:
                torch.cuda.set_stream(current)  # a capture that fails at its end leaves its own stream current
            for t, saved in zip((self.last_lr, self.finite, self.h, self.c), kept, strict=True):
                t.copy_(saved)  # undo the warm-up
        self.graph = graph


class DeviceStep:
    """Steps ``run`` fast between stage entries; the run's host values are up to date after :meth:`sync`.

    ``lr_dtype``: the dtype of a device LR (what the optimizer's kernel reads); ``backend``: one of
    :data:`~mlrsnet_hf.options.STEP_BACKENDS`.
    """

    def __init__(self, run: ScheduleRun, lr_dtype: torch.dtype = torch.float64, backend: str = "auto") -> None:
        self.run = run
        self.lr_dtype = lr_dtype
        self.backend = check_step_backend(backend)
        self._active = False  # steps taken since the last sync
        self._taken = 0
        self._finite = 0  # NumPy step: steps with a finite loss and LR since the last sync
        self._last_lr: float | None = None
        self._numpy_state: tuple[np.ndarray, np.ndarray] | None = None
        self._numpy_weights: dict[nn.Module, FusedWeights] = {}  # per stage network
        self._tensor_steps: dict[nn.Module, _TensorStep] = {}  # per stage network (each its own CUDA graph)
        self._tensor_step: _TensorStep | None = None  # the one in use since the last sync
        self._graph_failed = False

    def path(self, network: nn.Module) -> str:
        """The backend that steps ``network``: ``backend``, or what "auto" picks for its device and dtype."""
        weight = network.head.weight
        on_cpu32 = weight.device.type == "cpu" and weight.dtype == torch.float32
        if self.backend == "auto":
            return "numpy" if on_cpu32 else "cuda_graph" if weight.is_cuda else "tensor"
        if self.backend == "numpy" and not on_cpu32:
            raise ValueError(
                f"step_backend='numpy' steps a float32 network on the CPU, not {weight.dtype} on {weight.device}."
            )
        if self.backend == "cuda_graph" and not weight.is_cuda:
            raise ValueError(f"step_backend='cuda_graph' needs the schedule on a CUDA device, not {weight.device}.")
        return self.backend

    def prepare(self) -> None:
        """Make the current stage's step ready where the host may wait (a stage entry): on CUDA, capture its graph."""
        network = self.run.stages[self.run.stage]
        if self.path(network) != "numpy":  # (building the fused weights may copy to the device: here, not later)
            self._tensor_step_of(network)

    def _tensor_step_of(self, network: nn.Module) -> _TensorStep:
        steps = self._tensor_steps.get(network)
        if steps is None or not steps.current():
            steps = self._tensor_steps[network] = _TensorStep(network, self.lr_dtype)
        if steps.graph is None and self.path(network) == "cuda_graph" and not self._graph_failed:
            try:
                steps.capture()
            except Exception as error:  # noqa: BLE001 - any capture failure: run the same step eagerly
                self._graph_failed = True
                logger.warning("Could not capture the schedule's step as a CUDA graph (%s): it runs eagerly.", error)
        return steps

    def ready(self) -> bool:
        """Whether the next step can run here: a stage entered, its gamma known, a last LR to fall back to."""
        run = self.run
        return run.current_gamma is not None and (self._active or run.last_lr is not None)

    def _begin(self) -> None:
        """The first step since the last sync: fix what stays constant until the next one."""
        run = self.run
        state = run.state
        network = run.stages[run.stage]
        self._gamma, self._max_lr = run.current_gamma, run.max_lr
        self._log_c = math.log(run.num_classes) if run.input_normalization != "none" else None
        self._numpy = self.path(network) == "numpy"
        if self._numpy:  # the weights are fixed until the next sync: looked up once
            weights = self._numpy_weights.get(network) or self._numpy_weights.setdefault(
                network, FusedWeights(network)
            )
            self._arrays = weights.arrays()
            self._last_lr, self._finite = run.last_lr, 0
            self._numpy_state = state.h.numpy().copy(), state.c.numpy().copy()
        else:
            divisor = self._log_c if self._log_c is not None else 1.0
            cap = self._max_lr if self._max_lr is not None else math.inf
            self._tensor_step = self._tensor_step_of(network)
            self._tensor_step.load(self._gamma, divisor, cap, run.last_lr, state)
        self._active, self._taken = True, 0

    def step(self, loss: torch.Tensor) -> torch.Tensor | float:
        """The LR for a step with training loss ``loss``: a 0-d device tensor of ``lr_dtype``, or a float (NumPy)."""
        if not self._active:
            self._begin()
        self._taken += 1
        if self._numpy:
            return self._numpy_step(loss.item())
        return self._tensor_step.step(loss)

    def _numpy_step(self, loss: float) -> float:
        x = loss / self._log_c if self._log_c is not None else loss
        if not math.isfinite(x):
            return self._last_lr
        p, h, c = numpy_step(self._arrays, x, *self._numpy_state)
        lr = float(np.float32(self._gamma) * np.float32(p))  # float32, as the tensor path computes it
        if self._max_lr is not None:
            lr = min(lr, self._max_lr)
        if not math.isfinite(lr):
            return self._last_lr
        self._numpy_state, self._last_lr = (h, c), lr
        self._finite += 1
        return lr

    def sync(self) -> None:
        """Fold the steps taken here into the run's host values (two reads of the device: the LR, the count)."""
        if not self._active:
            return
        run = self.run
        if self._numpy:
            last_lr, finite = self._last_lr, self._finite
            h, c = (torch.from_numpy(a) for a in self._numpy_state)
            run.state = MLRSNetState(h, c)
        else:
            steps, self._tensor_step = self._tensor_step, None
            last_lr, finite = steps.last_lr.item(), int(steps.finite.item())
            run.state = MLRSNetState(steps.h.clone(), steps.c.clone())
        skipped = self._taken - finite
        run.last_lr = last_lr
        run.num_steps += finite
        run.num_skipped += skipped
        if skipped:
            logger.warning(
                "%d of the last %d steps had a non-finite training loss (or LR): each kept the LSTM state and the "
                "last LR (now %g).",
                skipped,
                self._taken,
                last_lr,
            )
        self._active, self._taken, self._last_lr = False, 0, None
        self._numpy_state = self._arrays = None
