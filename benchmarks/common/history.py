"""Results files that carry their own history: a ``"runs"`` list (date, machine, git commit, command) kept across
rewrites, and the line each markdown table opens with, saying when and on what machine it was measured."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from . import REPO


def machine(workers: int | None = None) -> str:
    """This machine in words: processor, CPU count (and worker processes), torch version."""
    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
    return cpu + (f", {workers} worker(s) x 1 thread" if workers else "") + f", torch {torch.__version__}"


def commit() -> str:
    """The git commit of the code that ran (``-dirty``: with uncommitted changes), or "unknown"."""
    try:
        git = ["git", "-C", str(REPO)]
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def this_run(workers: int | None = None, **extra: Any) -> dict[str, Any]:
    """The entry of this invocation: UTC date, machine, commit, command line (and ``extra``, e.g. wall seconds)."""
    argv = [Path(sys.argv[0]).as_posix().removeprefix(REPO.as_posix() + "/"), *sys.argv[1:]]
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return {"date": date, "machine": machine(workers), "commit": commit(), "command": " ".join(argv), **extra}


def previous_runs(path: Path) -> list[dict[str, Any]]:
    """The history of the results file at ``path`` (none if it is absent or has no history)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return list(data.get("runs", [])) if isinstance(data, dict) else []


def write_json(path: Path, data: dict[str, Any], run: dict[str, Any], indent: int = 1) -> dict[str, Any]:
    """Write ``data`` to ``path`` with the file's history and ``run`` appended to it (a rewrite of the same
    invocation, e.g. as results arrive, replaces its own entry). Returns what was written."""
    runs = [r for r in previous_runs(path) if r.get("date") != run["date"] or r.get("command") != run["command"]]
    data = {**data, "runs": [*runs, run]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent, default=float) + "\n")
    return data


def measured(runs: list[dict[str, Any]]) -> str:
    """The line a results table opens with: when, on what machine and at what commit it was measured."""
    if not runs:
        return "_When and where this was measured is not recorded._"
    last = runs[-1]
    if last.get("migrated"):  # a file written before it carried its history: what its commit and JSON tell
        line = f"_Committed {last['date']} (commit {last['commit']}), measured before on {last['machine']}"
    else:
        line = f"_Measured {last['date']} on {last['machine']}, commit {last['commit']}: `{last['command']}`"
    if len(runs) > 1:
        line += f" (the file's history: {len(runs)} runs, the first {runs[0]['date']}; see its JSON)"
    return line + "._"


def with_measured(markdown: str, runs: list[dict[str, Any]]) -> str:
    """``markdown`` with the :func:`measured` line after its title (its first line)."""
    title, _, rest = markdown.partition("\n")
    return f"{title}\n\n{measured(runs)}\n" + (rest if rest.startswith("\n") else "\n" + rest)
