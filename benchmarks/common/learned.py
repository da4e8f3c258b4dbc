"""The learned rows: MLR-SNet (meta-trained on the task, transferred from another, or released) and the PPO LR
controller (Xu et al., 2019), trained on each task and used there or transferred; plus the learning step that trains
the controller. The protocol is :class:`common.rows.Row`'s.
"""

from __future__ import annotations

import dataclasses
import json
import time
import unittest.mock
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import Trainer

from mlrsnet_hf import MLRSNetConfig, MLRSNetSchedule, MLRSNetTrainer
from mlrsnet_hf.online_scale import BETAS, MechanicScale

from .rows import ERRORS, Row, Run
from .steps import d_times_scheduled_lr, dadapt_sgd_scheduled_step, import_object
from .tasks import Data, Task

# Meta-hyperparameters of online meta-training, the same for every task: the paper's Adam settings
# (lr 1e-3, weight decay 1e-4), a meta update every 10 steps (the paper's 100-300 is for 78k-step runs).
META = {"meta_update_interval": 10, "meta_learning_rate": 1e-3, "meta_weight_decay": 1e-4}
RANGE_TEST_RULE = "min_loss_div_3"  # chosen on the validation splits (benchmarks/select_mlrsnet.py)
# The scales that are an LR-free optimizer run with the learned shape as its LR multiplier (lr 1, the task's weight
# decay): MLRSNetRow.scale -> (the optimizer, its other keyword arguments, the step size it used).
SCALE_OPTIMIZERS = {
    "prodigy": ("prodigyopt.Prodigy", {"safeguard_warmup": True}, d_times_scheduled_lr),
    "dadapt-sgd": ("dadaptation.DAdaptSGD", {}, dadapt_sgd_scheduled_step),
}
CONTROLLER_TRAINING = "PPO controller training"
# The LR controller, trained with PPO on each task (seed 0): episodes of the task's step budget with Adam from an
# initial LR in {1e-2, 1e-3, 1e-4}, a decision every 10 steps, 30 episodes. At use it drives Adam from lr 1e-3 (its
# middle initial LR: no tuning), observing the validation set.
CONTROLLER_SETTINGS = {"episodes": 30, "decision_interval": 10, "n_steps": 120, "batch_size": 60, "n_epochs": 10,
                       "start_lr": 1e-3, "probe_size": {"image": 256, "text": 64}}  # fmt: skip
# The controller observes the probabilities the model gives the true labels (mlrsnet_hf.lr_controller.observe):
# classifiers and language models only, so its rows are left out ("-") on the regression task.
CONTROLLER_METRICS = ("accuracy", "perplexity")


def schedule_path(base: str | Path, trajectory: bool) -> str:
    """Where a meta-trained schedule is saved: its trajectory, or its final network alone."""
    return f"{base}-{'trajectory' if trajectory else 'final'}"


