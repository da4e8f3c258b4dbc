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
   finished, and a rerun with the same --output_dir resumes (each run's record is in OUT/runs/records/<budget>).
The runs go through the benchmarks' harness (benchmarks/common/harness.py): it prints "run k of N" with the time
left, and a line after each phase.
When the released checkpoints are present (../shared/official), they are also converted to a schedule repo.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from mlrsnet_hf import MLRSNetConfig, MLRSNetSchedule, MLRSNetTrainer, convert_official
from mlrsnet_hf.experiments.data import digits_splits, ptb_small_splits
from mlrsnet_hf.experiments.language_models import lstm_lm
from mlrsnet_hf.experiments.metrics import accuracy_metrics, perplexity_metrics
from mlrsnet_hf.experiments.vision_models import DigitsCNN, DigitsMLP

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # the benchmarks' harness and report writer
from common import history  # noqa: E402
from common.demo_report import LEARNED, plot, summarise, write  # noqa: E402
from common.harness import Harness  # noqa: E402

logger = logging.getLogger("demo")
SHARED = REPO.parent / "shared"
CHECKPOINTS = ("mlr_snet_1.pth", "mlr_snet_100.pth", "mlr_snet_200.pth")


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
    the choice of the LR (``common.demo_report.choose``).
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
    title = f"Demo results ({args.steps} image steps, {args.text_steps} text steps, seed {args.seed})"

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
    # One run's record per file (a rerun resumes), kept apart per budget and seed, with the schedule they learned.
    records_dir = out / "runs" / "records" / f"steps={args.steps},text_steps={args.text_steps},seed={args.seed}"

    def learned_schedule() -> MLRSNetSchedule:
        if "schedule" not in learned:
            learned["schedule"] = MLRSNetSchedule.from_pretrained(out / "schedule")
        return learned["schedule"]

    def job(task: dict, label: str, metric: str, run: Callable[[], dict], lr: float | None = None) -> dict:
        name = f"{task['name']}-{label.split(' (')[0]}" + ("" if lr is None else f"-lr={lr:g}")
        path = records_dir / f"{name.replace(' ', '-')}.json"
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
        shutil.copytree(out / "schedule", records_dir / "schedule", dirs_exist_ok=True)
        return result

    def same_schedule() -> None:  # a resumed meta-training: the schedule repo is this budget's (another run's no more)
        kept, repo = records_dir / "schedule", out / "schedule"
        if kept.is_dir() and (
            not repo.is_dir() or (kept / "config.json").read_bytes() != (repo / "config.json").read_bytes()
        ):
            shutil.rmtree(repo, ignore_errors=True)
            shutil.copytree(kept, repo)

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
        write(out, summarise(records, plan, grids), title, grids, run, f"({len(records)} of {len(plan)} runs done)")

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
        if jobs is phases[0][1]:
            same_schedule()
        arrived([])
    harness.close()
    results = summarise(records, plan, grids)
    table = write(out, results, title, grids, run, "")
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
