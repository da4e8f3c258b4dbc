"""Device synchronisations per optimizer step on a GPU, read from a PyTorch profile (issue 12).

    python benchmarks/sync_profile.py            # writes benchmarks/results/sync_profile_cuda.{json,md}

Each configuration trains a linear classifier (64 -> 10, batch 8, synthetic data) for 60 steps, logging every
20, with the batches copied to the GPU without blocking (pinned memory, ``accelerator_config={"non_blocking":
True}``; the Trainer's default blocking copy synchronises at every step whatever the schedule). Steps 2-59 run
under ``torch.profiler`` with the CUDA runtime traced; every ``cudaStreamSynchronize``, ``cudaDeviceSynchronize``,
``cudaEventSynchronize`` and blocking ``cudaMemcpy`` is assigned to the optimizer step it falls in (from one
``on_step_begin`` to the next, so a step's logging counts as its own) and to the innermost operation around it,
with the Python frames of that operation. Logging steps read the loss and LR by design; the table counts the
other steps.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from speed import LinearClassifier  # the same model as the overhead benchmark's

RESULTS = Path(__file__).resolve().parent / "results"
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
STEPS, LOGGING_STEPS, FIRST_PROFILED = 60, 20, 2
CONFIGS = {
    "builtin": "Trainer + cosine, fused AdamW",
    "transfer": "MLRSNetTrainer, transfer, fused AdamW (CUDA-graph step)",
    "transfer-eager": "MLRSNetTrainer, transfer, fused AdamW, the step run eagerly (no CUDA graph)",
    "transfer-sgd-fused": "MLRSNetTrainer, transfer, fused SGD",
    "transfer-bf16": "MLRSNetTrainer, transfer, fused AdamW, bf16",
    "transfer-foreach": "MLRSNetTrainer, transfer, AdamW (foreach: takes the LR as a number)",
    "callback": "Trainer + MLRSNetCallback, fused AdamW",
}


def profile(config: str, out_dir: Path) -> dict:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from mlrsnet_hf import MLRSNetCallback, MLRSNetConfig, MLRSNetSchedule, MLRSNetTrainer

    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    profiler = torch.profiler.profile(activities=activities, with_stack=True)

    class Steps(TrainerCallback):
        """Starts the profiler after the first steps (the stage entry captures its graph) and marks each step."""

        def __init__(self) -> None:
            self.range, self.profiling = None, False

        def close(self) -> None:
            if self.range is not None:
                self.range.__exit__(None, None, None)
                self.range = None

        def on_step_begin(self, args, state, control, **kwargs):
            self.close()
            if state.global_step == FIRST_PROFILED:
                profiler.__enter__()
                self.profiling = True
            if state.global_step >= FIRST_PROFILED:
                self.range = torch.profiler.record_function(f"optimizer_step_{state.global_step}")
                self.range.__enter__()

        def on_epoch_end(self, args, state, control, **kwargs):
            self.close()  # the last step's range ends with its own logging, before the run's final summary

        def on_train_end(self, args, state, control, **kwargs):
            self.close()
            torch.cuda.synchronize()
            self.stop()

        def stop(self) -> None:
            if self.profiling:
                profiler.__exit__(None, None, None)
                self.profiling = False

    data = LinearClassifier.examples(8 * STEPS)
    optim = "adamw_torch" if config == "transfer-foreach" else "adamw_torch_fused"
    common = dict(
        output_dir=str(out_dir / config), max_steps=STEPS, per_device_train_batch_size=8, report_to="none",
        save_strategy="no", disable_tqdm=True, logging_steps=LOGGING_STEPS, seed=0, optim=optim,
        learning_rate=1e-3, dataloader_num_workers=0, logging_nan_inf_filter=False, dataloader_pin_memory=True,
        accelerator_config={"non_blocking": True}, bf16=config == "transfer-bf16",
    )  # fmt: skip
    torch.manual_seed(0)
    model, steps = LinearClassifier(), Steps()
    schedule = MLRSNetSchedule(num_stages=1, gamma="relative")
    backend = "tensor" if config == "transfer-eager" else "auto"
    if config == "builtin":
        trainer = Trainer(
            model=model, args=TrainingArguments(lr_scheduler_type="cosine", **common), train_dataset=data,
            callbacks=[steps],
        )  # fmt: skip
    elif config == "callback":
        callback = MLRSNetCallback(schedule, gamma="relative")
        trainer = Trainer(
            model=model, args=TrainingArguments(**common), train_dataset=data, callbacks=[callback, steps],
            optimizers=(None, callback.lr_scheduler),
        )  # fmt: skip
    else:
        optimizers = (None, None)
        if config == "transfer-sgd-fused":
            model.cuda()
            optimizers = (torch.optim.SGD(model.parameters(), lr=0.1, fused=True), None)
            common["learning_rate"] = 0.1
        trainer = MLRSNetTrainer(
            model=model, args=MLRSNetConfig(gamma="relative", step_backend=backend, **common), train_dataset=data, schedule=schedule,
            callbacks=[steps], optimizers=optimizers,
        )  # fmt: skip
    try:
        trainer.train()
    finally:  # a failed configuration leaves no profiler running
        steps.close()
        steps.stop()

    events = list(profiler.events())
    ranges = {}
    for e in events:
        if e.name.startswith("optimizer_step_"):
            ranges[int(e.name.rpartition("_")[2])] = (e.time_range.start, e.time_range.end)
    ops = [e for e in events if e.name.startswith("aten::")]
    python = [e for e in events if ".py(" in e.name and "/torch/" not in e.name]  # with_stack: Python calls
    syncs: dict[int, list[dict]] = {}
    totals: dict[str, int] = {}
    for e in events:
        if e.name not in SYNC_CALLS:
            continue
        totals[e.name] = totals.get(e.name, 0) + 1
        t = e.time_range.start
        step = next((k for k, (a, b) in ranges.items() if a <= t <= b), None)
        around = [o for o in ops if o.time_range.start <= t <= o.time_range.end and o.thread == e.thread]
        around.sort(key=lambda o: o.time_range.start, reverse=True)  # innermost first
        inner = around[0] if around else None
        calls = [o for o in python if o.time_range.start <= t <= o.time_range.end and o.thread == e.thread]
        frames = [o.name for o in sorted(calls, key=lambda o: o.time_range.start, reverse=True)][:6]
        syncs.setdefault(step if step is not None else -1, []).append(
            {"call": e.name, "op": inner.name if inner is not None else None, "frames": frames}
        )
    logging = {k for k in ranges if (k + 1) % LOGGING_STEPS == 0 or k + 1 == STEPS}
    # -1: outside every step (the profiler's own start and stop)
    other = {k: v for k, v in syncs.items() if k not in logging and k != -1}
    n_other = len([k for k in ranges if k not in logging])
    return {
        "config": CONFIGS[config],
        "profiled_steps": len(ranges),
        "logging_steps": sorted(logging),
        "syncs_per_logging_step": sum(len(syncs.get(k, [])) for k in logging) / max(1, len(logging)),
        "syncs_per_other_step": sum(len(v) for v in other.values()) / max(1, n_other),
        "sync_calls_total": totals,
        "graphed": _graphed(trainer),
        "examples_outside_logging": [dict(step=k, **s) for k, v in sorted(other.items()) for s in v][:12],
    }


def _graphed(trainer) -> bool:
    stepper = getattr(trainer.lr_scheduler, "device_step", None)
    return stepper is not None and any(s.graph is not None for s in stepper._tensor_steps.values())


def to_markdown(results: dict) -> str:
    lines = [
        "# Device synchronisations per optimizer step (GPU profile)",
        "",
        f"{results['machine']}, torch {results['torch']}, transformers {results['transformers']}. "
        f"{STEPS} steps, logging every {LOGGING_STEPS}, steps {FIRST_PROFILED}-{STEPS - 1} profiled "
        "(`benchmarks/sync_profile.py`).",
        "",
        "| configuration | syncs per non-logging step | syncs per logging step | CUDA graph | where (outside logging) |",
        "|---|---:|---:|---|---|",
    ]
    for r in results["configs"].values():
        where = sorted(
            {f"{x['op']} <- {x['frames'][0] if x['frames'] else '?'}" for x in r["examples_outside_logging"]}
        )
        lines.append(
            f"| {r['config']} | {r['syncs_per_other_step']:.2f} | {r['syncs_per_logging_step']:.2f} | "
            f"{'yes' if r['graphed'] else 'no'} | {'; '.join(where) or '-'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("sync_profile.py profiles CUDA synchronisations: it needs a GPU.")
    import transformers

    results = {
        "machine": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "configs": {},
    }
    for config in args.only:
        try:
            results["configs"][config] = profile(config, Path("/tmp/mlrsnet_sync_profile"))
        except Exception as error:  # noqa: BLE001 - record it and go on with the other configurations
            results["configs"][config] = {"config": CONFIGS[config], "error": repr(error)}
            print(f"{config}: {error!r}", file=sys.stderr)
            continue
        print(json.dumps({config: results["configs"][config]}, indent=1), file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sync_profile_cuda.json").write_text(json.dumps(results, indent=2) + "\n")
    ok = {k: v for k, v in results["configs"].items() if "error" not in v}
    (args.out / "sync_profile_cuda.md").write_text(to_markdown({**results, "configs": ok}))
    print(to_markdown({**results, "configs": ok}))


if __name__ == "__main__":
    main()
