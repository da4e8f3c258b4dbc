"""Speed and memory: Trainer with a built-in schedule vs MLRSNetTrainer (transfer, meta-train), and meta steps.

    python benchmarks/speed.py            # full run, writes benchmarks/results/speed_<device>.{json,md}
    python benchmarks/speed.py --quick    # a few steps, for the smoke test
    python benchmarks/speed.py --device cuda --bf16   # on a GPU
    python benchmarks/speed.py --only overhead --repeats 11   # transfer mode's per-step overhead, two models
    python benchmarks/speed.py --only paired   # the same, each pair of runs taking turns on one core (CPU)

Every configuration runs in a fresh subprocess (clean peak memory: peak RSS on CPU, ``max_memory_allocated``
on CUDA). Training throughput is measured with the real Trainer loop on a small CNN (synthetic 32x32
images; speed does not depend on the pixel values), after warm-up steps, as the median of repeats.
What each part measures lives in ``benchmarks/common/``: training throughput (``speed_train.py``), the meta step
(``speed_meta.py``), transfer mode's per-step overhead, interleaved or in pairs (``speed_overhead.py``); the models
and timers (``speed_models.py``) and the tables (``speed_report.py``). The meta-step micro-benchmark compares, on one
batch:

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
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from common import history
from common.speed_meta import worker_meta_step
from common.speed_overhead import paired, worker_overhead, worker_side
from common.speed_report import to_markdown
from common.speed_train import worker_train

RESULTS = Path(__file__).resolve().parent / "results"


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
    args.run = history.this_run()  # the results file's history entry

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
    data = history.write_json(out_dir / f"{name}.json", results, args.run, indent=2)
    markdown = history.with_measured(to_markdown(data), data["runs"])
    (out_dir / f"{name}.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
