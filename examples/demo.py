"""The main job (`make demo`): learn a schedule, transfer it with no tuning, compare with tuned baselines.

    python examples/demo.py --output_dir demo_output            # ~20 minutes on 2 CPU cores, offline
    python examples/demo.py --output_dir out --steps 40 --quick # the test suite's reduced budget

1. Meta-train an MLR-SNet schedule online on a small CNN on scikit-learn's bundled digits (real 8x8
   images), and save it as a schedule repo (config, weights, card, LR plots). The repo holds the
   trajectory (the networks recorded early, midway and at the end, played in thirds): the artifact that
   transferred best on the quality benchmark's validation splits.
2. Transfer it, with no tuning (the paper's gamma: no LR rule won on those splits), to (a) another architecture (an MLP on digits) and (b) another modality
   (a word-level LSTM on the real Penn Treebank text in ../shared/data/ptb, when present).
3. Train the same tasks with hand-designed schedules (constant, cosine, linear decay), each with the best
   LR of a grid, chosen on the validation split (the held-out meta set; ties broken by validation loss);
   the grids are wide enough that every chosen LR lies inside its grid, not at an end.
4. Print a comparison table and a one-line verdict per task (learned vs best tuned, and the runs each took), and
   write results.json, results.md and plots (the test metric and the LR of every step, for every schedule) to the
   output folder. results.json / results.md are rewritten after every run, so an interrupted demo keeps what it
   finished, and a rerun with the same --output_dir resumes (each run's record is in OUT/runs/records).
The runs go through the benchmarks' harness (benchmarks/common/harness.py): it prints "run k of N" with the time
left, and a line after each phase.
When the released checkpoints are present (../shared/official), they are also converted to a schedule repo.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments  # noqa: E402

from mlrsnet_hf import MLRSNetConfig, MLRSNetSchedule, MLRSNetTrainer, convert_official  # noqa: E402
from mlrsnet_hf.experiments.data import digits_splits, ptb_small_splits  # noqa: E402
from mlrsnet_hf.experiments.language_models import lstm_lm  # noqa: E402
from mlrsnet_hf.experiments.metrics import accuracy_metrics, perplexity_metrics  # noqa: E402
from mlrsnet_hf.experiments.vision_models import DigitsCNN, DigitsMLP  # noqa: E402
from mlrsnet_hf.plotting import format_lr_axis  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # the benchmarks' harness and report writer
from common import history  # noqa: E402
from common.harness import Harness  # noqa: E402
from common.report import verdict  # noqa: E402

logger = logging.getLogger("demo")
SHARED = REPO.parent / "shared"
CHECKPOINTS = ("mlr_snet_1.pth", "mlr_snet_100.pth", "mlr_snet_200.pth")
LEARNED = ("MLR-SNet (meta-trained online)", "MLR-SNet (transferred)", "MLR-SNet (transferred from images)")


def common_args(out: Path, steps: int, batch: int, seed: int, eval_steps: int) -> dict:
    return dict(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch, per_device_eval_batch_size=200,
        eval_strategy="steps", eval_steps=eval_steps, logging_steps=eval_steps, save_strategy="no", report_to="none",
        use_cpu=True, seed=seed, optim="sgd", disable_tqdm=True, remove_unused_columns=False,
    )  # fmt: skip


def curve(trainer: Trainer, key: str) -> list[tuple[int, float]]:
    return [(h["step"], h[key]) for h in trainer.state.log_history if key in h]


class LRRecorder(TrainerCallback):
    """The LR of every optimizer step of a plain ``Trainer`` run (what its LR scheduler sets before the step)."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_step_begin(self, args, state, control, lr_scheduler=None, **kwargs) -> None:
        self.lrs.append(float(lr_scheduler.get_last_lr()[0]))


