"""DeviceStep: the fast transfer step (NumPy on a CPU, fused tensors anywhere, a CUDA graph on CUDA) follows the
schedule's rule."""

import math

import numpy as np
import pytest
import torch

from mlrsnet_hf import MLRSNetSchedule, ScheduleOptions
from mlrsnet_hf.mlrsnet.device_step import DeviceStep, _TensorStep
from mlrsnet_hf.mlrsnet.fused_step import FusedWeights, numpy_step, tensor_step

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
PATHS = ["numpy", "tensor", pytest.param("cuda-graph", marks=needs_cuda), pytest.param("cuda-eager", marks=needs_cuda)]


def backend_of(path):
    """The backend and device of one of DeviceStep's paths: on a CPU NumPy or the tensor step; on a GPU the tensor
    step replayed as a CUDA graph or run eagerly."""
    backend = {"numpy": "numpy", "tensor": "tensor", "cuda-graph": "cuda_graph", "cuda-eager": "tensor"}[path]
    return backend, "cuda" if path.startswith("cuda") else "cpu"


def graphed(stepper):
    """Whether the current stage's step is a CUDA graph made for the network's current weights."""
    network = stepper.run.stages[stepper.run.stage]
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
    run = schedule.start(num_classes=10, base_lr=0.1 if gamma == "relative" else None)
    run.enter_stage(0)
    run.step(2.5)  # the first step (a stage entry) is the run's own
    return run


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "gamma, kwargs",
    [(0.5, {}), ("relative", {"relative_max_scale": 1.05}), (0.2, {"input_normalization": "log_num_classes"})],
)
def test_fast_steps_follow_the_schedule(path, gamma, kwargs):
    backend, device = backend_of(path)
    host = started(gamma, **kwargs)
    fast = started(gamma, device=device, **kwargs)
    stepper = DeviceStep(fast, backend=backend)
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
def test_weights_that_give_a_non_finite_lr_keep_the_last_lr_and_state(path, weight):
    """One NaN weight anywhere in the cell makes every LR non-finite: a relu at 0 must not hide it."""
    backend, device = backend_of(path)
    schedule = started(0.5, device=device)
    cell = schedule.stages[0].cells[0]
    with torch.no_grad():
        cell.fc_h2h[0].bias[0] = -1e3  # the state branch's unit 0 stays at 0: its weights are multiplied by 0
    stepper = DeviceStep(schedule, backend=backend)
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


def test_backends_are_chosen_by_argument_and_refused_where_they_cannot_run():
    assert DeviceStep(started(0.5)).path(started(0.5).stages[0]) == "numpy"  # "auto" on a CPU in float32
    double = started(0.5, dtype=torch.float64)
    assert DeviceStep(double).path(double.stages[0]) == "tensor"
    with pytest.raises(ValueError, match="step_backend='numpy' steps a float32 network on the CPU"):
        DeviceStep(double, backend="numpy").step(torch.tensor(2.0, dtype=torch.float64))
    with pytest.raises(ValueError, match="step_backend='cuda_graph' needs the schedule on a CUDA device"):
        DeviceStep(started(0.5), backend="cuda_graph").prepare()
    with pytest.raises(ValueError, match="step_backend must be one of 'auto', 'numpy', 'tensor', 'cuda_graph'"):
        ScheduleOptions(step_backend="numba")


def test_fused_weights_are_cached_outside_the_module_and_rebuilt_when_a_parameter_changes():
    network = started(0.5).stages[0]
    before = set(network.__dict__)
    weights = FusedWeights(network)
    first = weights.tensors()
    assert weights.tensors() is first and weights.current() and set(network.__dict__) == before
    with torch.no_grad():
        network.head.bias.add_(1.0)  # an in-place update, as an optimizer step or load_state_dict makes
    assert not weights.current()
    rebuilt = weights.tensors()
    assert rebuilt is not first and torch.equal(rebuilt[2], network.head.bias.detach())


