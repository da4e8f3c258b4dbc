"""The paper's robustness study (Sec. 4.3) at CPU scale: biased training data, a small clean meta set.

Each task is scikit-learn's digits with a biased training set: one corruption family of CIFAR-10-C applied
to the training images at severity 5 (:mod:`mlrsnet_hf.experiments.corruptions`), or 40 % symmetric label
noise; the meta set is 10 clean images per class, and it is also the validation set on which every
baseline's LR is chosen; the test set is clean. MLR-SNet is meta-trained on each task with the clean meta
set (the paper's setting); the baselines are the hand-designed schedules of the paper's Table 1, each with
its LR tuned on that validation set. 3 seeds. The paper's claim: the meta-learned schedule is more robust,
i.e. higher mean test accuracy over the corruptions.

    python benchmarks/robustness.py            # writes benchmarks/results/robustness_cpu.{json,md}
    python benchmarks/robustness.py --quick    # a few steps, for the smoke test
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

from quality import BASELINES, RESULTS, job, run_all, score, summarise, task_spec

from mlrsnet_hf.experiments.corruptions import CORRUPTIONS

VARIANTS = (*CORRUPTIONS, "labels40")
MLRSNET = "MLR-SNet meta-trained"
ROWS = (MLRSNET, "SGD fixed", "SGD multi-step", "SGD exponential", "SGD cosine", "SGD SGDR (4 restarts)", "Adam fixed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a few steps, one LR, one seed (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    seeds = range(1 if args.quick else args.seeds)
    tag = "cpu_quick" if args.quick else "cpu"
    out = args.out / f"robustness_{tag}"
    tasks = [f"digits-cnn@{v}" for v in args.variants]
    started = time.time()

    def steps(t: str) -> int:
        return 8 if args.quick else task_spec(t).steps

    def grid(t: str, family: str) -> tuple[float, ...]:
        g = task_spec(t).sgd_grid if family == "sgd" else task_spec(t).adam_grid
        return g[1:2] if args.quick else g

    # Phase 1: MLR-SNet meta-trained on every task and seed; each baseline's LR grid with seed 0.
    first = [job(out, t, MLRSNET, s, steps(t), args.quick, schedule_dir=str(out / "schedules" / t)) for t in tasks for s in seeds]  # fmt: skip
    first += [job(out, t, label, 0, steps(t), args.quick, lr)
              for t in tasks for label in ROWS[1:] for lr in grid(t, BASELINES[label].family)]  # fmt: skip
    records = run_all(first, args.workers, "meta-training and LR grids")
    # Phase 2: each baseline's best LR (on the clean validation set) with the other seeds.
    second = []
    for t in tasks:
        for label in ROWS[1:]:
            seed0 = [r for r in records if r["task"] == t and r["schedule"] == label and r["seed"] == 0]
            best = max(seed0, key=lambda r: score(r, r["metric"]))["lr"]
            second += [job(out, t, label, s, steps(t), args.quick, best) for s in seeds if s != 0]
    records += run_all(second, args.workers, "best LRs, other seeds")
    summary = summarise(records, tasks)
    table = {}
    for label in ROWS:
        per_task = {t.partition("@")[2]: summary[t]["schedules"][label]["mean"] for t in tasks}
        corruptions = [v for k, v in per_task.items() if k != "labels40" and v is not None]
        table[label] = {
            "per_task": per_task,
            "corruptions_mean": statistics.fmean(corruptions) if corruptions else None,
            "corruptions_std": statistics.stdev(corruptions) if len(corruptions) > 1 else 0.0,
            "best_lr": {t.partition("@")[2]: summary[t]["schedules"][label]["best_lr"] for t in tasks},
        }
    result = {
        "meta": {"seeds": len(seeds), "severity": 5, "meta_set": "10 clean images per class", "quick": args.quick,
                 "wall_minutes": round((time.time() - started) / 60, 1), "tasks": tasks},
        "table": table,
        "summary": summary,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"robustness_{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"robustness_{tag}.md").write_text(to_markdown(result))
    print(to_markdown(result))


def to_markdown(result: dict) -> str:
    tasks = [t.partition("@")[2] for t in result["meta"]["tasks"]]
    lines = [
        "# Robustness at CPU scale: digits with a biased training set, a clean meta set of 10 per class",
        "",
        f"Test accuracy on the clean test set, mean of {result['meta']['seeds']} seeds; corruptions at severity "
        f"{result['meta']['severity']}; baselines' LRs chosen on the clean meta/validation set. "
        f"Wall time {result['meta']['wall_minutes']} min.",
        "",
        "| schedule | mean ± std over corruptions | " + " | ".join(tasks) + " |",
        "|---|---|" + "---|" * len(tasks),
    ]
    for label, row in result["table"].items():
        mean = row["corruptions_mean"]
        cells = " | ".join("-" if v is None else f"{v:.3f}" for v in row["per_task"].values())
        head = "-" if mean is None else f"{mean:.3f} ± {row['corruptions_std']:.3f}"
        lines.append(f"| {label} | {head} | {cells} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
