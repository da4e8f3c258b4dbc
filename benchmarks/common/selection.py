"""MLR-SNet's variants tried on the validation splits (``benchmarks/select_mlrsnet.py``): meta-training with the
paper's gamma or a range-test rule and a 1- or 10-step horizon; transfer of the final network or the trajectory, with
the paper's gamma, a range-test rule or DoG's scale (an experiment, :class:`DoGScale`). One run is :func:`run`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback, TrainerCallback

from mlrsnet_hf import MLRSNetConfig, MLRSNetSchedule, MLRSNetTrainer
from mlrsnet_hf.optimizers import unwrap

from .learned import META
from .rows import training_args
from .steps import LRRecorder, dog_kwargs
from .tasks import HIGHER_IS_BETTER, TASKS, task_data

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
    """One run of a variant (``job["kind"]``: "meta" or "transfer"); writes and returns its record."""
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


def slug(text: str) -> str:
    """``text`` as a folder name."""
    return "".join(c if c.isalnum() else "-" for c in text.lower())