def test_the_numpy_step_is_the_tensor_step_over_a_long_run():
    """NumPy's step (sigmoids as tanh, float32) follows the fused tensor step over 2000 steps of a 50-wide network
    with losses of every size, 0 included."""
    torch.manual_seed(0)
    network = MLRSNetSchedule(hidden_size=50).stages[0]
    with torch.no_grad():
        for p in network.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    weights = FusedWeights(network)
    rng = np.random.default_rng(0)
    losses = [*rng.uniform(-3, 10, size=1997), 0.0, 1e-30, 1e30]
    state = network.initial_state()
    h, c = state.h.numpy().copy(), state.c.numpy().copy()
    worst = 0.0
    with torch.no_grad():
        for loss in losses:
            p, h, c = numpy_step(weights.arrays(), loss, h, c)
            q, state = tensor_step(weights.tensors(), torch.tensor(loss), state)
            worst = max(worst, abs(p - float(q)) / float(q))
            h, c = state.h.numpy().copy(), state.c.numpy().copy()  # the same state for both at every step
    assert worst < 2e-6


@needs_cuda
def test_a_step_that_does_not_capture_runs_eagerly(monkeypatch, caplog):
    def fails(self):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(_TensorStep, "capture", fails)
    host, fast = started(0.5), started(0.5, device="cuda")
    stepper = DeviceStep(fast)
    with caplog.at_level("WARNING", logger="mlrsnet_hf.mlrsnet.device_step"):
        stepper.prepare()
        got = [float(stepper.step(torch.tensor(loss, device="cuda"))) for loss in (2.0, 1.5)]
    assert "it runs eagerly" in caplog.text and not graphed(stepper)
    assert got == pytest.approx([host.step(2.0), host.step(1.5)], rel=1e-6)


@pytest.mark.parametrize("path", ["tensor", pytest.param("cuda-graph", marks=needs_cuda)])
def test_a_float32_lr_for_kernels_that_read_one_keeps_the_cap(path):
    """Fused optimizers read a float32 LR for float32 parameters: the LR is made in float32, capped exactly."""
    backend, device = backend_of(path)
    host = started("relative", relative_max_scale=1.0001)
    stepper = DeviceStep(
        started("relative", device=device, relative_max_scale=1.0001), lr_dtype=torch.float32, backend=backend
    )
    stepper.prepare()
    expected = [host.step(loss) for loss in LOSSES]
    got = [stepper.step(torch.tensor(loss, device=device)) for loss in LOSSES]
    assert all(lr.dtype == torch.float32 for lr in got)
    assert [float(lr) for lr in got] == pytest.approx(expected, rel=1e-6)
    assert max(float(lr) for lr in got) <= host.max_lr  # the cap rounded down, not to nearest
    assert sum(float(lr) == 0.1000099927186966 for lr in got) >= 3  # capped: the float32 below 0.1 * 1.0001


@pytest.mark.parametrize("path", ["tensor", pytest.param("cuda-graph", marks=needs_cuda)])
def test_the_device_step_applies_loss_and_gamma_as_the_schedule_does(path):
    """A bf16 network's LR equals the host step's (gamma not rounded to bf16 first); a huge finite loss that the
    host step takes is not counted as non-finite in float32; a skipped step keeps a last LR under the cap."""
    backend, device = backend_of(path)
    kwargs = dict(dtype=torch.bfloat16, input_normalization="log_num_classes")
    host, fast = started(0.3, **kwargs), started(0.3, device=device, **kwargs)
    stepper = DeviceStep(fast, lr_dtype=torch.float32, backend=backend)
    stepper.prepare()
    losses = (2.0, 1.7, 1.3)
    assert [float(stepper.step(torch.tensor(x, device=device))) for x in losses] == [host.step(x) for x in losses]

    host, fast = started(10.0), started(10.0, device=device)
    stepper = DeviceStep(fast, lr_dtype=torch.float32, backend=backend)
    assert float(stepper.step(torch.tensor(1e38, device=device))) == pytest.approx(host.step(1e38), rel=1e-6)
    stepper.sync()
    assert fast.num_skipped == host.num_skipped == 0

    fast = started("relative", device=device, relative_max_scale=1.0001)
    fast.last_lr = fast.max_lr  # what a capped host step hands out
    stepper = DeviceStep(fast, lr_dtype=torch.float32, backend=backend)
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
    with caplog.at_level("WARNING", logger="mlrsnet_hf.mlrsnet.device_step"):
        stepper.prepare()
    assert "it runs eagerly" in caplog.text and not graphed(stepper)
    assert torch.cuda.current_stream() == before
    got = [float(stepper.step(torch.tensor(loss, device="cuda"))) for loss in (2.0, 1.5)]
    assert got == pytest.approx([host.step(2.0), host.step(1.5)], rel=1e-6)
