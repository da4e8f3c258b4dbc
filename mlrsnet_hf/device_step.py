"""``DeviceStep``: a transferred schedule's step at the cost of a built-in schedule.

:meth:`MLRSNetSchedule.step <mlrsnet_hf.MLRSNetSchedule.step>` runs the network's module forward (about 25
small tensor operations) and returns the LR as a Python float, which on a GPU costs a device synchronisation
per optimizer step (the host waits for the loss, then for the LR). In transfer mode the weights are fixed, so
two faster paths exist; both compute the same rule (``gamma * p``, capped in relative mode; a non-finite loss
or LR keeps the LSTM state and the last LR, and is counted):

* on an accelerator, the step stays on the device: the loss is a device tensor, the network runs its fused
  no-grad step (:meth:`MLRSNet.fast_forward <mlrsnet_hf.MLRSNet.fast_forward>`), the LR comes out as a 0-d
  tensor (float32 for an optimizer whose kernel reads a float32 LR, see ``lr_dtype``) and the guard is a ``torch.where``: nothing is read on the host. On CUDA the step is captured
  once per stage as a CUDA graph (at the stage entry, which may synchronise) and replayed: three launches per
  step instead of ~25;
* on a CPU, where reading a loss costs nothing, the whole step is one compiled call when numba is installed
  (:mod:`mlrsnet_hf.cpu_kernel`), else the network steps in NumPy
  (:meth:`MLRSNet.numpy_forward <mlrsnet_hf.MLRSNet.numpy_forward>`, a few times faster than tensor
  operations on 50-wide vectors); the LR is a float.

What the host needs (the last LR, the LSTM state, the steps taken and skipped) is folded into the schedule by
:meth:`DeviceStep.sync`, called at logging, checkpoints, stage switches and the end of a run. Stage entries
(and so the first step, which fixes gamma in relative mode) use the schedule's own ``step``.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn

from . import cpu_kernel
from .network import MLRSNetState
from .schedule import MLRSNetSchedule

logger = logging.getLogger(__name__)


class _TensorStep:
    """The accelerator step on fixed buffers: one network's step, runnable eagerly or replayed as a CUDA graph.

    Everything the step reads or writes lives in the buffers below, so on CUDA the ~25 small operations are
    captured once (:meth:`capture`, at a step that may synchronise) and each step is then a copy of the loss, one
    graph replay and a copy of the LR: three launches instead of ~25. The loss, ``ln C`` and gamma are applied as
    :meth:`MLRSNetSchedule.step <mlrsnet_hf.MLRSNetSchedule.step>` applies them (the division in float64, gamma
    in the precision of the network's multiplication), whatever the network's dtype.
    """

    def __init__(self, network: nn.Module, lr_dtype: torch.dtype) -> None:
        ref = network.head.weight
        num_layers, hidden = len(network.cells), network.hidden_size
        self.network, self.fused, self.graph = network, network.fused_weights(), None
        self.loss, self.divisor = (torch.zeros((), dtype=torch.float64, device=ref.device) for _ in range(2))
        # a Python float times a tensor is computed in float32 for float32/bf16/fp16 tensors, in float64 for float64
        scalar = torch.float64 if ref.dtype == torch.float64 else torch.float32
        self.gamma = torch.zeros((), dtype=scalar, device=ref.device)
        self.cap, self.last_lr = (torch.zeros((), dtype=lr_dtype, device=ref.device) for _ in range(2))
        self.finite = torch.zeros((), dtype=torch.int64, device=ref.device)
        self.h, self.c = (torch.zeros(num_layers, hidden, dtype=ref.dtype, device=ref.device) for _ in range(2))

    def current(self) -> bool:
        """Whether the network's weights are still the ones these buffers (and the graph) were made for."""
        return self.network.fused_weights() is self.fused

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
        p, state = self.network.fast_forward(self.loss / self.divisor, MLRSNetState(self.h, self.c))
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
    """Steps ``schedule`` fast between stage entries; the schedule's host values are up to date after :meth:`sync`."""

    numpy_on_cpu = True  # False: take the accelerator path on a CPU too (the tests check it there)
    compiled_on_cpu = True  # False: the NumPy step even when numba is installed
    graphed_on_cuda = True  # False: the tensor step runs eagerly on CUDA too

    def __init__(self, schedule: MLRSNetSchedule, lr_dtype: torch.dtype = torch.float64) -> None:
        self.schedule = schedule
        self.lr_dtype = lr_dtype  # of the LR on an accelerator: what the optimizer's kernel reads
        self._active = False  # steps taken since the last sync
        self._taken = 0
        self._finite = 0  # NumPy step: steps with a finite loss and LR since the last sync (the kernel counts its own)
        self._last_lr: float | None = None
        self._numpy_state: tuple[np.ndarray, np.ndarray] | None = None
        self._compiled: cpu_kernel.KernelArgs | None = None  # what the compiled step reads and updates
        self._tensor_steps: dict[nn.Module, _TensorStep] = {}  # per stage network (each its own CUDA graph)
        self._tensor_step: _TensorStep | None = None  # the one in use since the last sync
        self._graph_failed = False

    def prepare(self) -> None:
        """Make the current stage's step ready where the host may wait (a stage entry): on CUDA, capture its graph."""
        network = self.schedule.stages[self.schedule.stage]
        if network.head.weight.device.type == "cuda":
            self._tensor_step_of(network)

    def _tensor_step_of(self, network: nn.Module) -> _TensorStep:
        steps = self._tensor_steps.get(network)
        if steps is None or not steps.current():
            steps = self._tensor_steps[network] = _TensorStep(network, self.lr_dtype)
        if steps.graph is None and self.graphed_on_cuda and not self._graph_failed and steps.h.is_cuda:
            try:
                steps.capture()
            except Exception as error:  # noqa: BLE001 - any capture failure: run the same step eagerly
                self._graph_failed = True
                logger.warning("Could not capture the schedule's step as a CUDA graph (%s): it runs eagerly.", error)
        return steps

    def ready(self) -> bool:
        """Whether the next step can run here: a stage entered, its gamma known, a last LR to fall back to."""
        schedule = self.schedule
        return schedule.current_gamma is not None and (self._active or schedule.last_lr is not None)

    def _begin(self) -> None:
        """The first step since the last sync: fix what stays constant until the next one."""
        schedule = self.schedule
        state = schedule.state
        self._network = schedule.stages[schedule.stage]
        self._gamma, self._max_lr = schedule.current_gamma, schedule.max_lr
        self._log_c = math.log(schedule.num_classes) if schedule.input_normalization != "none" else None
        self._divisor = self._log_c if self._log_c is not None else 1.0
        self._cap = self._max_lr if self._max_lr is not None else math.inf
        weight = self._network.head.weight
        self._numpy = self.numpy_on_cpu and weight.device.type == "cpu" and weight.dtype == torch.float32
        if self._numpy:
            self._kernel = cpu_kernel.kernel() if self.compiled_on_cpu else None
            if self._kernel is not None:  # its arrays; the weights are fixed until the next sync: looked up once
                self._compiled = cpu_kernel.KernelArgs(
                    self._network,
                    state.h.numpy(),
                    state.c.numpy(),
                    self._divisor,
                    self._gamma,
                    self._cap,
                    schedule.last_lr,
                )
            else:
                self._last_lr, self._finite = schedule.last_lr, 0
                self._numpy_state = state.h.numpy().copy(), state.c.numpy().copy()
        else:
            self._tensor_step = self._tensor_step_of(self._network)
            self._tensor_step.load(self._gamma, self._divisor, self._cap, schedule.last_lr, state)
        self._active, self._taken = True, 0

    def step(self, loss: torch.Tensor) -> torch.Tensor | float:
        """The LR for a step with training loss ``loss``: a 0-d device tensor of ``lr_dtype``, or a float on a CPU."""
        if not self._active:
            self._begin()
        self._taken += 1
        if self._compiled is not None:
            return self._kernel(loss.item(), self._compiled.address)
        if self._numpy:
            return self._numpy_step(loss.item())
        return self._tensor_step.step(loss)

    def _numpy_step(self, loss: float) -> float:
        x = loss / self._log_c if self._log_c is not None else loss
        if not math.isfinite(x):
            return self._last_lr
        p, h, c = self._network.numpy_forward(x, *self._numpy_state)
        lr = float(np.float32(self._gamma) * np.float32(p))  # float32, as the tensor path computes it
        if self._max_lr is not None:
            lr = min(lr, self._max_lr)
        if not math.isfinite(lr):
            return self._last_lr
        self._numpy_state, self._last_lr = (h, c), lr
        self._finite += 1
        return lr

    def sync(self) -> None:
        """Fold the steps taken here into the schedule's host values (two reads of the device: the LR, the count)."""
        if not self._active:
            return
        schedule = self.schedule
        if self._compiled is not None:
            compiled = self._compiled
            last_lr, finite = float(compiled.scalars[3]), int(compiled.counters[1])
            schedule.state = MLRSNetState(*(torch.from_numpy(a) for a in compiled.state()))
        elif self._numpy:
            last_lr, finite = self._last_lr, self._finite
            h, c = (torch.from_numpy(a) for a in self._numpy_state)
            schedule.state = MLRSNetState(h, c)
        else:
            steps, self._tensor_step = self._tensor_step, None
            last_lr, finite = steps.last_lr.item(), int(steps.finite.item())
            schedule.state = MLRSNetState(steps.h.clone(), steps.c.clone())
        skipped = self._taken - finite
        schedule.last_lr = last_lr
        schedule.num_steps += finite
        schedule.num_skipped += skipped
        if skipped:
            logger.warning(
                "%d of the last %d steps had a non-finite training loss (or LR): each kept the LSTM state and the "
                "last LR (now %g).",
                skipped,
                self._taken,
                last_lr,
            )
        self._active, self._taken, self._last_lr = False, 0, None
        self._numpy_state = self._compiled = None
