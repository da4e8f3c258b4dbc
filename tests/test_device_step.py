"""DeviceStep: the fast transfer step (compiled or NumPy on a CPU, fused tensors on an accelerator) follows the
schedule's rule."""

import copy
import math
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from mlrsnet_hf import MLRSNetSchedule, cpu_kernel
from mlrsnet_hf.device_step import DeviceStep, _TensorStep

needs_numba = pytest.mark.skipif(not cpu_kernel.AVAILABLE, reason="numba is not installed (pip install .[fast])")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
PATHS = [
    pytest.param("compiled", marks=needs_numba), "numpy", "tensor",
    pytest.param("cuda-graph", marks=needs_cuda), pytest.param("cuda-eager", marks=needs_cuda),
]  # fmt: skip


def use_path(monkeypatch, path):
    """Make DeviceStep take one of its paths: on a CPU the compiled kernel, NumPy, or the accelerator's tensor step;
    on a GPU the tensor step replayed as a CUDA graph or run eagerly. Returns the device the schedule goes to."""
    monkeypatch.setattr(DeviceStep, "numpy_on_cpu", path in ("compiled", "numpy"))
    monkeypatch.setattr(DeviceStep, "compiled_on_cpu", path == "compiled")
    monkeypatch.setattr(DeviceStep, "graphed_on_cuda", path == "cuda-graph")
    return "cuda" if path.startswith("cuda") else "cpu"


def graphed(stepper):
    """Whether the current stage's step is a CUDA graph made for the network's current weights."""
    network = stepper.schedule.stages[stepper.schedule.stage]
    steps = stepper._tensor_steps.get(network)
    return steps is not None and steps.graph is not None and steps.current()


LOSSES = [2.3, 2.1, math.nan, 1.9, 1.7, math.inf, 1.5, 1.2, 1.1, 0.9]


def started(gamma, dtype=torch.float32, device="cpu", **kwargs):
    torch.manual_seed(0)
    schedule = MLRSNetSchedule(hidden_size=16, num_layers=2, gate_layout="ifog_shifted", gamma=gamma, **kwargs)
    schedule.to(dtype)
    with torch.no_grad():
        for p in schedule.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    schedule.to(device)
    schedule.start(num_classes=10, base_lr=0.1 if gamma == "relative" else None)
    schedule.enter_stage(0)
    schedule.step(2.5)  # the first step (a stage entry) is the schedule's own
    return schedule


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "gamma, kwargs",
    [(0.5, {}), ("relative", {"relative_max_scale": 1.05}), (0.2, {"input_normalization": "log_num_classes"})],
)
def test_fast_steps_follow_the_schedule(monkeypatch, path, gamma, kwargs):
    device = use_path(monkeypatch, path)
    host = started(gamma, **kwargs)
    fast = started(gamma, device=device, **kwargs)
    stepper = DeviceStep(fast)
    stepper.prepare()  # what the driver does at a stage entry (captures the CUDA graph)
    expected = [host.step(loss) for loss in LOSSES]
    got = [float(stepper.step(torch.tensor(loss, device=device))) for loss in LOSSES]
    assert graphed(stepper) == (path == "cuda-graph")
    assert got == pytest.approx(expected, rel=1e-6)
    assert got[2] == got[1] and got[5] == got[4]  # a non-finite loss keeps the last LR
    if gamma == "relative":
        assert max(got) <= 0.1 * 1.05  # the cap, exactly
    stepper.sync()
    assert (fast.num_steps, fast.num_skipped) == (host.num_steps, host.num_skipped) == (9, 2)
    assert fast.last_lr == got[-1]
    assert torch.allclose(fast.state.h.cpu(), host.state.h, atol=1e-6) and torch.allclose(
        fast.state.c.cpu(), host.state.c, atol=1e-6
    )
    # after a sync the schedule's own step carries on from the synced state
    assert fast.step(0.8) == pytest.approx(host.step(0.8), rel=1e-6)
    # and a second run of fast steps starts from it
    assert float(stepper.step(torch.tensor(0.7, device=device))) == pytest.approx(host.step(0.7), rel=1e-6)


