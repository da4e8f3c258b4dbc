"""The one harness: jobs (one JSON file each, so a rerun resumes), progress over every phase (run k of N, time
left; a line after each phase), results handed on as they arrive, and scoring on the validation split.

A job is a dict with a ``"path"``: its record's file. :class:`Harness` runs the jobs not yet on disk (in worker
processes, or here), reads the others back, and calls ``on_record(records)`` after each new one, so a caller can
rewrite its results files as they grow (an interrupted run keeps what it finished).
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .tasks import HIGHER_IS_BETTER

logger = logging.getLogger("benchmarks")
Record = dict[str, Any]


def job(out: Path, task: str, schedule: str, seed: int, steps: int, quick: bool, lr: float | None = None, **extra):
    """A run of row ``schedule`` on ``task`` with ``seed`` and ``lr``; its record is ``out/runs/<task>/<row>/...``."""
    slug = schedule.lower().replace(" ", "-").replace("(", "").replace(")", "")
    path = out / "runs" / task / slug / f"lr={lr}-seed={seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return {"task": task, "schedule": schedule, "seed": seed, "lr": lr, "steps": steps, "quick": quick, "path": str(path), **extra}  # fmt: skip


def score(record: Record, metric: str) -> float:
    """The validation metric as larger-is-better; diverged runs are worst."""
    value = record["val"]
    if not math.isfinite(value):
        return -math.inf
    return value if HIGHER_IS_BETTER[metric] else -value


def best_lr(records: Iterable[Record], task: str, label: str) -> float | None:
    """The LR of ``label``'s seed-0 runs on ``task`` with the best validation metric."""
    seed0 = [r for r in records if r["task"] == task and r["schedule"] == label and r["seed"] == 0]
    return max(seed0, key=lambda r: score(r, r["metric"]))["lr"]


def describe(record: Record) -> str:
    """One run's line: task, row, LR, seed and test metric."""
    test = record.get("test")
    result = f"test {test:.4g}" if isinstance(test, float) else ""
    return f"{record['task']} | {record['schedule']} lr={record.get('lr')} seed={record.get('seed')}: {result}"


class Harness:
    """Runs the phases of a benchmark with one progress count over all of them.

    ``total``: the runs of every phase (known before the first starts); ``on_record(records)``: called with every
    record so far (of this harness, finished or read back) after each new one.
    """

    def __init__(self, total: int, workers: int = 1, on_record: Callable[[list[Record]], None] | None = None,
                 describe: Callable[[Record], str] = describe) -> None:  # fmt: skip
        self.total, self.workers, self.on_record, self.describe = total, workers, on_record, describe
        self.done, self.ran, self.records = 0, 0, {}  # records by path: each job counted once
        self.started = time.monotonic()
        # no bar off a terminal (logs, tests): the log lines say the same
        self.bar = tqdm(total=total, unit="run", desc="runs", dynamic_ncols=True, disable=None)

    def time_left(self) -> str:
        """The time the remaining runs will take at the pace of the runs done here (not read back)."""
        if not self.ran:
            return "time left unknown"
        seconds = (time.monotonic() - self.started) / self.ran * (self.total - self.done)
        # (only the count of the runs to come is known, not their kind: slower runs later make it longer)
        left = f"~{seconds / 60:.0f} min" if seconds >= 90 else f"~{seconds:.0f} s"
        return f"{left} left at this pace"

    def phase(self, name: str, jobs: list[dict[str, Any]], fn: Callable[[dict[str, Any]], Record]) -> list[Record]:
        """Run ``jobs`` with ``fn`` (those not on disk), then return every job's record, in the jobs' order."""
        start = time.monotonic()
        todo = [j for j in jobs if not Path(j["path"]).is_file()]
        resumed = [j["path"] for j in jobs if j["path"] not in self.records and Path(j["path"]).is_file()]
        self.records.update({p: json.loads(Path(p).read_text()) for p in resumed})
        self._advance(len(resumed))
        if resumed:
            logger.info("== %s: %d of %d runs already done (resumed)", name, len(resumed), len(jobs))
        self.bar.set_description(name)
        with logging_redirect_tqdm():  # log lines above the progress bar, not through it
            if todo and self.workers > 1:
                with multiprocessing.get_context("spawn").Pool(self.workers) as pool:
                    for i, record in pool.imap_unordered(_indexed, [(i, fn, j) for i, j in enumerate(todo)]):
                        self._finished(todo[i], record)
            else:
                for j in todo:
                    self._finished(j, fn(j))
        took = time.monotonic() - start
        logger.info("== %s done: %d run%s in %s (%d of %d overall, %s)", name, len(todo), "s" * (len(todo) != 1),
                    f"{took:.0f} s" if took < 90 else f"{took / 60:.1f} min", self.done, self.total,
                    self.time_left())  # fmt: skip
        return [json.loads(Path(j["path"]).read_text()) for j in jobs]

    def close(self) -> None:
        self.bar.close()

    def _advance(self, n: int) -> None:
        self.done += n
        self.bar.update(n)

    def _finished(self, job: dict[str, Any], record: Record) -> None:
        self.ran += 1
        self.records[job["path"]] = record
        self._advance(1)
        logger.info("run %d of %d (%s): %s", self.done, self.total, self.time_left(), self.describe(record))
        if self.on_record is not None:
            self.on_record(list(self.records.values()))


def _indexed(task: tuple[int, Callable[[dict[str, Any]], Record], dict[str, Any]]) -> tuple[int, Record]:
    """``fn(job)`` in a worker process, with the job's index (results arrive in any order)."""
    i, fn, j = task
    return i, fn(j)


def run_all(jobs: list[dict[str, Any]], workers: int, desc: str) -> list[Record]:
    """Run the jobs not yet on disk (in ``workers`` processes), then return every job's record (one phase)."""
    from .training import run_job

    harness = Harness(len(jobs), workers)
    try:
        return harness.phase(desc, jobs, run_job)
    finally:
        harness.close()
