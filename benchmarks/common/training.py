"""One training run (a job) of a row on a task: the same steps for every row, which only builds its Trainer."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import PrinterCallback

from .learned import CONTROLLER_TRAINING, train_controller_job
from .registry import ROWS
from .rows import Run
from .steps import LRRecorder
from .tasks import HIGHER_IS_BETTER, task_data, task_spec

QUIET = {"transformers": logging.ERROR, "mlrsnet_hf": logging.ERROR, "dog": logging.WARNING}  # dog: every state dict


@contextlib.contextmanager
def one_quiet_thread() -> Iterator[None]:
    """One CPU thread and quiet libraries for a run, as before it afterwards (a run here, not in a worker)."""
    threads, levels = torch.get_num_threads(), {name: logging.getLogger(name).level for name in QUIET}
    torch.set_num_threads(1)
    for name, level in QUIET.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One training run; writes and returns its record (final val and test metrics, curves, LRs, wall time)."""
    with one_quiet_thread():
        return _run(job)


def _run(job: dict[str, Any]) -> dict[str, Any]:
    task = task_spec(job["task"])
    data = task_data(task.name, job["quick"])
    if job["schedule"] == CONTROLLER_TRAINING:  # a learning step, not a row: it trains the controller rows' policy
        return train_controller_job(job, task, data)
    key = task.metric
    recorder = LRRecorder()
    common = dict(
        train_dataset=data["train"], eval_dataset={"val": data["val"]}, compute_metrics=data["metrics"][0],
        preprocess_logits_for_metrics=data["metrics"][1], callbacks=[recorder],
    )  # fmt: skip
    torch.manual_seed(job["seed"])
    run = Run(job, task, data, data["model"](), recorder, common)
    start = time.perf_counter()
    row = ROWS[job["schedule"]]
    trainer = row.build(run)
    trainer.remove_callback(PrinterCallback)  # the records hold the logs
    record: dict[str, Any] = {**{k: v for k, v in job.items() if k not in ("path", "quick")}, "metric": key}
    record.update(run.extra)
    try:
        with contextlib.redirect_stdout(io.StringIO()) if run.quiet else contextlib.nullcontext(), run.context:
            trainer.train()
        record["train_seconds"] = time.perf_counter() - start
        history = trainer.state.log_history
        record["val_curve"] = [(h["step"], h[f"eval_val_{key}"]) for h in history if f"eval_val_{key}" in h]
        record["val"] = record["val_curve"][-1][1] if record["val_curve"] else float("nan")
        record["train_loss"] = [(h["step"], h["loss"]) for h in history if "loss" in h]
        if run.after is not None:
            run.after(trainer, record)
        test = trainer.evaluate(eval_dataset=data["test"], metric_key_prefix="test")
        record["test"] = test[f"test_{key}"]
        if hasattr(row, "finish"):
            row.finish(run, trainer)
        if getattr(trainer.lr_scheduler, "range_test", None) is not None:
            record["range_test"] = trainer.lr_scheduler.range_test.to_dict()
    except run.errors as e:  # a diverged run is a result, not a crash
        record.update(error=f"{type(e).__name__}: {e}", test=float("nan"), val=float("nan"), val_curve=[])
    record["lrs"] = row.lrs(run, trainer)
    for k in ("test", "val"):
        if not math.isfinite(record[k]):
            record[k] = float("nan") if HIGHER_IS_BETTER[key] else float("inf")
    Path(job["path"]).write_text(json.dumps(record) + "\n")
    return record