def test_the_numpy_path_is_used_only_for_float32_on_the_cpu():
    schedule = started(0.5)
    stepper = DeviceStep(schedule)
    assert isinstance(stepper.step(torch.tensor(2.0)), float)
    double = started(0.5, dtype=torch.float64)
    assert isinstance(DeviceStep(double).step(torch.tensor(2.0, dtype=torch.float64)), torch.Tensor)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("weight", ["fc_i2h.0.weight", "fc_h2h.2.weight", "fc_i2h.2.bias"])
def test_weights_that_give_a_non_finite_lr_keep_the_last_lr_and_state(monkeypatch, path, weight):
    """One NaN weight anywhere in the cell makes every LR non-finite: a relu at 0 must not hide it, nor must the
    compiled step's table of the loss branch or its skipping of units at 0."""
    device = use_path(monkeypatch, path)
    schedule = started(0.5, device=device)
    cell = schedule.stages[0].cells[0]
    with torch.no_grad():
        cell.fc_h2h[0].bias[0] = -1e3  # the state branch's unit 0 stays at 0: its weights are multiplied by 0
    stepper = DeviceStep(schedule)
    first = float(stepper.step(torch.tensor(2.0, device=device)))
    with torch.no_grad():
        cell.get_parameter(weight).view(-1)[0] = math.nan  # for fc_h2h.2.weight: unit 0's weight into gate 0
    stepper.sync()
    state = schedule.state
    got = [float(stepper.step(torch.tensor(loss, device=device))) for loss in (1.9, 1.8)]
    assert got == [first, first]
    assert graphed(stepper) == (path == "cuda-graph")  # captured again for the new weights
    stepper.sync()
    assert schedule.num_skipped == 2 and schedule.last_lr == first
    assert torch.equal(schedule.state.h, state.h) and torch.equal(schedule.state.c, state.c)


def test_a_kernel_that_does_not_compile_falls_back_to_numpy(monkeypatch, caplog):
    def fails():
        raise RuntimeError("no LLVM here")

    monkeypatch.setattr(cpu_kernel, "AVAILABLE", True)
    monkeypatch.setattr(cpu_kernel, "_compile", fails)
    monkeypatch.setattr(cpu_kernel, "_kernel", None)
    host = started(0.5)
    stepper = DeviceStep(copy.deepcopy(host))
    with caplog.at_level("WARNING", logger="mlrsnet_hf.cpu_kernel"):
        got = [stepper.step(torch.tensor(loss)) for loss in (2.0, 1.5)]
    assert "no LLVM here" in caplog.text and stepper._compiled is None
    assert got == pytest.approx([host.step(2.0), host.step(1.5)], rel=1e-6)


def test_the_loss_branch_table_is_the_branch_as_a_function_of_the_loss():
    """The compiled step reads the first cell's loss branch, ``W2 relu(w1 x + b1) + bias``, from a table of its
    linear pieces: at the breakpoints, between them and far out it is the branch."""
    rng = np.random.default_rng(0)
    w1, b1, w2, bias = rng.normal(size=12), rng.normal(size=12), rng.normal(size=(12, 40)), rng.normal(size=40)
    w1[3] = 0.0  # a unit that does not read the loss: on (b1 > 0) or off everywhere
    b1[3] = 0.5
    breaks, slopes, intercepts = cpu_kernel._loss_branch_table(w1, b1, w2, bias)
    assert np.all(np.diff(breaks) >= 0) and breaks[-1] == np.inf
    for x in [*breaks[:-1], *rng.normal(scale=3, size=50), -1e6, 1e6]:
        piece = int(np.sum(breaks < x))
        branch = np.maximum(w1 * x + b1, 0) @ w2 + bias
        assert slopes[piece] * x + intercepts[piece] == pytest.approx(branch, rel=1e-9, abs=1e-9)