@dataclasses.dataclass(frozen=True)
class MLRSNetRow(Row):
    """An MLR-SNet row: meta-trained on the task, transferred from ``Task.source`` (no tuning), or released."""

    kind: str = "meta-trained"  # "meta-trained", "transferred" or "released"
    horizon: int = 1  # meta_horizon of the meta-training (this row's, or its source's for a transfer)
    trajectory: bool = True  # transferred: the trajectory schedule (snapshots), else the final network alone
    gamma: str | None = None  # None: the paper's (Task.gamma); "range_test": the measured scale
    # The scale learned during the run (issue 32), the shape from the schedule (gamma "relative": lr_t = base * p_t / p_1):
    # "mechanic": the library's online_scale="mechanic" (S_t * lr_t, base = the paper's gamma); "prodigy": Prodigy
    # as the optimizer, whose step is d_t * lr_t (base 1: the shape is its LR multiplier).
    scale: str | None = None

    def build(self, run: Run) -> Trainer:
        task, job = run.task, run.job
        optim = "sgd"
        mlrsnet: dict[str, Any] = {"num_classes": run.data["num_classes"]}
        if task.modality == "text":
            mlrsnet["input_normalization"] = "log_num_classes"
        if self.kind == "meta-trained":
            schedule = MLRSNetSchedule(num_stages=1, gamma=task.gamma if task.gamma == "auto" else float(task.gamma))
            mlrsnet.update(META, meta_train=True, meta_horizon=self.horizon)
            if job["quick"]:
                mlrsnet.update(meta_update_interval=2, meta_horizon=min(self.horizon, 2))
        elif self.kind == "transferred":
            schedule = MLRSNetSchedule.from_pretrained(job["source_schedule"])
            scale = job["lr"]  # None: the paper's; a number (benchmarks/scale.py): gamma, or the learned scale's base
            if self.scale and self.scale.startswith("mechanic"):  # lr_t = S_t * p_t / p_1, S_t learned by Mechanic
                mlrsnet.update(gamma="relative", learning_rate=scale or task.paper_scale, online_scale="mechanic")
                if self.scale == "mechanic-adamw":
                    optim = "adamw_torch"
                if self.scale == "mechanic-lambda0":
                    defaults = (BETAS, 0.0, 1e-8, 1e-8)  # MechanicScale(betas, s_decay, s_init, eps)
                    run.context = unittest.mock.patch.object(MechanicScale.__init__, "__defaults__", defaults)
            elif self.scale == "adamw-1e-3":  # the drop-in default: your AdamW at your LR, the schedule shapes it
                optim = "adamw_torch"
                mlrsnet.update(gamma="relative", learning_rate=1e-3, weight_decay=0.01)
            elif self.scale in SCALE_OPTIMIZERS:  # its step is d_t * lr_t, lr_t = p_t / p_1: the shape multiplies it
                cls, kwargs, step_size = SCALE_OPTIMIZERS[self.scale]
                mlrsnet.update(gamma="relative", learning_rate=1.0)
                kwargs = {"lr": 1.0, "weight_decay": task.weight_decay, **kwargs}
                run.common["optimizer_cls_and_kwargs"] = (import_object(cls), kwargs)
                run.recorder.step_size = step_size
                run.quiet = True  # the parameter-free optimizers print their settings
                if self.scale == "dadapt-sgd":
                    run.errors = ERRORS + (AssertionError, ZeroDivisionError)
            else:
                mlrsnet["gamma"] = scale or self.gamma or task.gamma
            if self.gamma == "range_test":
                mlrsnet["range_test_rule"] = RANGE_TEST_RULE
        else:
            schedule = MLRSNetSchedule.from_pretrained(job["source_schedule"])  # the released recipe: gamma "auto"
            if (
                run.data["num_classes"] is None
            ):  # "auto" is a rule of the loss and C: with no classes, the paper's gamma
                mlrsnet["gamma"] = task.gamma
        return MLRSNetTrainer(
            model=run.model, args=MLRSNetConfig(**run.args(optim=optim, **mlrsnet)), schedule=schedule,
            meta_dataset=run.data["meta"] if self.kind == "meta-trained" else None, **run.common,
        )  # fmt: skip

    def finish(self, run: Run, trainer: Trainer) -> None:
        if self.kind == "meta-trained" and run.job["seed"] == 0:
            for trajectory in (True, False):  # what the transferred rows use
                trainer.save_schedule(
                    schedule_path(run.job["schedule_dir"], trajectory), trajectory=trajectory,
                    meta_training={"task": run.task.name, "steps": run.job["steps"]},
                )  # fmt: skip

    def lrs(self, run: Run, trainer: Trainer) -> list[float]:
        if (self.scale or "").startswith("mechanic"):  # the recorder sees lr_t; S_t * lr_t here
            return [float(lr) for lr in trainer.lr_scheduler.lr_history]
        return run.recorder.lrs


@dataclasses.dataclass(frozen=True)
class ControllerRow(Row):
    """The PPO controller driving Adam from lr 1e-3: trained on the task itself, or on ``Task.source``."""

    transferred: bool = False
    metrics: ClassVar[tuple[str, ...]] = CONTROLLER_METRICS  # the tasks it runs on

    def build(self, run: Run) -> Trainer:
        args = run.args(optim="adamw_torch", weight_decay=0.0, learning_rate=CONTROLLER_SETTINGS["start_lr"])
        return MLRSNetTrainer(model=run.model, args=MLRSNetConfig(**args), schedule=run.job["source_schedule"],
                              meta_dataset=run.data["meta"], **run.common)  # fmt: skip