def run_baseline(task: dict, out: Path, kind: str, lr: float, args: dict, key: str) -> dict:
    """One hand-designed schedule with one LR of its grid: its validation metric and loss, and the test curve.

    ``key`` is the metric (``eval_accuracy``/``eval_perplexity``). The test metric is recorded but plays no part in
    the choice of the LR (:func:`choose`).
    """
    metric = key.removeprefix("eval_")
    torch.manual_seed(args["seed"])
    recorder = LRRecorder()
    trainer = Trainer(
        model=task["model"](), args=TrainingArguments(**{**args, "output_dir": str(out / f"{kind}-{lr}")},
        learning_rate=lr, lr_scheduler_type=kind, max_grad_norm=task.get("clip", 1.0)),
        train_dataset=task["train"], eval_dataset=task["test"], compute_metrics=task["metrics"][0],
        preprocess_logits_for_metrics=task["metrics"][1], callbacks=[recorder],
    )  # fmt: skip
    trainer.remove_callback(PrinterCallback)  # one line per run (the harness's), not the Trainer's logs
    trainer.train()
    val = trainer.evaluate(task["val"], metric_key_prefix="val")
    points = curve(trainer, key)
    return {"lr": lr, "validation": val[f"val_{metric}"], "val_loss": val["val_loss"], "final": points[-1][1],
            "curve": points, "lrs": recorder.lrs}  # fmt: skip


def choose(runs: list[dict], grid: list[float], best) -> dict:
    """Of one schedule's runs over its grid, the LR best on the validation split (``best``: ``max`` or ``min`` of
    the metric; ties broken by the lower validation loss)."""
    sign = 1 if best is max else -1
    chosen = max(runs, key=lambda r: (finite_or_worst(sign * r["validation"]), finite_or_worst(-r["val_loss"])))
    return {
        "final": chosen["final"],
        "validation": chosen["validation"],
        "lr": chosen["lr"],
        "interior": len(grid) > 2 and grid[0] < chosen["lr"] < grid[-1],
        "curve": chosen["curve"],
        "lrs": chosen["lrs"],
        "grid": {str(r["lr"]): {"validation": r["validation"], "test": r["final"]} for r in runs},
    }


def finite_or_worst(score: float) -> float:
    """A score to maximise, a diverged run's (NaN / inf) counted as the worst."""
    return score if math.isfinite(score) else -math.inf


def run_mlrsnet(task, out, schedule, args, key, meta_dataset=None, **mlrsnet) -> tuple[dict, MLRSNetTrainer]:
    torch.manual_seed(args["seed"])
    config = MLRSNetConfig(**{**args, "output_dir": str(out)}, max_grad_norm=task.get("clip", 1.0), **mlrsnet)
    trainer = MLRSNetTrainer(
        model=task["model"](), args=config, train_dataset=task["train"], eval_dataset=task["test"],
        meta_dataset=meta_dataset, schedule=schedule, compute_metrics=task["metrics"][0],
        preprocess_logits_for_metrics=task["metrics"][1],
    )  # fmt: skip
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return {
        "final": curve(trainer, key)[-1][1],
        "curve": curve(trainer, key),
        "lrs": trainer.lr_scheduler.lr_history,
    }, trainer