@needs_numba
def test_the_compiled_step_is_the_numpy_step_over_a_long_run():
    """The compiled step (the loss branch as a table, units at 0 skipped) follows NumPy's dense step over 2000 steps
    of a 50-wide network with losses of every size, including 0 and the loss branch's breakpoints."""
    torch.manual_seed(0)
    network = MLRSNetSchedule(hidden_size=50).stages[0]
    with torch.no_grad():
        for p in network.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    breaks = cpu_kernel.packed_weights(network)[1 : 1 + 50 // 2]  # the table's breakpoints, after `fast`
    rng = np.random.default_rng(0)
    losses = [*rng.uniform(-3, 10, size=1900), *breaks[np.isfinite(breaks)], 0.0, 1e-30, 1e30]
    h, c = np.zeros((2, 1, 50), np.float32)
    args = cpu_kernel.KernelArgs(network, h, c, 1.0, 1.0, math.inf, 0.0)
    worst = 0.0
    for loss in losses:
        p, h, c = network.numpy_forward(loss, h, c)
        lr = cpu_kernel.kernel()(loss, args.address)
        worst = max(worst, abs(lr - float(np.float32(p))) / float(np.float32(p)))
    assert worst < 2e-6


@needs_numba
def test_a_copy_of_the_compiled_step_steps_on_arrays_of_its_own():
    """The kernel takes the address of a table of its arrays: a copy made mid-run goes on from the same state on
    arrays of its own, untouched by the original's steps."""
    stepper = DeviceStep(started(0.5))
    for loss in (2.3, 2.1):
        stepper.step(torch.tensor(loss))
    copied = copy.deepcopy(stepper)
    expected = [stepper.step(torch.tensor(loss)) for loss in (1.9, 1.7)]
    assert [copied.step(torch.tensor(loss)) for loss in (1.9, 1.7)] == expected
    for args in (copied._compiled, pickle.loads(pickle.dumps(stepper._compiled))):
        arrays = args.scalars, args.states, args.counters, args.weights, args.scratch
        assert list(args.table[:5]) == [a.ctypes.data for a in arrays] and args.address == args.table.ctypes.data


def test_the_compiled_steps_arrays_are_checked_before_the_kernel_reads_them_by_address():
    """A state of another shape than the network's, or arrays of another dtype or layout, are refused: the kernel
    would read past them."""
    two_cells = MLRSNetSchedule(hidden_size=50, num_layers=2).stages[0]
    h = np.zeros((1, 50), np.float32)  # the state of one cell
    with pytest.raises(ValueError, match=r"float32 array of shape \(\d+,\)"):
        cpu_kernel.KernelArgs(two_cells, h, h, 1.0, 1.0, 1.0, 1.0)
    args = cpu_kernel.KernelArgs(MLRSNetSchedule(hidden_size=50).stages[0], h, h, 1.0, 1.0, 1.0, 1.0)
    args.states = np.asfortranarray(args.states)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        args._bind()


@needs_numba
def test_the_compiled_step_is_compiled_once_then_loaded_from_numbas_cache(tmp_path):
    """A second process loads the kernel from numba's cache on disk: it compiles nothing and writes no new entry.
    (A kernel whose helpers sit in its closure got a new cache key in every process: each one compiled it for
    seconds and added a file to the cache.)"""
    load = (
        "import importlib.util, sys; spec = importlib.util.spec_from_file_location('cpu_kernel', sys.argv[1]); "
        "module = sys.modules['cpu_kernel'] = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
        "assert module.kernel() is not None"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    entries = []
    for _ in range(2):
        subprocess.run([sys.executable, "-c", load, cpu_kernel.__file__], env=env, check=True)
        entries.append(sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.rglob("*") if p.is_file()))
    assert entries[0] == entries[1] and len([name for name, _ in entries[0] if name.endswith(".nbc")]) == 1


@needs_cuda
def test_a_step_that_does_not_capture_runs_eagerly(monkeypatch, caplog):
    def fails(self):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(_TensorStep, "capture", fails)
    host, fast = started(0.5), started(0.5, device="cuda")
    stepper = DeviceStep(fast)
    with caplog.at_level("WARNING", logger="mlrsnet_hf.device_step"):
        stepper.prepare()
        got = [float(stepper.step(torch.tensor(loss, device="cuda"))) for loss in (2.0, 1.5)]
    assert "it runs eagerly" in caplog.text and not graphed(stepper)
    assert got == pytest.approx([host.step(2.0), host.step(1.5)], rel=1e-6)


@pytest.mark.parametrize("path", ["tensor", pytest.param("cuda-graph", marks=needs_cuda)])
def test_a_float32_lr_for_kernels_that_read_one_keeps_the_cap(monkeypatch, path):
    """Fused optimizers read a float32 LR for float32 parameters: the LR is made in float32, capped exactly."""
    device = use_path(monkeypatch, path)
    host = started("relative", relative_max_scale=1.0001)
    stepper = DeviceStep(started("relative", device=device, relative_max_scale=1.0001), lr_dtype=torch.float32)
    stepper.prepare()
    expected = [host.step(loss) for loss in LOSSES]
    got = [stepper.step(torch.tensor(loss, device=device)) for loss in LOSSES]
    assert all(lr.dtype == torch.float32 for lr in got)
    assert [float(lr) for lr in got] == pytest.approx(expected, rel=1e-6)
    assert max(float(lr) for lr in got) <= host.max_lr  # the cap rounded down, not to nearest
    assert sum(float(lr) == 0.1000099927186966 for lr in got) >= 3  # capped: the float32 below 0.1 * 1.0001


@pytest.mark.parametrize("path", ["tensor", pytest.param("cuda-graph", marks=needs_cuda)])
def test_the_device_step_applies_loss_and_gamma_as_the_schedule_does(monkeypatch, path):
    """A bf16 network's LR equals the host step's (gamma not rounded to bf16 first); a huge finite loss that the
    host step takes is not counted as non-finite in float32; a skipped step keeps a last LR under the cap."""
    device = use_path(monkeypatch, path)
    kwargs = dict(dtype=torch.bfloat16, input_normalization="log_num_classes")
    host, fast = started(0.3, **kwargs), started(0.3, device=device, **kwargs)
    stepper = DeviceStep(fast, lr_dtype=torch.float32)
    stepper.prepare()
    losses = (2.0, 1.7, 1.3)
    assert [float(stepper.step(torch.tensor(x, device=device))) for x in losses] == [host.step(x) for x in losses]

    host, fast = started(10.0), started(10.0, device=device)
    stepper = DeviceStep(fast, lr_dtype=torch.float32)
    assert float(stepper.step(torch.tensor(1e38, device=device))) == pytest.approx(host.step(1e38), rel=1e-6)
    stepper.sync()
    assert fast.num_skipped == host.num_skipped == 0

    fast = started("relative", device=device, relative_max_scale=1.0001)
    fast.last_lr = fast.max_lr  # what a capped host step hands out
    stepper = DeviceStep(fast, lr_dtype=torch.float32)
    assert float(stepper.step(torch.tensor(math.nan, device=device))) <= fast.max_lr


@needs_cuda
def test_a_capture_that_fails_inside_restores_the_stream_and_runs_eagerly(monkeypatch, caplog):
    run = _TensorStep.run

    def syncs_while_capturing(self):
        run(self)
        if torch.cuda.is_current_stream_capturing():
            self.loss.item()  # a host read: not allowed in a capture

    monkeypatch.setattr(_TensorStep, "run", syncs_while_capturing)
    host, fast = started(0.5), started(0.5, device="cuda")
    stepper, before = DeviceStep(fast), torch.cuda.current_stream()
    with caplog.at_level("WARNING", logger="mlrsnet_hf.device_step"):
        stepper.prepare()
    assert "it runs eagerly" in caplog.text and not graphed(stepper)
    assert torch.cuda.current_stream() == before
    got = [float(stepper.step(torch.tensor(loss, device="cuda"))) for loss in (2.0, 1.5)]
    assert got == pytest.approx([host.step(2.0), host.step(1.5)], rel=1e-6)
