"""Speed and memory: Trainer with a built-in schedule vs MLRSNetTrainer (transfer, meta-train), and meta steps.

    python benchmarks/speed.py            # full run, writes benchmarks/results/speed_<device>.{json,md}
    python benchmarks/speed.py --quick    # a few steps, for the smoke test
    python benchmarks/speed.py --device cuda --bf16   # on a GPU
    python benchmarks/speed.py --only overhead --repeats 11   # transfer mode's per-step overhead, two models
    python benchmarks/speed.py --only paired   # the same, each pair of runs taking turns on one core (CPU)

Every configuration runs in a fresh subprocess (clean peak memory: peak RSS on CPU, ``max_memory_allocated``
on CUDA). Training throughput is measured with the real Trainer loop on a small CNN (synthetic 32x32
images; speed does not depend on the pixel values), after warm-up steps, as the median of repeats.
The meta-step micro-benchmark compares, on one batch:

* ``plain``: forward, backward and SGD step;
* ``ours``: a plain step plus the library's meta step (``MetaLearner``, as the Trainer calls it, every step:
  ``w_t`` copied into its kept buffer, one forward/backward of the meta batch at ``w_{t+1}``, a dot product,
  the LSTM backward and Adam, on the host where the driver puts the schedule);
* ``released``: a plain step plus a meta step in the style of the released implementation (rebuild the
  model, recompute the training gradient with ``create_graph=True``, virtual step, meta loss,
  backward through the training graph).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.func import functional_call

if TYPE_CHECKING:
    from transformers import Trainer

RESULTS = Path(__file__).resolve().parent / "results"


class SmallCNN(nn.Module):
    def __init__(self, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(
            block(3, width, 1), block(width, 2 * width, 2), block(2 * width, 4 * width, 2), nn.AdaptiveAvgPool2d(1)
        )
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.fc(self.features(x).flatten(1))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


def synthetic(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return [{"x": x[i], "labels": y[i]} for i in range(n)]


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --------------------------------------------------------------------------- workers
def worker_train(mode: str, steps: int, warmup: int, device: str, bf16: bool, batch: int) -> dict:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from mlrsnet_hf import MLRSNetConfig, MLRSNetSchedule, MLRSNetTrainer

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())

    torch.manual_seed(0)
    model = SmallCNN()
    total = warmup + steps
    data = synthetic(batch * total)
    common = dict(
        output_dir="/tmp/mlrsnet_speed", max_steps=total, per_device_train_batch_size=batch, report_to="none",
        save_strategy="no", disable_tqdm=True, logging_steps=10**9, use_cpu=device == "cpu", bf16=bf16,
        optim="sgd", weight_decay=5e-4, dataloader_num_workers=0, seed=0,
    )  # fmt: skip
    clock = Clock()
    if mode == "builtin":
        trainer = Trainer(
            model=model, args=TrainingArguments(lr_scheduler_type="cosine", learning_rate=0.1, **common),
            train_dataset=data, callbacks=[clock],
        )  # fmt: skip
    else:
        schedule = MLRSNetSchedule(num_stages=3, gamma="range_test" if mode == "range-test" else 1.0)
        # "meta-10": a meta update every 10 steps; "meta-10-h10": the same with a 10-step meta horizon.
        parts = mode.split("-")
        interval = int(parts[1]) if mode.startswith("meta") else 1
        horizon = int(parts[2][1:]) if len(parts) > 2 and mode.startswith("meta") else 1
        args = MLRSNetConfig(
            meta_train=mode.startswith("meta"), meta_update_interval=interval, meta_horizon=horizon, **common
        )
        trainer = MLRSNetTrainer(
            model=model, args=args, train_dataset=data, meta_dataset=synthetic(1000, seed=1), schedule=schedule,
            callbacks=[clock],
        )  # fmt: skip
    trainer.train()
    timed = clock.times[warmup - 1 :]
    result = {"steps_per_s": (len(timed) - 1) / (timed[-1] - timed[0]), "peak_mb": peak_memory_mb(device)}
    range_test = getattr(trainer.lr_scheduler, "range_test", None)
    if range_test is not None:  # a one-off cost before the first step (inside the warm-up, not in steps/s)
        result["range_test_seconds"] = range_test.seconds
    return result


def worker_meta_step(mode: str, repeats: int, device: str, batch: int, wide: bool) -> dict:
    from mlrsnet_hf import MLRSNetSchedule
    from mlrsnet_hf.loss_meter import LossMeter
    from mlrsnet_hf.meta_gradient import meta_loss
    from mlrsnet_hf.mlrsnet.meta_training import MetaLearner
    from mlrsnet_hf.options import ScheduleOptions

    torch.manual_seed(0)
    model = (WideMLP() if wide else SmallCNN()).to(device)
    # Where MLRSNetDriver puts it: with meta-training the schedule steps on the host, whatever the model's device.
    schedule = MLRSNetSchedule(gamma=0.1)
    run = schedule.start()
    run.enter_stage(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=5e-4)
    params = list(model.parameters())

    def examples(seed: int) -> list[dict[str, torch.Tensor]]:
        data = synthetic(batch, seed)
        return [{**d, "x": d["x"].flatten()} for d in data] if wide else data

    def batch_of(seed: int) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in torch.utils.data.default_collate(examples(seed)).items()}

    train, meta = batch_of(0), batch_of(1)  # (the library's meta step draws its own from examples(1))
    learner = MetaLearner(
        run, ScheduleOptions(meta_train=True, meta_update_interval=1), examples(1),
        torch.utils.data.default_collate, batch,
    )  # fmt: skip
    learner.start(optimizer, num_training_steps=10**6)
    meter = LossMeter()
    steps = itertools.count()

    def plain_step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = model(**train)["loss"]
        loss.backward()
        return loss

    def once(mode: str = mode) -> None:
        loss = plain_step()
        if mode == "plain":
            run.step(loss.item())
            optimizer.step()
        elif mode == "ours":  # the library's meta step (MetaLearner, as MLRSNetDriver calls it), every step
            step, value, state = next(steps), loss.item(), run.state
            lr = run.step(value)
            learner.before_step(step, model, {"stage": run.stage, "state": state, "loss": value})
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.step()
            learner.after_step(step, model, lr, torch.device(device), meter)
        else:  # released style
            copy_ = copy.deepcopy(model)
            names = [n for n, _ in copy_.named_parameters()]
            w = dict(copy_.named_parameters())
            grads = torch.autograd.grad(copy_(**train)["loss"], list(w.values()), create_graph=True)
            lr = run.step(loss.item(), differentiable=True)
            virtual = {n: w[n] - lr * (g + 5e-4 * w[n]) for n, g in zip(names, grads, strict=True)}
            virtual.update({n: b.clone() for n, b in copy_.named_buffers()})
            functional_call(copy_, virtual, args=(), kwargs=meta)["loss"].backward(inputs=list(schedule.parameters()))
            for group in optimizer.param_groups:
                group["lr"] = lr.item()
            optimizer.step()
        schedule.zero_grad(set_to_none=True)

    for _ in range(3):
        once()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    result = {
        "ms": timed(once, repeats, device, warmup=0),
        "peak_mb": peak_memory_mb(device),
        "param_mb": sum(p.numel() * p.element_size() for p in params) / 2**20,
    }
    if mode == "ours":  # plain and meta steps alternated in one process: machine drift hits both alike
        times: dict[str, list[float]] = {"plain": [], "ours": []}
        for _ in range(repeats):
            for kind in times:
                times[kind].append(timed(lambda kind=kind: once(kind), 1, device, warmup=0))
        result["interleaved_ms"] = {kind: statistics.median(t) for kind, t in times.items()}
    if mode == "plain":  # the pieces a meta step adds, timed directly

        def lstm_meta() -> None:
            run.step(1.0, differentiable=True).backward(torch.tensor(0.1))
            learner.optimizer.step()
            learner.optimizer.zero_grad(set_to_none=True)

        def snapshot() -> None:  # w_t into the buffer kept from the last meta update
            learner._release(learner._snapshot(params))

        def meta_forward_backward() -> None:
            torch.autograd.grad(meta_loss(model, meta), params)

        result["components_ms"] = {
            "lstm_step": timed(lambda: run.step(1.0), repeats * 10, device),
            "lstm_meta_step_with_adam": timed(lstm_meta, repeats * 10, device),
            "snapshot_w_t": timed(snapshot, repeats, device),
            "meta_forward_backward": timed(meta_forward_backward, repeats, device),
        }
    return result


def timed(fn, repeats: int, device: str, warmup: int = 2) -> float:
    """Median milliseconds of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


