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
import logging
import statistics
import time
from pathlib import Path

from common import RESULTS, history
from common.harness import Harness, best_lr, job
from common.report import summarise
from common.rows import BASELINES
from common.tasks import VARIANTS
from common.training import run_job

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
    tasks = [VARIANTS[v] for v in args.variants]
    started, run = time.time(), history.this_run(args.workers)

    def steps(t) -> int:
        return 8 if args.quick else t.steps

    # Phase 1: MLR-SNet meta-trained on every task and seed; each baseline's LR grid with seed 0.
    first = [job(out, t.name, MLRSNET, s, steps(t), args.quick, schedule_dir=str(out / "schedules" / t.name))
             for t in tasks for s in seeds]  # fmt: skip
    first += [job(out, t.name, label, 0, steps(t), args.quick, lr)
              for t in tasks for label in ROWS[1:] for lr in BASELINES[label].grid(t, args.quick)]  # fmt: skip
    harness = Harness(len(first) + len(tasks) * len(ROWS[1:]) * (len(seeds) - 1), args.workers)
    records = harness.phase("meta-training and LR grids", first, run_job)
    # Phase 2: each baseline's best LR (on the clean validation set) with the other seeds.
    second = [job(out, t.name, label, s, steps(t), args.quick, best_lr(records, t.name, label))
              for t in tasks for label in ROWS[1:] for s in seeds if s != 0]  # fmt: skip
    records += harness.phase("best LRs, other seeds", second, run_job)
    harness.close()
    summary = summarise(records, [t.name for t in tasks])
    table = {}
    for label in ROWS:
        per_task = {t.variant: summary[t.name]["schedules"][label]["mean"] for t in tasks}
        corruptions = [v for k, v in per_task.items() if k != "labels40" and v is not None]
        table[label] = {
            "per_task": per_task,
            "corruptions_mean": statistics.fmean(corruptions) if corruptions else None,
            "corruptions_std": statistics.stdev(corruptions) if len(corruptions) > 1 else 0.0,
            "best_lr": {t.variant: summary[t.name]["schedules"][label]["best_lr"] for t in tasks},
        }
    result = {
        "meta": {"seeds": len(seeds), "severity": 5, "meta_set": "10 clean images per class", "quick": args.quick,
                 "wall_minutes": round((time.time() - started) / 60, 1), "tasks": [t.name for t in tasks]},
        "table": table,
        "summary": summary,
    }  # fmt: skip
    result = history.write_json(args.out / f"robustness_{tag}.json", result, run)
    (args.out / f"robustness_{tag}.md").write_text(to_markdown(result))
    print(to_markdown(result))


def to_markdown(result: dict) -> str:
    tasks = [t.partition("@")[2] for t in result["meta"]["tasks"]]
    lines = [
        "# Robustness at CPU scale: digits with a biased training set, a clean meta set of 10 per class",
        "",
        history.measured(result.get("runs", [])),
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