def plot(results: dict, path: Path) -> None:
    """Per task: the test metric against the step (top) and the LR of every step (bottom), for every schedule."""
    tasks = list(results)
    fig, axes = plt.subplots(2, len(tasks), figsize=(6 * len(tasks), 7), squeeze=False)
    for col, name in enumerate(tasks):
        task = results[name]
        all_lrs = []
        for label, r in task["runs"].items():
            axes[0, col].plot(*zip(*r["curve"], strict=True), marker=".", label=label)
            axes[1, col].plot(range(1, len(r["lrs"]) + 1), r["lrs"], label=label)
            all_lrs += r["lrs"]
        axes[0, col].set_title(f"{name}: test {task['metric']}")
        axes[0, col].set_xlabel("optimizer step")
        axes[0, col].legend(fontsize=7)
        axes[1, col].set_title(f"{name}: learning rate of every step")
        axes[1, col].set_xlabel("optimizer step")
        format_lr_axis(axes[1, col], all_lrs)
        axes[1, col].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def selection_notes(results: dict, grids: dict[str, list[float]]) -> str:
    """How the baselines' LRs were chosen, and whether each chosen LR lies inside its grid."""
    lines = [
        "Baselines: each hand-designed schedule trained with every LR of its task's grid; the LR kept is the one with",
        "the best metric on the validation split (the held-out meta set, which the test set never overlaps; ties",
        "broken by validation loss). The test metric plays no part in the choice. MLR-SNet got no tuning.",
        "",
        "| task | schedule | LR grid | chosen LR | validation | inside the grid |",
        "|---|---|---|---|---|---|",
    ]
    for name, task in results.items():
        for label, r in task["runs"].items():
            if "grid" in r:
                grid = " / ".join(f"{lr:g}" for lr in grids[name])
                inside = "yes" if r["interior"] else "no: at an end of the grid"
                kind = label.split(" (")[0]
                lines.append(f"| {name} | {kind} | {grid} | {r['lr']:g} | {r['validation']:.4g} | {inside} |")
    return "\n".join(lines)


def summarise(records: dict[str, dict], plan: list[dict], grids: dict[str, list[float]]) -> dict:
    """The results so far, per task: the learned schedule's run, each baseline at its LR chosen on validation, and
    a verdict (the learned schedule's test metric and its 1 run against the best tuned one's, with its grid's size)."""
    results: dict = {}
    for job in plan:
        record = records.get(job["path"])
        if record is None:
            continue
        task = results.setdefault(job["task"], {"metric": job["metric"], "runs": {}})
        if job["label"] in LEARNED:
            task["runs"][job["label"]] = {k: v for k, v in record.items() if k not in ("task", "schedule", "lr")}
    for name, task in results.items():
        best = max if task["metric"] == "accuracy" else min
        for kind in dict.fromkeys(j["label"] for j in plan if j["task"] == name and j["label"] not in LEARNED):
            runs = [
                records[j["path"]] for j in plan if j["task"] == name and j["label"] == kind and j["path"] in records
            ]
            if runs:
                chosen = choose(runs, grids[name], best)
                task["runs"][f"{kind} (best lr {chosen['lr']:g})"] = chosen
        learned = next(((k, r) for k, r in task["runs"].items() if k in LEARNED), None)
        tuned = {k: (r["final"], len(r["grid"])) for k, r in task["runs"].items() if "grid" in r}
        if learned and tuned:
            task["verdict"] = verdict(name, task["metric"], (learned[0], learned[1]["final"], 1), tuned)
    return results


