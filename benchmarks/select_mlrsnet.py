"""Choose MLR-SNet's defaults on the *validation* splits of the quality benchmark's tasks.

    python benchmarks/select_mlrsnet.py [--seeds 2] [--workers 2]   # writes benchmarks/results/selection_cpu.{json,md}

Every variant is run on the four tasks of ``benchmarks/quality.py`` (same data, models, step budgets,
batches and clipping) and scored by the final *validation* metric; no test set is read. Variants:

* meta-training (on the task): the paper's fixed gamma or ``gamma="range_test"`` (three rules for reading
  the LR off the curve), with the one-step hypergradient or a 10-step horizon (``meta_horizon=10``);
* transfer (from the task's ``source`` in ``quality.TASKS``, meta-trained with seed 0): the final network
  alone or the trajectory (snapshots at 0.005, 0.5, 1.0 of the run, played in thirds), with the paper's
  gamma or a range-test rule.

The winners become the library's defaults and the rows of the quality benchmark. Each run is one JSON
file under ``--out/runs`` (a rerun resumes).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from quality import HIGHER_IS_BETTER, META, RESULTS, TASKS, LRRecorder, dog_kwargs, task_data, training_args
from tqdm.auto import tqdm
from transformers import PrinterCallback, TrainerCallback

from mlrsnet_hf import MLRSNetConfig, MLRSNetSchedule, MLRSNetTrainer
from mlrsnet_hf.optimizers import unwrap

RULES = ("min_loss", "min_loss_div_3", "min_loss_div_10", "steepest")
SELECTION_TASKS = ("digits-cnn", "mnist1d-cnn", "ptb-lstm", "ptb-gpt2")  # what the defaults were chosen on
META_VARIANTS = {  # name: (gamma, range_test_rule, meta_horizon)
    "paper gamma, horizon 1": ("paper", None, 1),
    "paper gamma, horizon 10": ("paper", None, 10),
    **{f"range test ({r}), horizon 1": ("range_test", r, 1) for r in RULES},
    "range test (min_loss), horizon 10": ("range_test", "min_loss", 10),
}
TRANSFER_VARIANTS = {  # name: (source meta variant, trajectory, gamma, rule)
    "final network, paper gamma": ("paper gamma, horizon 1", False, "paper", None),
    "trajectory, paper gamma": ("paper gamma, horizon 1", True, "paper", None),
    **{f"trajectory, range test ({r})": ("paper gamma, horizon 1", True, "range_test", r) for r in RULES},
    "trajectory from range-test source, range test (min_loss)": (
        "range test (min_loss), horizon 1", True, "range_test", "min_loss"),
    "trajectory from horizon-10 source, paper gamma": ("paper gamma, horizon 10", True, "paper", None),
    "trajectory from horizon-10 range-test source, range test (min_loss)": (
        "range test (min_loss), horizon 10", True, "range_test", "min_loss"),
    "trajectory, DoG scale (experiment)": ("paper gamma, horizon 1", True, "dog", None),
    "trajectory from horizon-10 source, DoG scale (experiment)": ("paper gamma, horizon 10", True, "dog", None),
}  # fmt: skip


class DoGScale(TrainerCallback):
    """Experiment (not in the library): the LR scale from DoG (Ivgi et al., 2023), the shape from the schedule.

    Runs after the schedule has set ``lr_t = p_t / p_1`` (``gamma="relative"``, ``learning_rate=1``) and
    multiplies it by ``eta_t = max(r_eps, max_i |x_i - x_0|) / sqrt(sum_i |g_i|^2)`` (clipped gradients). The
    schedule sets the LR in the optimizer's step pre-hook, so this is a pre-hook too, registered after the schedule's
    (at the first step).
    """

    def __init__(self, reps_rel: float = 1e-6) -> None:
        self.reps_rel, self.x0, self.rbar, self.g2 = reps_rel, None, 0.0, 0.0
        self.hook = None

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.hook is None:
            self.hook = unwrap(optimizer).register_step_pre_hook(lambda opt, *_: self.scale(model, opt))

    def on_train_end(self, args, state, control, **kwargs):
        if self.hook is not None:
            self.hook.remove()

    def scale(self, model, optimizer) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        if self.x0 is None:
            self.x0 = [p.detach().clone() for p in params]
            self.rbar = self.reps_rel * (1 + torch.sqrt(sum((p.detach() ** 2).sum() for p in params)).item())
        dist = torch.sqrt(sum(((p.detach() - x) ** 2).sum() for p, x in zip(params, self.x0, strict=True))).item()
        self.rbar = max(self.rbar, dist)
        self.g2 += sum((p.grad.detach() ** 2).sum() for p in params if p.grad is not None).item()
        eta = self.rbar / max(self.g2, 1e-30) ** 0.5
        for group in optimizer.param_groups:
            group["lr"] *= eta


def run(job: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(1)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("mlrsnet_hf").setLevel(logging.ERROR)
    task = TASKS[job["task"]]
    data = task_data(task.name, False)
    key = task.metric
    paper_gamma = task.gamma if task.gamma == "auto" else float(task.gamma)
    options: dict[str, Any] = {"num_classes": data["num_classes"]}
    if task.modality == "text":
        options["input_normalization"] = "log_num_classes"
    if job["kind"] == "meta":
        gamma, rule, horizon = META_VARIANTS[job["variant"]]
        schedule = MLRSNetSchedule(num_stages=1, gamma=paper_gamma if gamma == "paper" else gamma)
        options.update(META, meta_train=True, meta_horizon=horizon)
    else:
        _, trajectory, gamma, rule = TRANSFER_VARIANTS[job["variant"]]
        schedule = MLRSNetSchedule.from_pretrained(job["source"])
        options["gamma"] = task.gamma if gamma == "paper" else "relative" if gamma == "dog" else gamma
        if gamma == "dog":
            options["learning_rate"] = 1.0
    if rule is not None:
        options["range_test_rule"] = rule
    recorder = LRRecorder()
    out = Path(job["path"]).with_suffix("")
    args = training_args(task, out, job["seed"], task.steps, optim="sgd", **options)
    torch.manual_seed(job["seed"])
    trainer = MLRSNetTrainer(
        model=data["model"](), args=MLRSNetConfig(**args), schedule=schedule, train_dataset=data["train"],
        eval_dataset={"val": data["val"]}, compute_metrics=data["metrics"][0],
        preprocess_logits_for_metrics=data["metrics"][1], callbacks=[recorder],
        meta_dataset=data["meta"] if job["kind"] == "meta" else None,
    )  # fmt: skip
    trainer.remove_callback(PrinterCallback)
    if job["kind"] == "transfer" and TRANSFER_VARIANTS[job["variant"]][2] == "dog":
        trainer.add_callback(DoGScale(**dog_kwargs(trainer.model)))  # after the schedule's hook: scales its LR
    record = {**{k: v for k, v in job.items() if k != "path"}, "metric": key}
    start = time.perf_counter()
    try:
        trainer.train()
        history = trainer.state.log_history
        record["val"] = [h[f"eval_val_{key}"] for h in history if f"eval_val_{key}" in h][-1]
        if job["kind"] == "meta" and job["seed"] == 0:
            for trajectory in (False, True):
                trainer.save_schedule(
                    job["schedule_dir"] + ("-trajectory" if trajectory else "-final"), trajectory=trajectory
                )
    except (RuntimeError, ValueError, OverflowError) as e:
        record.update(error=f"{type(e).__name__}: {e}", val=0.0 if HIGHER_IS_BETTER[key] else float("inf"))
    record["seconds"] = time.perf_counter() - start
    record["range_test_lr"] = trainer.lr_scheduler.range_test.lr if trainer.lr_scheduler.range_test else None
    record["lrs"] = recorder.lrs[:: max(1, len(recorder.lrs) // 50)]
    Path(job["path"]).write_text(json.dumps(record) + "\n")
    return record


def run_all(jobs: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    todo = [j for j in jobs if not Path(j["path"]).is_file()]
    if todo:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            list(tqdm(pool.imap_unordered(run, todo), total=len(todo)))
    return [json.loads(Path(j["path"]).read_text()) for j in jobs]


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(SELECTION_TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
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
    records = run_all(first, args.workers)
    second = []
    for t in tasks:
        for v, (source, trajectory, _, _) in TRANSFER_VARIANTS.items():
            path = schedule_dir(sources[t], source) + ("-trajectory" if trajectory else "-final")
            second += [job("transfer", t, v, s, source=path) for s in seeds]
    records = [r for r in records if r["task"] in tasks] + run_all(second, args.workers)

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
    (args.out / "selection_cpu.json").write_text(json.dumps({"seeds": args.seeds, "results": table}, indent=1) + "\n")
    (args.out / "selection_cpu.md").write_text(
        "# MLR-SNet variants on the validation splits\n\nFinal validation metric, mean over "
        f"{args.seeds} seed(s); (lr x): the LR the range test chose (seed 0); mean rank over the tasks "
        "(1 = best), within meta-training and within transfer.\n\n" + md + "\n"
    )
    print(md)


if __name__ == "__main__":
    main()
