"""How long the ``mlrsnet`` commands that do not train take, from a fresh interpreter, beside what they must import.

    python benchmarks/cli_startup.py              # writes benchmarks/results/cli_startup_cpu.{json,md}
    python benchmarks/cli_startup.py --repeats 2  # quicker

Each command runs ``--repeats`` times in a fresh ``python -m mlrsnet_hf.cli`` (the ``mlrsnet`` script's code), the
commands taking turns so that a busy machine slows them alike; reported: the median and the fastest wall time.
The floors are measured the same way: an empty interpreter, ``import torch`` (what ``info`` and ``plot`` need to load
and run a schedule's network) and ``import transformers.trainer`` (what every command imported before the CLI
imported it only where a command trains).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, RESULTS, history

SCHEDULE = "mlrsnet_hf/digits-cnn-600"


def commands(out_dir: Path) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "mlrsnet_hf.cli"]
    return {
        "python (empty)": [sys.executable, "-c", "pass"],
        "import torch": [sys.executable, "-c", "import torch"],
        "import transformers.trainer": [sys.executable, "-c", "import transformers.trainer"],
        "mlrsnet --help": [*cli, "--help"],
        "mlrsnet meta-train --help": [*cli, "meta-train", "--help"],
        f"mlrsnet info {SCHEDULE}": [*cli, "info", SCHEDULE],
        f"mlrsnet plot {SCHEDULE}": [*cli, "plot", SCHEDULE, "--out", str(out_dir / "lr.png")],
    }


def measure(repeats: int) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        todo = commands(Path(tmp))
        times: dict[str, list[float]] = {name: [] for name in todo}
        for _ in range(repeats):
            for name, argv in todo.items():
                start = time.perf_counter()
                subprocess.run(argv, cwd=REPO, check=True, capture_output=True)
                times[name].append(time.perf_counter() - start)
    return {name: {"median_s": statistics.median(t), "min_s": min(t)} for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    start = time.perf_counter()
    rows = measure(args.repeats)
    run = history.this_run(seconds=round(time.perf_counter() - start, 1))
    torch_s = rows["import torch"]["median_s"]
    data = history.write_json(
        args.out / "cli_startup_cpu.json", {"repeats": args.repeats, "rows": rows}, run, indent=2
    )
    lines = [
        "# `mlrsnet` start-up",
        "",
        history.measured(data["runs"]),
        "",
        f"Wall time of a fresh interpreter, {args.repeats} runs each, taking turns (`benchmarks/cli_startup.py`).",
        "",
        "| command | median (s) | fastest (s) | median beyond `import torch` (s) |",
        "|---|---:|---:|---:|",
    ]
    for name, row in rows.items():
        beyond = f"{row['median_s'] - torch_s:+.2f}" if name.startswith("mlrsnet") else ""
        lines.append(f"| `{name}` | {row['median_s']:.2f} | {row['min_s']:.2f} | {beyond} |")
    (args.out / "cli_startup_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