def write(out: Path, results: dict, args: argparse.Namespace, grids: dict, run: dict, done: str) -> str:
    """results.json and results.md (the table, the verdicts, how the baselines were chosen); returns the table."""
    lines = ["| task | schedule | final test metric |", "|---|---|---|"]
    for name, task in results.items():
        for label, r in task["runs"].items():
            lines.append(f"| {name} | {label} | {task['metric']} {r['final']:.4g} |")
    table = "\n".join(lines)
    verdicts = "\n".join(f"- {t['verdict']}" for t in results.values() if "verdict" in t)
    (out / "results.md").write_text(
        f"# Demo results ({args.steps} image steps, {args.text_steps} text steps, seed {args.seed})\n\n"
        f"{history.measured([run])} {done}\n\n{table}\n\nVerdicts (test metric; the learned schedule took one run, a tuned "
        f"one a run per LR of its grid):\n\n{verdicts}\n\n{selection_notes(results, grids)}\n"
    )
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=Path("demo_output"))
    parser.add_argument("--shared", type=Path, default=SHARED, help="the shared/ folder (released checkpoints, PTB)")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps per image run")
    parser.add_argument("--text_steps", type=int, default=400, help="optimizer steps per text run")
    parser.add_argument("--quick", action="store_true", help="one LR per baseline grid and fewer schedules")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("mlrsnet_hf").setLevel(logging.WARNING)
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    run = history.this_run()

    official = args.shared / "official"
    if all((official / name).is_file() for name in CHECKPOINTS):
        convert_official([official / n for n in CHECKPOINTS], out / "official-schedule")
        logger.info("Converted the released checkpoints to %s", out / "official-schedule")

    digits = digits_splits(args.seed)
    image_eval = max(args.steps // 10, 1)
    image_args = common_args(out / "runs", args.steps, 64, args.seed, image_eval)
    acc = accuracy_metrics()
    schedules = ["constant", "cosine"] if args.quick else ["constant", "cosine", "linear"]
    # Wide enough that every chosen LR lies inside its grid (results.md says where each one fell).
    image_grid = [0.1] if args.quick else [0.1, 0.3, 1.0, 3.0, 10.0]
    text_grid = [20.0] if args.quick else [10.0, 20.0, 40.0, 80.0, 160.0, 320.0]
    cnn = {"name": "digits-cnn", "model": DigitsCNN, "train": digits["train"], "val": digits["meta"], "test": digits["test"],
           "metrics": acc}  # fmt: skip
    mlp = {"name": "digits-mlp", "model": DigitsMLP, "train": digits["train"], "val": digits["meta"], "test": digits["test"],
           "metrics": acc}  # fmt: skip
    names = {"digits-cnn": "digits-cnn (meta-train task)", "digits-mlp": "digits-mlp (architecture transfer)",
             "ptb-lstm": "ptb-lstm (modality transfer)"}  # fmt: skip
    learned: dict = {}  # the schedule meta-trained in phase 1, loaded once for both transfers

    def learned_schedule() -> MLRSNetSchedule:
        if "schedule" not in learned:
            learned["schedule"] = MLRSNetSchedule.from_pretrained(out / "schedule")
        return learned["schedule"]

    def job(task: dict, label: str, metric: str, run: Callable[[], dict], lr: float | None = None) -> dict:
        name = f"{task['name']}-{label.split(' (')[0]}" + ("" if lr is None else f"-lr={lr:g}")
        path = out / "runs" / "records" / f"{name.replace(' ', '-')}.json"
        return {"task": names[task["name"]], "label": label, "metric": metric, "lr": lr, "path": str(path), "run": run}

    def meta_train() -> dict:  # 1. meta-train on the CNN (gamma 1: the paper's image setting)
        torch.manual_seed(args.seed)
        result, trainer = run_mlrsnet(
            cnn, out / "runs" / "meta-train", MLRSNetSchedule(num_stages=1, gamma=1.0), image_args, "eval_accuracy",
            meta_dataset=digits["meta"], meta_train=True, meta_update_interval=10, meta_learning_rate=1e-3, num_classes=10,
        )  # fmt: skip
        trainer.save_schedule(
            out / "schedule", meta_training={"dataset": "sklearn/digits", "model": "DigitsCNN", "eval_split": "test"}
        )
        return result

    def baselines(task: dict, train_args: dict, grid: list[float], metric: str) -> list[dict]:
        where = out / "runs" / task["name"]
        return [job(task, kind, metric, lambda t=task, k=kind, lr=lr: run_baseline(t, where, k, lr, train_args, f"eval_{metric}"), lr)
                for kind in schedules for lr in grid]  # fmt: skip

    phases = [
        ("1. meta-training MLR-SNet on digits / CNN", [job(cnn, LEARNED[0], "accuracy", meta_train)]),
        ("2a. transfer to digits / MLP", [job(mlp, LEARNED[1], "accuracy", lambda: run_mlrsnet(
            mlp, out / "runs" / "transfer-mlp", learned_schedule(), image_args, "eval_accuracy", num_classes=10)[0])]),
        ("3. tuned baselines on the image tasks", [*baselines(cnn, image_args, image_grid, "accuracy"),
                                                   *baselines(mlp, image_args, image_grid, "accuracy")]),
    ]  # fmt: skip
    grids = {names["digits-cnn"]: image_grid, names["digits-mlp"]: image_grid, names["ptb-lstm"]: text_grid}
    ptb = args.shared / "data" / "ptb"
    if (ptb / "ptb.valid.txt").is_file():  # 2b. transfer to text (real PTB), gamma 40 and loss / ln(V) as released
        chunks, vocab = ptb_small_splits(str(ptb), batch_size=20, seq_len=35, eval_batch_size=20)
        text_args = {**common_args(out / "runs", args.text_steps, 20, args.seed, max(args.text_steps // 5, 1)),
                     "train_sampling_strategy": "sequential"}  # fmt: skip
        n_test = min(len(chunks["test"]), 20 * 40)
        lm = {
            "name": "ptb-lstm", "model": lambda: lstm_lm(len(vocab), hidden_size=128, dropout=0.3),
            "train": chunks["train"], "val": chunks["meta"], "test": torch.utils.data.Subset(chunks["test"], range(n_test)),
            "metrics": perplexity_metrics(), "clip": 0.25,
        }  # fmt: skip
        transfer = job(lm, LEARNED[2], "perplexity", lambda: run_mlrsnet(
            lm, out / "runs" / "transfer-ptb", learned_schedule(), text_args, "eval_perplexity", gamma="40",
            input_normalization="log_num_classes")[0])  # fmt: skip
        phases.append(("2b. transfer to Penn Treebank / LSTM (image -> text), and its tuned baselines",
                       [transfer, *baselines(lm, text_args, text_grid, "perplexity")]))  # fmt: skip
    else:
        logger.info("== 2b. skipped: no Penn Treebank text in %s", ptb)
    plan = [j for _, jobs in phases for j in jobs]
    records: dict[str, dict] = {}

    def run_job(job: dict) -> dict:
        record = {"task": job["task"], "schedule": job["label"], "lr": job["lr"], **job["run"]()}
        Path(job["path"]).parent.mkdir(parents=True, exist_ok=True)
        Path(job["path"]).write_text(json.dumps(record, default=float) + "\n")
        return record

    def arrived(_: list[dict]) -> None:  # rewrite results.json / results.md after every run
        records.update({j["path"]: json.loads(Path(j["path"]).read_text()) for j in plan if Path(j["path"]).is_file()})
        write(out, summarise(records, plan, grids), args, grids, run, f"({len(records)} of {len(plan)} runs done)")

    def describe(r: dict) -> str:
        return (
            f"{r['task']} | {r['schedule']}"
            + ("" if r["lr"] is None else f" lr={r['lr']:g}")
            + f": test {r['final']:.4g}"
        )

    harness = Harness(len(plan), workers=1, on_record=arrived, describe=describe)
    for name, jobs in phases:
        logger.info("== %s", name)
        harness.phase(name, jobs, run_job)
        arrived([])
    harness.close()
    results = summarise(records, plan, grids)
    table = write(out, results, args, grids, run, "")
    plot(results, out / "results.png")
    print("\n" + table + "\n")
    print("\n".join(t["verdict"] for t in results.values() if "verdict" in t))
    print(f"\nSchedule repo: {out / 'schedule'}; results: {out / 'results.md'}, {out / 'results.png'}")
    at_an_end = [
        f"{n}: {label}" for n, t in results.items() for label, r in t["runs"].items() if r.get("interior") is False
    ]
    if at_an_end and not args.quick:
        logger.warning("Chosen LRs at an end of their grid (widen it): %s", "; ".join(at_an_end))
    if any(not math.isfinite(r["final"]) for t in results.values() for r in t["runs"].values()):
        logger.warning("Some runs diverged (non-finite metric): see results.json.")


if __name__ == "__main__":
    main()
