"""Transfer mode's per-step overhead: interleaved in one process, and in pairs of processes taking turns on one core."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import Trainer

from .speed_models import LinearClassifier

SPEED = Path(__file__).resolve().parents[1] / "speed.py"  # its --worker runs one side of a pair


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
            command = [sys.executable, str(SPEED), "--worker", "side", *map(str, argv)]
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
