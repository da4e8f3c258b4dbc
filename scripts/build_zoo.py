"""Build the schedule zoo (``mlrsnet_hf/zoo/<task>-<steps>/``) from a run of the quality benchmark.

    python scripts/build_zoo.py --schedules benchmarks/results/quality_cpu/schedules \
        --results benchmarks/results/quality_cpu.json

For each task of :data:`TASKS`, the trajectory schedule that ``benchmarks/quality.py`` meta-trained on it (seed 0)
is loaded (through the loader's checks), its record gets the task's description and budget and the benchmark rows it
scored (``benchmark``: the card's "Benchmark" table), and it is saved with ``save_pretrained`` into the zoo under the
name ``mlrsnet_hf/<task>-<steps>`` (so the card is the library's own, from ``hub_cards/mlrsnet_schedule.md``).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from mlrsnet_hf import MLRSNetSchedule
from mlrsnet_hf.zoo import ZOO_DIR, ZOO_PREFIX

REPO = Path(__file__).resolve().parents[1]
TASKS = ("digits-cnn", "mnist1d-cnn", "ptb-lstm", "ptb-gpt2", "regression-mlp")  # the benchmark's own tasks
ROWS = ("MLR-SNet transferred, trajectory", "MLR-SNet transferred, trajectory + range-test scale")
_BOOKKEEPING = ("runtime", "samples_per_second", "steps_per_second")


def score(entry: dict, digits: int) -> str:
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def best_tuned(task: dict, digits: int) -> str:
    """The best tuned baseline of a task (a row with an LR chosen on the validation set), with its LR."""
    tuned = {k: v for k, v in task["schedules"].items() if v.get("best_lr") is not None and v.get("mean") is not None}
    label, entry = (max if task["higher_is_better"] else min)(tuned.items(), key=lambda kv: kv[1]["mean"])
    return f"{entry['mean']:.{digits}f} ({label}, lr {entry['best_lr']:g})"


def benchmark_rows(source: str, results: dict) -> list[dict[str, str]]:
    """The rows of the quality benchmark that a schedule meta-trained on ``source`` scored (mean ± std, 3 seeds)."""
    tasks, rows = results["meta"]["tasks"], []
    for name, task in results["results"].items():
        digits = 4 if task["metric"] in ("accuracy", "mse") else 1
        picks = ["MLR-SNet meta-trained"] if name == source else []
        picks += list(ROWS) if tasks[name]["source"] == source else []
        for label in picks:
            entry = task["schedules"].get(label)
            if entry is None or entry.get("mean") is None:
                continue
            rows.append(
                {
                    "task": name,
                    "metric": f"test {task['metric']}",
                    "row": f"{label} on this task, a schedule per seed" if name == source else label,
                    "score": score(entry, digits),
                    "best_tuned": best_tuned(task, digits),
                }
            )
    return rows


def build(schedules: Path, results_path: Path, out: Path = ZOO_DIR) -> list[str]:
    results = json.loads(results_path.read_text(encoding="utf-8"))
    built = []
    for task in TASKS:
        spec = results["meta"]["tasks"][task]
        name = f"{task}-{spec['steps']}"
        schedule = MLRSNetSchedule.from_pretrained(str(schedules / f"{task}-h1-trajectory"))
        record = dict(schedule.meta_training)
        metrics = {
            key.removeprefix("val_"): value
            for key, value in (record.get("results") or {}).items()
            if not key.endswith(_BOOKKEEPING)
        }
        record.update(
            name=ZOO_PREFIX + name,
            task_description=spec["description"],
            budget=f"{spec['steps']} optimizer steps, batch {spec['batch']}",
            optimizer="SGD (momentum 0)",
            results=metrics,
            eval_split="validation (the meta-training run's model, seed 0)",
            benchmark={
                "about": (
                    f"Scores of the quality benchmark (`benchmarks/quality.py`, CPU, {results['meta']['seeds']} seeds, "
                    f"mean ± std; `benchmarks/results/quality_cpu.md`) where this schedule (meta-trained on {task}, "
                    "seed 0) was used: transferred with no tuning to the tasks whose source it is. The first row is "
                    "meta-training on the task itself, which learns a schedule per seed."
                ),
                "rows": benchmark_rows(task, results),
            },
        )
        schedule.meta_training = record
        target = out / name
        if target.exists():
            shutil.rmtree(target)
        schedule.save_pretrained(target, model_card_kwargs={"repo_id": ZOO_PREFIX + name})
        MLRSNetSchedule.from_pretrained(ZOO_PREFIX + name if out == ZOO_DIR else str(target))  # loads back
        built.append(ZOO_PREFIX + name)
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedules", type=Path, default=REPO / "benchmarks/results/quality_cpu/schedules")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks/results/quality_cpu.json")
    parser.add_argument("--out", type=Path, default=ZOO_DIR)
    args = parser.parse_args()
    for name in build(args.schedules, args.results, args.out):
        print("built", name)


if __name__ == "__main__":
    main()