class WideMLP(nn.Module):
    """Parameter-heavy (about 23M parameters) so that a parameter-sized buffer shows in peak memory."""

    def __init__(self, width: int = 2048, depth: int = 5) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(3 * 32 * 32, width), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.fc(self.body(x))
        return {"logits": logits, "loss": nn.functional.cross_entropy(logits, labels)}


class LinearClassifier(nn.Module):
    """64 -> 10, for steps where the Trainer's own cost dominates (the overhead benchmarks)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.fc(x)
        return {"logits": logits, "loss": nn.functional.cross_entropy(logits, labels)}

    @staticmethod
    def examples(n: int) -> list[dict[str, torch.Tensor]]:
        """``n`` synthetic examples (seeded: the same in every run)."""
        g = torch.Generator().manual_seed(0)
        return [{"x": torch.randn(64, generator=g), "labels": torch.randint(0, 10, (), generator=g)} for _ in range(n)]


# Each transfer configuration of the overhead table, and the Trainer + cosine run with the same optimizer.
OVERHEAD_BASES = {
    "transfer": "builtin",
    "transfer-tensor": "builtin",
    "transfer-fused": "builtin-fused",
    "transfer-fused-eager": "builtin-fused",
}


_ORDER = random.Random(0)


def shuffled(modes: tuple[str, ...]) -> list[str]:
    """The modes of one interleaved round in a new order (seeded: the same sequence in every run), so that no mode
    always runs after the same one."""
    order = list(modes)
    _ORDER.shuffle(order)
    return order


def overhead_trainer(kind: str, mode: str, steps: int, cuda: int, callbacks: list) -> Trainer:
    """The Trainer of one overhead run: ``kind`` ("linear" or "gpt2") trained ``steps`` steps in ``mode`` (a key or
    value of :data:`OVERHEAD_BASES`), one CPU thread, no logging, saving or evaluation inside the run."""
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from mlrsnet_hf import MLRSNetConfig, MLRSNetSchedule, MLRSNetTrainer

    torch.set_num_threads(1)
    n = 8 * steps
    torch.manual_seed(0)
    if kind == "linear":
        data, model = LinearClassifier.examples(n), LinearClassifier()
    else:
        ids = torch.randint(0, 256, (n, 32), generator=torch.Generator().manual_seed(0))
        data = [{"input_ids": row, "labels": row} for row in ids]
        model = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=32, n_embd=32, n_layer=2, n_head=2))
    optim = "adamw_torch_fused" if "fused" in mode else {"linear": "sgd", "gpt2": "adamw_torch"}[kind]
    common = dict(
        output_dir="/tmp/mlrsnet_overhead", max_steps=steps, per_device_train_batch_size=8,
        report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=10**9, use_cpu=not cuda, seed=0,
        optim=optim, learning_rate=0.1 if optim == "sgd" else 1e-3, dataloader_num_workers=0,
        logging_nan_inf_filter=False,
    )  # fmt: skip
    if cuda:  # batches copied without blocking (the Trainer's default copy synchronises at every step)
        common.update(dataloader_pin_memory=True, accelerator_config={"non_blocking": True})
    backend = "tensor" if mode in ("transfer-tensor", "transfer-fused-eager") else "auto"
    if mode.startswith("builtin"):
        args = TrainingArguments(lr_scheduler_type="cosine", **common)
        return Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)
    schedule = MLRSNetSchedule(num_stages=3, gamma="relative")
    args = MLRSNetConfig(gamma="relative", step_backend=backend, **common)
    return MLRSNetTrainer(model=model, args=args, train_dataset=data, schedule=schedule, callbacks=callbacks)


def worker_overhead(steps: int, warmup: int, repeats: int, cuda: int = 0) -> dict:
    """Per-step overhead of transfer mode over Trainer + cosine, one CPU thread, interleaved (each round in a new
    order), in one process.

    Two models: a linear classifier (64 -> 10, batch 8; the Trainer's own cost dominates) and a 2-layer GPT-2
    (32 wide, 8 x 32 tokens). Transfer mode runs with plain SGD/AdamW (the LR handed over as a number) and with
    fused AdamW (the LR a tensor); on a CPU with plain SGD/AdamW also with the eager tensor step instead of NumPy's
    (``transfer-tensor``).

    ``cuda=1``: the models train on the GPU (the device is synchronised only at the first and last timed steps, so
    the host can run ahead of the GPU as in a real run).
    """
    from transformers import TrainerCallback

    from mlrsnet_hf import MLRSNetSchedule
    from mlrsnet_hf.mlrsnet.device_step import DeviceStep

    torch.set_num_threads(1)

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            if cuda and state.global_step in (warmup, steps + warmup):  # the ends of the timed span only
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())

    def run(kind: str, mode: str) -> float:
        clock = Clock()
        overhead_trainer(kind, mode, steps + warmup, cuda, [clock]).train()
        timed = clock.times[warmup - 1 :]
        steps_us = [(b - a) * 1e6 for a, b in itertools.pairwise(timed)]
        return statistics.fmean(steps_us), statistics.median(steps_us)  # the run's mean step, its median step

    modes = ("builtin", "transfer", *(() if cuda else ("transfer-tensor",)), "builtin-fused", "transfer-fused")
    modes += ("transfer-fused-eager",) if cuda else ()  # the device step without its CUDA graph
    result: dict = {"device": "cuda" if cuda else "cpu"}
    for kind in ("linear", "gpt2"):
        means: dict[str, list[float]] = {mode: [] for mode in modes}
        medians: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(repeats):  # interleaved: drift hits every mode alike
            for mode in shuffled(modes):
                mean, median = run(kind, mode)
                means[mode].append(mean)
                medians[mode].append(median)
        us = {mode: statistics.median(v) for mode, v in means.items()}
        step_us = {mode: statistics.median(v) for mode, v in medians.items()}
        base = {mode: b for mode, b in OVERHEAD_BASES.items() if mode in modes}
        result[kind] = {
            "us_per_step": us,  # per mode: the median over rounds of the run's mean step (its steps/s)
            "overhead_us": {mode: us[mode] - us[b] for mode, b in base.items()},
            "steps_per_s_ratio": {mode: us[b] / us[mode] for mode, b in base.items()},
            # each round's own ratio (the two runs next to each other in time), sorted: its spread
            "round_ratios": {
                mode: sorted(x / y for x, y in zip(means[b], means[mode], strict=True)) for mode, b in base.items()
            },
            # the median single step: a step's typical cost, without the pauses that hit a run now and then
            "median_step_us": step_us,
            "median_step_overhead_us": {mode: step_us[mode] - step_us[b] for mode, b in base.items()},
            "median_step_ratio": {mode: step_us[b] / step_us[mode] for mode, b in base.items()},
        }

    # The schedule's own step: the module forward with host reads vs the fused device step.
    device = "cuda" if cuda else "cpu"
    run = MLRSNetSchedule(num_stages=1, gamma=1.0).to(device).start()
    run.enter_stage(0)
    run.step(2.0)
    loss = torch.tensor(2.0, device=device)

    def per_call(fn, n: int = 2000) -> float:
        for _ in range(50):
            fn()
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / n * 1e6

    def device_step(backend: str) -> float:
        stepper = DeviceStep(run, backend=backend)
        stepper.prepare()  # as at a stage entry: on CUDA, capture the step's graph
        result = statistics.median(per_call(lambda: stepper.step(loss)) for _ in range(5))
        stepper.sync()
        return result

    host = statistics.median(per_call(lambda: run.step(2.0)) for _ in range(5))
    result["schedule_step_us"] = {"host (ScheduleRun.step)": host}
    if cuda:
        result["schedule_step_us"]["DeviceStep.step, on the GPU, CUDA graph"] = device_step("cuda_graph")
        result["schedule_step_us"]["DeviceStep.step, on the GPU, eager"] = device_step("tensor")
    else:
        result["schedule_step_us"]["DeviceStep.step, NumPy"] = device_step("numpy")
        result["schedule_step_us"]["DeviceStep.step, tensor (eager)"] = device_step("tensor")
    return result


def worker_side(kind: str, mode: str, steps: int, warmup: int, block: int, second: int, fds: str, cpu: int) -> dict:
    """One side of a paired run (:func:`paired`): trains ``kind`` in ``mode`` for ``steps`` steps on CPU ``cpu``,
    taking turns with the other side every ``block`` steps through a pipe (``fds``: "read,write").

    A turn starts at ``on_step_begin`` when the token arrives and ends at ``on_step_end`` by sending it; the second
    side hands the first its first turn at ``on_train_begin``. A step is timed from the previous ``on_step_end`` to
    its own, so a block's first step (which holds the wait for the other side) is not counted, nor are the
    ``warmup`` steps or the last block (the other side's end of training may run during it).
    """
    from transformers import TrainerCallback

    read_fd, write_fd = (int(fd) for fd in fds.split(","))
    os.sched_setaffinity(0, {cpu})

    def send() -> None:
        with contextlib.suppress(BrokenPipeError):  # the other side has finished
            os.write(write_fd, b"x")

    timed: list[tuple[int, float]] = []  # (block, microseconds) of each counted step
    spans: list[tuple[float, float]] = []  # each turn's start and end (perf_counter: one clock for both sides)

    class Baton(TrainerCallback):
        last = None

        def on_train_begin(self, args, state, control, **kwargs):
            if second:
                send()

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step % block == 0:
                if os.read(read_fd, 1) != b"x":
                    raise RuntimeError("the other side of the paired run ended early")
                spans.append((time.perf_counter(), 0.0))

        def on_step_end(self, args, state, control, **kwargs):
            now, g = time.perf_counter(), state.global_step
            if self.last is not None and g > warmup and (g - 1) % block and g <= steps - block:
                timed.append(((g - 1) // block, (now - self.last) * 1e6))
            self.last = now
            if g % block == 0 or g == steps:
                spans[-1] = (spans[-1][0], time.perf_counter())
                send()

    overhead_trainer(kind, mode, steps, 0, [Baton()]).train()
    return {"timed": timed, "spans": spans}


def paired(kind: str, mode: str, steps: int, warmup: int, block: int, repeats: int) -> dict:
    """Transfer ``mode`` against its Trainer + cosine (:data:`OVERHEAD_BASES`), each in its own process, both pinned
    to one CPU and taking turns every ``block`` steps: whatever the machine does to one side's steps, it does to
    the other's a few milliseconds later. ``repeats`` pairs of processes, the side that starts alternating.

    Per pair: the steps/s ratio (Trainer + cosine's mean counted step over transfer's) and the ratio of median
    steps; over windows of 50 turns of each side, the ratios of their mean steps (their spread within runs).
    """
    base, cpu = OVERHEAD_BASES[mode], max(os.sched_getaffinity(0))
    pairs = []
    for r in range(repeats):
        order = (base, mode) if r % 2 == 0 else (mode, base)
        first_read, second_write = os.pipe()
        second_read, first_write = os.pipe()
        fds = [(first_read, first_write), (second_read, second_write)]
        procs = []
        for second, (side_mode, (rfd, wfd)) in enumerate(zip(order, fds, strict=True)):
            argv = [kind, side_mode, steps, warmup, block, second, f"{rfd},{wfd}", cpu]
            command = [sys.executable, __file__, "--worker", "side", *map(str, argv)]
            # (their output is a few lines: a side never waits on a full pipe while the other waits on it)
            procs.append(
                subprocess.Popen(
                    command, pass_fds=(rfd, wfd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                )
            )
        for fd in (first_read, first_write, second_read, second_write):
            os.close(fd)  # only the sides hold the pipes: a side that dies ends the other's wait
        sides = {}
        for side_mode, proc in zip(order, procs, strict=True):
            out = proc.communicate(timeout=1800)[0]
            if proc.returncode != 0:
                raise RuntimeError(f"paired side {kind}/{side_mode} failed:\n{out[-3000:]}")
            sides[side_mode] = json.loads(out.strip().splitlines()[-1])
        pairs.append(sides)

    def us(side: dict) -> list[float]:
        return [t for _, t in side["timed"]]

    ratios = [statistics.fmean(us(p[base])) / statistics.fmean(us(p[mode])) for p in pairs]
    median_ratios = [statistics.median(us(p[base])) / statistics.median(us(p[mode])) for p in pairs]
    windows = []
    for p in pairs:
        by_window: dict[int, dict[str, list[float]]] = {}
        for side in (base, mode):
            for b, t in p[side]["timed"]:
                by_window.setdefault(b // 50, {base: [], mode: []})[side].append(t)
        windows += [
            statistics.fmean(w[base]) / statistics.fmean(w[mode]) for w in by_window.values() if all(w.values())
        ]
    return {
        "base": base,
        "us_per_step": {
            side: statistics.median(statistics.fmean(us(p[side])) for p in pairs) for side in (base, mode)
        },
        "steps_per_s_ratio": statistics.median(ratios),
        "pair_ratios": ratios,
        "median_step_ratios": median_ratios,
        "window_ratios": sorted(windows),
        "counted_steps": [len(p[mode]["timed"]) for p in pairs],
        "pairs": pairs,
    }


# --------------------------------------------------------------------------- driver
def run_worker(argv: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", *argv], capture_output=True, text=True, check=False, timeout=1800
    )
    if out.returncode != 0:
        raise RuntimeError(f"worker {argv} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few steps, one repeat (smoke test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="interleaved rounds (default: 3 for training, 7 for the overhead)",
    )
    parser.add_argument("--block", type=int, default=4, help="--only paired: the steps of a turn (default 4)")
    parser.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results)")
    parser.add_argument(
        "--only",
        choices=["overhead", "paired", "meta"],
        help="run only this section (written to speed_<device>_<section>.*): the transfer overhead, the same in "
        "pairs of processes taking turns, where it goes, or the meta-step micro-benchmark",
    )
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        kind, mode, *rest = args.worker
        if kind == "overhead":
            result = worker_overhead(*(int(v) for v in (mode, *rest)))
        elif kind == "side":
            side_mode, *numbers, fds, cpu = rest  # (``mode`` is the model's kind here)
            result = worker_side(mode, side_mode, *(int(v) for v in numbers), fds, int(cpu))
        elif kind == "train":
            steps, warmup, batch = (int(v) for v in rest)
            result = worker_train(mode, steps, warmup, args.device, args.bf16, batch)
        else:
            repeats, batch, wide = (int(v) for v in rest)
            result = worker_meta_step(mode, repeats, args.device, batch, bool(wide))
        print(json.dumps(result))
        return

    steps, warmup, batch, repeats = (12, 3, 16, 1) if args.quick else (300, 20, 64, args.repeats or 3)
    flags = ["--device", args.device] + (["--bf16"] if args.bf16 else [])
    results: dict = {
        "device": args.device,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads"
        + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""),
        "torch": torch.__version__,
        "bf16": args.bf16,
        "quick": args.quick,
        "train": {},
        "meta_step": {},
    }
    overhead = ["overhead", "20", "5", "1"] if args.quick else ["overhead", "400", "50", str(args.repeats or 7)]
    if args.only == "paired":
        if args.device != "cpu":
            parser.error("--only paired runs on the CPU (the sides take turns on one core)")
        results["paired"] = {"block": args.block}
        # the realistic step only: on the toy classifier's 1 ms step Python's overhead is what it measures
        for kind, (total, warm) in {"gpt2": (340, 40)}.items():
            total, warm = (40, 8) if args.quick else (total, warm)
            for mode in ("transfer", "transfer-tensor", "transfer-fused"):
                pairs = paired(kind, mode, total, warm, args.block, 2 if args.quick else args.repeats or 6)
                results["paired"].setdefault(kind, {})[mode] = {k: v for k, v in pairs.items() if k != "pairs"}
        write_results(args, results, "_paired")
        return
    if args.only == "meta":
        meta_steps(args, results, batch, flags)
        write_results(args, results, "_meta")
        return
    results["overhead"] = run_worker([*overhead, str(int(args.device == "cuda"))])  # see worker_overhead
    if args.only == "overhead":
        write_results(args, results, "_overhead")
        return
    modes = ["builtin", "transfer", "range-test", "meta-10", "meta-10-h10", "meta-100", "meta-300", "meta-1"]
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    for round_ in range(repeats):  # interleaved rounds: machine drift hits every configuration alike
        for mode in modes:
            runs[mode].append(run_worker(["train", mode, str(steps), str(warmup), str(batch), *flags]))
            print(f"round {round_}: {mode:>9} {runs[mode][-1]['steps_per_s']:.2f} steps/s", file=sys.stderr)
    for mode in modes:
        results["train"][mode] = {
            "steps_per_s": statistics.median(r["steps_per_s"] for r in runs[mode]),
            "spread": (min(r["steps_per_s"] for r in runs[mode]), max(r["steps_per_s"] for r in runs[mode])),
            "peak_mb": max(r["peak_mb"] for r in runs[mode]),
        }
        if "range_test_seconds" in runs[mode][0]:
            results["train"][mode]["range_test_seconds"] = statistics.median(
                r["range_test_seconds"] for r in runs[mode]
            )
    meta_steps(args, results, batch, flags)
    base = results["train"]["builtin"]["steps_per_s"]
    transfer = results["train"]["transfer"]["steps_per_s"]
    ratios = {f"{mode}_vs_builtin": results["train"][mode]["steps_per_s"] / base for mode in modes[1:]}
    # Every step of meta-1 is a meta step: its extra time per step over transfer, in plain steps.
    ratios["meta_step_extra_cost_in_plain_steps"] = transfer / results["train"]["meta-1"]["steps_per_s"] - 1
    results["ratios"] = {**ratios, **results["ratios"]}
    write_results(args, results)


def meta_steps(args: argparse.Namespace, results: dict, batch: int, flags: list[str]) -> None:
    """The meta-step micro-benchmark (plain step, ours, the released implementation's) and its ratios."""
    for model in ("cnn", "wide_mlp"):
        for mode in ("plain", "ours", "released"):
            reps = "5" if args.quick else "30"
            results["meta_step"][f"{model}/{mode}"] = run_worker(
                ["meta", mode, reps, str(batch), str(int(model == "wide_mlp")), *flags]
            )
    ratios = results.setdefault("ratios", {})
    for model in ("cnn", "wide_mlp"):
        m = results["meta_step"]
        plain, ours, released = (m[f"{model}/{k}"] for k in ("plain", "ours", "released"))
        ratios[f"{model}_ours_step_vs_plain_time"] = ours["ms"] / plain["ms"]
        ratios[f"{model}_released_step_vs_plain_time"] = released["ms"] / plain["ms"]
        ratios[f"{model}_ours_extra_peak_mb"] = ours["peak_mb"] - plain["peak_mb"]
        ratios[f"{model}_released_extra_peak_mb"] = released["peak_mb"] - plain["peak_mb"]
        ratios[f"{model}_param_mb"] = plain["param_mb"]
        c = plain["components_ms"]
        # What transfer adds to a step, and what a meta step adds, in plain steps (direct timings).
        ratios[f"{model}_transfer_overhead_per_step"] = c["lstm_step"] / plain["ms"]
        ratios[f"{model}_meta_step_extra_in_plain_steps"] = (
            c["lstm_meta_step_with_adam"] + c["snapshot_w_t"] + c["meta_forward_backward"]
        ) / plain["ms"]
        both = ours["interleaved_ms"]  # whole steps, alternated in one process
        ratios[f"{model}_meta_step_extra_in_plain_steps_end_to_end"] = both["ours"] / both["plain"] - 1


def write_results(args: argparse.Namespace, results: dict, suffix: str = "") -> None:
    out_dir = args.out or RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"speed_{args.device}{'_bf16' if args.bf16 else ''}{'_quick' if args.quick else ''}{suffix}"
    (out_dir / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / f"{name}.md").write_text(to_markdown(results))
    print(to_markdown(results))


OVERHEAD_MODELS = {"linear": "linear classifier, batch 8", "gpt2": "GPT-2, 2 layers x 32, 8 x 32 tokens"}


def overhead_optimizer(kind: str, mode: str) -> str:
    """The optimizer column of an overhead table, for a transfer ``mode`` of :data:`OVERHEAD_BASES`."""
    if "fused" in mode:
        return "fused AdamW (LR a device tensor)" + (", step without CUDA graph" if mode.endswith("eager") else "")
    step = ", tensor step (eager)" if mode.endswith("tensor") else ""  # else "auto": NumPy's step on a CPU
    return ("SGD" if kind == "linear" else "AdamW") + step


def quartile_range(ratios: list[float]) -> str:
    return "{:.3f}-{:.3f}x".format(*statistics.quantiles(ratios, n=4)[::2]) if len(ratios) > 1 else ""


def overhead_markdown(o: dict) -> list[str]:
    where = "GPU, 1 CPU thread" if o.get("device") == "cuda" else "CPU, 1 thread"
    lines = [
        f"## Per-step overhead of transfer mode ({where}, interleaved, median)",
        "",
        "Whole runs: the median over rounds of each run's mean step (steps/s), and the quartiles of the rounds' own "
        "ratios. Single steps: the median over rounds of each run's median step.",
        "",
        "| model | optimizer | Trainer + cosine (us/step) | MLRSNetTrainer, transfer | overhead | steps/s ratio "
        "| ratio per round (quartiles) | median step: overhead | median step: ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in ("linear", "gpt2"):
        us, extra, ratio = o[kind]["us_per_step"], o[kind]["overhead_us"], o[kind]["steps_per_s_ratio"]
        rounds, step_extra, step_ratio = (
            o[kind][k] for k in ("round_ratios", "median_step_overhead_us", "median_step_ratio")
        )
        for mode, base in OVERHEAD_BASES.items():
            if mode not in us:  # no tensor-step row on a GPU (it is the eager one), no CUDA graph on a CPU
                continue
            lines.append(
                f"| {OVERHEAD_MODELS[kind]} | {overhead_optimizer(kind, mode)} | {us[base]:.0f} | {us[mode]:.0f} | "
                f"{extra[mode]:+.0f} us | {ratio[mode]:.3f}x | {quartile_range(rounds[mode])} | "
                f"{step_extra[mode]:+.0f} us | {step_ratio[mode]:.3f}x |"
            )
    step = o["schedule_step_us"]
    lines += ["", "The schedule's own step: " + ", ".join(f"{k}: {v:.1f} us" for k, v in step.items()) + ".", ""]
    return lines


def paired_markdown(pairs: dict) -> list[str]:
    lines = [
        "## Per-step overhead of transfer mode, paired (CPU, 1 thread)",
        "",
        "Each pair: Trainer + cosine and MLRSNetTrainer in transfer mode, each in its own process, both pinned to one "
        f"CPU, taking turns every {pairs['block']} steps; a turn's first step, the warm-up and the last turn are not counted. "
        "Steps/s ratio: the median over pairs of Trainer + cosine's mean counted step over transfer's; windows: "
        "50 turns of each side.",
        "",
        "| model | optimizer | Trainer + cosine (us/step) | MLRSNetTrainer, transfer | overhead | steps/s ratio "
        "| pairs' ratios (min-max) | median step: ratio (median over pairs) | windows' ratios (quartiles) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in [k for k in ("linear", "gpt2") if k in pairs]:
        for mode, r in pairs[kind].items():
            base, us, ratios = r["base"], r["us_per_step"], r["pair_ratios"]
            lines.append(
                f"| {OVERHEAD_MODELS[kind]} | {overhead_optimizer(kind, mode)} | {us[base]:.0f} | {us[mode]:.0f} | "
                f"{us[mode] - us[base]:+.1f} us | {r['steps_per_s_ratio']:.3f}x | {min(ratios):.3f}-{max(ratios):.3f}x | "
                f"{statistics.median(r['median_step_ratios']):.3f}x | {quartile_range(r['window_ratios'])} |"
            )
    return [*lines, ""]


def to_markdown(r: dict) -> str:
    lines = overhead_markdown(r["overhead"]) if "overhead" in r else []
    if "paired" in r:
        lines = paired_markdown(r["paired"])
    if not r["train"] and not r["meta_step"]:
        return "\n".join([f"# Per-step overhead ({r['machine']}; torch {r['torch']})", "", *lines])
    lines += [
        f"# Speed and memory ({r['device']}{', bf16' if r['bf16'] else ''}; {r['machine']}; torch {r['torch']})",
        "",
    ]
    if r["train"]:
        lines += [
            "| configuration | steps/s, median (min-max) | vs Trainer + cosine | peak memory (MiB) |",
            "|---|---|---|---|",
        ]
    base = r["train"]["builtin"]["steps_per_s"] if r["train"] else 1.0
    for mode, v in r["train"].items():
        lo, hi = v["spread"]
        lines.append(
            f"| {mode} | {v['steps_per_s']:.2f} ({lo:.2f}-{hi:.2f}) | {v['steps_per_s'] / base:.3f}x | {v['peak_mb']:.0f} |"
        )
    for mode, v in r["train"].items():
        if "range_test_seconds" in v:
            lines.append(
                f"\n`{mode}`: the LR range test (60 steps on a copy) took {v['range_test_seconds']:.2f} s once."
            )
    lines += [
        *([""] if r["train"] else []),
        "| one step on one batch | ms | vs plain | peak memory (MiB) |",
        "|---|---|---|---|",
    ]
    for key, v in r["meta_step"].items():
        plain = r["meta_step"][key.split("/")[0] + "/plain"]
        lines.append(f"| {key} | {v['ms']:.1f} | {v['ms'] / plain['ms']:.2f}x | {v['peak_mb']:.0f} |")
    lines += ["", "| component (ms) | " + " | ".join(r["meta_step"]["cnn/plain"]["components_ms"]) + " |"]
    lines += ["|---|" + "---|" * len(r["meta_step"]["cnn/plain"]["components_ms"])]
    for model in ("cnn", "wide_mlp"):
        c = r["meta_step"][f"{model}/plain"]["components_ms"]
        lines.append(f"| {model} | " + " | ".join(f"{v:.2f}" for v in c.values()) + " |")
    lines += ["", "| plain and meta steps alternated in one process (ms, median) | plain | with a meta step |"]
    lines += ["|---|---|---|"]
    for model in ("cnn", "wide_mlp"):
        both = r["meta_step"][f"{model}/ours"]["interleaved_ms"]
        lines.append(f"| {model} | {both['plain']:.1f} | {both['ours']:.1f} |")
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in r["ratios"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
