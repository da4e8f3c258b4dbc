"""Choose MLR-SNet's defaults on the *validation* splits of the quality benchmark's tasks.

    python benchmarks/select_mlrsnet.py [--seeds 2] [--workers 2]   # writes benchmarks/results/selection_cpu.{json,md}

Every variant is run on the four tasks of ``benchmarks/quality.py`` (same data, models, step budgets,
batches and clipping) and scored by the final *validation* metric; no test set is read. Variants:

* meta-training (on the task): the paper's fixed gamma or ``gamma="range_test"`` (three rules for reading
  the LR off the curve), with the one-step hypergradient or a 10-step horizon (``meta_horizon=10``);
* transfer (from the task's ``source`` in ``common.tasks.TASKS``, meta-trained with seed 0): the final network
  alone or the trajectory (snapshots at 0.005, 0.5, 1.0 of the run, played in thirds), with the paper's
  gamma or a range-test rule.

The winners become the library's defaults and the rows of the quality benchmark. Each run is one JSON
file under ``--out/runs`` (a rerun resumes).
"""

from __future__ import annotations

import argparse
import logging
import statistics
from pathlib import Path
from typing import Any

from common import RESULTS, history
from common.harness import Harness
from common.selection import META_VARIANTS, SELECTION_TASKS, TRANSFER_VARIANTS, run, slug
from common.tasks import HIGHER_IS_BETTER, TASKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(SELECTION_TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_entry = history.this_run(args.workers)
    out = args.out / "selection_cpu"
    tasks = args.tasks
    seeds = range(args.seeds)
    sources = {t: TASKS[t].source for t in tasks}

    def job(kind: str, task: str, variant: str, seed: int, **extra: Any) -> dict[str, Any]:
        path = out / "runs" / kind / task / slug(variant) / f"seed={seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        return {"kind": kind, "task": task, "variant": variant, "seed": seed, "path": str(path), **extra}

    def schedule_dir(task: str, variant: str) -> str:
        return str(out / "schedules" / task / slug(variant))

    needed = sorted(set(tasks) | set(sources.values()))
    first = [job("meta", t, v, s, schedule_dir=schedule_dir(t, v)) for t in needed for v in META_VARIANTS
             for s in (seeds if t in tasks else [0])]  # fmt: skip
    n_second = len(tasks) * len(TRANSFER_VARIANTS) * len(seeds)
    harness = Harness(
        len(first) + n_second, args.workers, describe=lambda r: f"{r['task']} | {r['kind']} {r['variant']}"
    )
    records = harness.phase("meta-training variants", first, run)
    second = []
    for t in tasks:
        for v, (source, trajectory, _, _) in TRANSFER_VARIANTS.items():
            path = schedule_dir(sources[t], source) + ("-trajectory" if trajectory else "-final")
            second += [job("transfer", t, v, s, source=path) for s in seeds]
    records = [r for r in records if r["task"] in tasks] + harness.phase("transfer variants", second, run)
    harness.close()

    summary: dict[str, Any] = {}
    for r in records:
        summary.setdefault(r["kind"], {}).setdefault(r["variant"], {}).setdefault(r["task"], []).append(r)
    short = {"accuracy": "acc", "perplexity": "ppl", "mse": "mse"}
    lines = ["| variant | " + " | ".join(f"{t} (val {short[TASKS[t].metric]})" for t in tasks)
             + " | mean rank |", "|---" * (len(tasks) + 2) + "|"]  # fmt: skip
    table: dict[str, Any] = {}
    for kind in ("meta", "transfer"):
        variants = summary.get(kind, {})
        means = {v: {t: statistics.fmean(r["val"] for r in rows[t]) for t in tasks} for v, rows in variants.items()}
        ranks = dict.fromkeys(means, 0.0)
        for t in tasks:
            higher = HIGHER_IS_BETTER[TASKS[t].metric]
            order = sorted(means, key=lambda v: -means[v][t] if higher else means[v][t])
            for i, v in enumerate(order):
                ranks[v] += (i + 1) / len(tasks)
        lines.append(f"| **{kind}** |" + " |" * (len(tasks) + 1))
        for v in sorted(means, key=ranks.get):
            rt = {t: [r.get("range_test_lr") for r in variants[v][t]] for t in tasks}
            cells = []
            for t in tasks:
                cell = f"{means[v][t]:.1f}" if TASKS[t].metric == "perplexity" else f"{means[v][t]:.4f}"
                if rt[t][0]:
                    cell += f" (lr {rt[t][0]:.3g})"
                cells.append(cell)
            lines.append(f"| {v} | " + " | ".join(cells) + f" | {ranks[v]:.2f} |")
            table.setdefault(kind, {})[v] = {"val": means[v], "mean_rank": ranks[v], "range_test_lr": rt}
    md = "\n".join(lines)
    data = history.write_json(args.out / "selection_cpu.json", {"seeds": args.seeds, "results": table}, run_entry)
    (args.out / "selection_cpu.md").write_text(
        f"# MLR-SNet variants on the validation splits\n\n{history.measured(data['runs'])}\n\nFinal validation metric, mean over "
        f"{args.seeds} seed(s); (lr x): the LR the range test chose (seed 0); mean rank over the tasks "
        "(1 = best), within meta-training and within transfer.\n\n" + md + "\n"
    )
    print(md)


if __name__ == "__main__":
    main()