def train_controller_job(job: dict[str, Any], task: Task, data: Data) -> dict[str, Any]:
    """The learning step of the controller rows: train the PPO controller on a task (seed 0) and save it; the record
    holds its wall time."""
    from mlrsnet_hf.experiments.controller_env import LRControlEnv, train_controller

    settings = CONTROLLER_SETTINGS
    interval = 4 if job["quick"] else settings["decision_interval"]
    per_episode = job["steps"] // interval

    def make_env() -> LRControlEnv:
        return LRControlEnv(
            data["model"], data["train"], data["meta"], batch_size=task.batch,
            val_batch_size=settings["probe_size"][task.modality], episode_steps=job["steps"], decision_interval=interval,
            max_grad_norm=task.clip,
        )  # fmt: skip

    torch.manual_seed(0)
    start = time.perf_counter()
    episodes = 1 if job["quick"] else settings["episodes"]
    n_steps = per_episode if job["quick"] else settings["n_steps"]
    controller, agent = train_controller(
        make_env, total_timesteps=episodes * per_episode, seed=0, n_steps=n_steps,
        batch_size=min(settings["batch_size"], n_steps), n_epochs=settings["n_epochs"],
    )  # fmt: skip
    seconds = time.perf_counter() - start
    controller.training_run.update(task=task.name, episodes=episodes, wall_seconds=round(seconds, 1))
    controller.save_pretrained(job["schedule_dir"])
    returns = [float(e["r"]) for e in agent.ep_info_buffer]
    record = {**{k: v for k, v in job.items() if k not in ("path", "quick")}, "train_seconds": seconds,
              "episode_returns": returns, "test": float("nan"), "val": float("nan"), "metric": None}  # fmt: skip
    Path(job["path"]).write_text(json.dumps(record) + "\n")
    return record


# Each change of issue 10 separately: trajectory vs final network, range-test scale, a 10-step meta-horizon;
# and the scale learned online (issue 32).
MLRSNET_ROWS = {
    r.label: r
    for r in (
        MLRSNetRow("MLR-SNet meta-trained", "meta-trained"),
        MLRSNetRow("MLR-SNet meta-trained, horizon 10", "meta-trained", horizon=10),
        MLRSNetRow("MLR-SNet transferred, final network", "transferred", trajectory=False),
        MLRSNetRow("MLR-SNet transferred, trajectory", "transferred"),
        MLRSNetRow("MLR-SNet transferred, trajectory + range-test scale", "transferred", gamma="range_test"),
        MLRSNetRow("MLR-SNet transferred, trajectory, horizon-10 source", "transferred", horizon=10),
        MLRSNetRow("MLR-SNet transferred, trajectory + online scale (Mechanic)", "transferred", scale="mechanic"),
        MLRSNetRow("MLR-SNet transferred, trajectory + Prodigy scale", "transferred", scale="prodigy"),
        # MLRSNetConfig's defaults (issue 36): AdamW at learning_rate 1e-3 (weight decay 0.01, as the untuned AdamW
        # cosine row), gamma "relative": the first LR is 1e-3 and the schedule shapes it.
        MLRSNetRow(
            "MLR-SNet transferred, trajectory, AdamW 1e-3 (drop-in default)", "transferred", scale="adamw-1e-3"
        ),
        MLRSNetRow("MLR-SNet released", "released"),
    )
}
# Other mechanisms for the learned scale, tried on the validation splits only (benchmarks/select_scale.py): not rows
# of the tables. "mechanic-lambda0": Mechanic without its pull of S towards 0; "mechanic-adamw": Mechanic over AdamW
# (lr_t = S_t * p_t / p_1 with AdamW's unit, the task's weight decay); "dadapt-sgd": D-Adaptation SGD as the
# optimizer, the shape its LR multiplier (as "prodigy").
SCALE_EXPERIMENTS = {
    r.label: r
    for r in (
        MLRSNetRow("MLR-SNet transferred, trajectory + online scale (Mechanic, lambda 0)", "transferred",
                   scale="mechanic-lambda0"),
        MLRSNetRow("MLR-SNet transferred, trajectory + online scale (Mechanic over AdamW)", "transferred",
                   scale="mechanic-adamw"),
        MLRSNetRow("MLR-SNet transferred, trajectory + D-Adaptation SGD scale", "transferred", scale="dadapt-sgd"),
    )
}  # fmt: skip
CONTROLLER_ROWS = {
    r.label: r for r in (ControllerRow("PPO controller trained"), ControllerRow("PPO controller transferred", True))
}
