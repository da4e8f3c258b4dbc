"""Hostile-input probes (issue 35): kills during saves, damaged repos, corrupted checkpoints, bad arguments.

Each probe is one case with a required outcome; a case *holds* when the library gives it, and *fails* otherwise
(a wrong result, a bare or unnamed error, an error that took a second or more). Families of probes:

- ``kills``: a save killed at every point (each file move), over a repo and into a new directory, for both
  families: the directory must load as the old repo or the new one, weights exactly.
- ``repos``: single-bit flips at random places of ``model.safetensors`` and ``config.json``, and the hostile
  configs and tensors of the issue: a ``ScheduleFileError`` naming the file in under a second, or (for a flip
  that leaves a valid file) a load whose weights are exactly the saved ones.
- ``checkpoints``: every field of a meta-training run's ``scheduler.pt`` replaced by NaN, inf, -1, a wrong
  shape, a wrong type or removed: a ``CheckpointStateError`` naming the field before any step, or a resume.
- ``arguments``: bad constructor and option values: a ``ValueError``/``TypeError`` naming the argument.

    python benchmarks/hostile_probes.py            # writes benchmarks/results/hostile_probes.{json,md}
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_plain_loop import META, TRANSFER, plain_loop  # noqa: E402  (the tests' loop: real data, real optimizer)

import mlrsnet_hf.repo_writing as repo_writing  # noqa: E402
from mlrsnet_hf import LRController, MLRSNetConfig, MLRSNetSchedule, ScheduleFileError  # noqa: E402
from mlrsnet_hf.state_checks import CheckpointStateError  # noqa: E402


class Probes:
    def __init__(self) -> None:
        self.results: dict[str, dict[str, int]] = {}
        self.failures: list[str] = []

    def record(self, family: str, case: str, held: bool, detail: str = "") -> None:
        counts = self.results.setdefault(family, {"held": 0, "failed": 0})
        counts["held" if held else "failed"] += 1
        if not held:
            self.failures.append(f"{family}: {case}: {detail[:300]}")


def schedule_of(family: str, seed: int):
    torch.manual_seed(seed)
    return MLRSNetSchedule(hidden_size=8, num_stages=2, gamma=0.1) if family == "mlrsnet" else LRController()


def same_weights(a, b) -> bool:
    wa, wb = a.weights(), b.weights()
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def kills(probes: Probes, root: Path) -> None:
    for family in ("mlrsnet", "controller"):
        cls = MLRSNetSchedule if family == "mlrsnet" else LRController
        old, new = schedule_of(family, 0), schedule_of(family, 1)
        for existing in (True, False):
            for kill_at in range(8):
                out = root / f"kill-{family}-{existing}-{kill_at}" / "repo"
                if existing:
                    old.save_pretrained(out)
                calls = []
                real_replace = os.replace

                def replace(src, dst, calls=calls, kill_at=kill_at, real_replace=real_replace):
                    if len(calls) == kill_at:
                        raise KeyboardInterrupt  # the process dies here
                    calls.append(dst)
                    real_replace(src, dst)

                with (
                    mock.patch.object(repo_writing.os, "replace", replace),
                    mock.patch.object(repo_writing.shutil, "rmtree", lambda *a, **k: None),
                    contextlib.suppress(KeyboardInterrupt),
                ):
                    new.save_pretrained(out)
                case = f"{family} {'over a repo' if existing else 'new directory'}, killed at move {kill_at}"
                if not out.exists():
                    probes.record("kills", case, not existing, "the old repo is gone")
                    continue
                try:
                    loaded = cls.from_pretrained(out)
                    probes.record("kills", case, same_weights(loaded, old) or same_weights(loaded, new), "a mix")
                except Exception as e:  # noqa: BLE001 (a probe records whatever happens)
                    probes.record("kills", case, False, f"{type(e).__name__}: {e}")


def expect_file_error_or_same(probes: Probes, case: str, repo: Path, reference, cls) -> None:
    start = time.perf_counter()
    try:
        loaded = cls.from_pretrained(repo)
        held = reference is not None and same_weights(loaded, reference)
        probes.record("repos", case, held, "accepted" if reference is None else "loaded other weights")
    except ScheduleFileError as e:
        quick, bounded = time.perf_counter() - start < 1.0, len(str(e)) < 1200
        probes.record("repos", case, quick and bounded and str(repo) in str(e), f"slow or unnamed: {str(e)[:200]}")
    except Exception as e:  # noqa: BLE001
        probes.record("repos", case, False, f"{type(e).__name__}: {str(e)[:200]}")


def repos(probes: Probes, root: Path, flips: int, rng: random.Random) -> None:
    reference = schedule_of("mlrsnet", 0)
    base = root / "base"
    reference.save_pretrained(base)
    for name in ("model.safetensors", "config.json"):
        size = (base / name).stat().st_size
        for i in range(flips):
            repo = root / f"flip-{name}-{i}"
            shutil.copytree(base, repo)
            data = bytearray((repo / name).read_bytes())
            position, bit = rng.randrange(size), rng.randrange(8)
            data[position] ^= 1 << bit
            (repo / name).write_bytes(bytes(data))
            if name == "config.json":  # a flip that leaves valid JSON is an edit of the config: judged as a load
                try:
                    edited = json.loads(data.decode("utf-8"))
                    if edited != json.loads((base / name).read_text()):
                        expect_edit(probes, f"config.json bit {bit} of byte {position}", repo, edited)
                        shutil.rmtree(repo)
                        continue
                except (UnicodeDecodeError, json.JSONDecodeError):
                    pass
            expect_file_error_or_same(probes, f"{name} bit {bit} of byte {position}", repo, reference, MLRSNetSchedule)
            shutil.rmtree(repo)
    hostile = {
        "num_layers 20000": {"num_layers": 20000},
        "num_stages 20000": {"num_stages": 20000},
        "hidden_size 2**62": {"hidden_size": 2**62},
        "gamma null": {"gamma": None},
        "input_normalization null": {"input_normalization": None},
        "relative_max_scale null": {"relative_max_scale": None},
        "num_stages 2.5": {"num_stages": 2.5},
        "deep nesting": {"meta_training": json.loads("[" * 900 + "]" * 900)},
    }
    for case, fields in hostile.items():
        repo = root / f"hostile-{len(case)}-{abs(hash(case))}"
        shutil.copytree(base, repo)
        config = json.loads((repo / "config.json").read_text())
        (repo / "config.json").write_text(json.dumps({**config, **fields}))
        expect_file_error_or_same(probes, case, repo, None, MLRSNetSchedule)  # must be refused
    from safetensors.torch import load_file, save_file

    for dtype in (torch.int64, torch.int8, torch.uint8, torch.bool, torch.complex64, "f64 overflow"):
        repo = root / f"dtype-{dtype}"
        shutil.copytree(base, repo)
        tensors = load_file(repo / "model.safetensors")
        key = "stages.0.head.bias"
        tensors[key] = (
            torch.full_like(tensors[key], 1e300, dtype=torch.float64)
            if dtype == "f64 overflow"
            else tensors[key].to(dtype)
        )
        save_file(tensors, repo / "model.safetensors")
        expect_file_error_or_same(probes, f"tensor dtype {dtype}", repo, None, MLRSNetSchedule)


def expect_edit(probes: Probes, case: str, repo: Path, edited: dict) -> None:
    """A config.json still valid JSON after a flip: an error naming the file, or a load of exactly that config."""
    try:
        loaded = MLRSNetSchedule.from_pretrained(repo)
        metadata = ("library_name", "library_version", "model_type")  # (provenance: read, not used to build)
        same = all(loaded.config.get(k) == v for k, v in edited.items() if k not in metadata)
        probes.record("repos", case, same, "loaded a config other than the file's")
    except ScheduleFileError as e:
        probes.record("repos", case, str(repo) in str(e), str(e)[:200])
    except Exception as e:  # noqa: BLE001
        probes.record("repos", case, False, f"{type(e).__name__}: {str(e)[:200]}")


def leaves(state, path=()):
    if isinstance(state, dict):
        for key, value in state.items():
            yield from leaves(value, (*path, key))
    elif isinstance(state, list) and state and not all(isinstance(v, (int, float)) for v in state):
        for index, value in enumerate(state):
            yield from leaves(value, (*path, index))
    else:
        yield path, state


def corrupted(state, path, value):
    import copy

    state = copy.deepcopy(state)
    target = state
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return state


def replacements(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel():
        yield "nan", torch.full_like(value, math.nan)
        yield "shape", value.reshape(-1)[:-1] if value.numel() > 1 else value.reshape(1, 1, 1)
    yield "-1", -1
    yield "inf", math.inf
    yield "string", "x"
    yield "removed", KeyError


RUNS = {
    "meta-training": META,
    "meta-training with snapshots": {**META, "snapshot_fractions": [0.25, 0.5, 1.0]},
    "transfer with the online scale": {**TRANSFER, "online_scale": "mechanic"},
}


def checkpoints(probes: Probes) -> None:
    for name, options in RUNS.items():
        checkpoints_of(probes, name, options)


def checkpoints_of(probes: Probes, name: str, options: dict) -> None:
    *_, checkpoint = plain_loop(options, stop_at=5)
    reference, *_ = plain_loop(options, resume=checkpoint)
    for path, value in list(leaves(checkpoint["driver"])):
        for kind, bad in replacements(value):
            case = f"{name}: {'.'.join(map(str, path))} = {kind}"
            state = corrupted(checkpoint["driver"], path, bad)
            try:
                tail, *_ = plain_loop(options, resume={**checkpoint, "driver": state})
                # accepted: only an equivalent value may be (e.g. a float where an int was): an exact resume
                finite = all(math.isfinite(v) and v >= 0 for v in tail)
                probes.record("checkpoints", case, finite and tail == reference, "resumed differently")
            except CheckpointStateError as e:
                named = "scheduler.pt" in str(e)
                probes.record("checkpoints", case, named, str(e)[:200])
            except Exception as e:  # noqa: BLE001
                probes.record("checkpoints", case, False, f"{type(e).__name__}: {str(e)[:200]}")


def arguments(probes: Probes) -> None:
    cases = {
        "MLRSNetSchedule(hidden_size=2.5)": lambda: MLRSNetSchedule(hidden_size=2.5),
        "MLRSNetSchedule(num_stages=0)": lambda: MLRSNetSchedule(num_stages=0),
        "MLRSNetSchedule(num_stages=2.5)": lambda: MLRSNetSchedule(num_stages=2.5),
        "MLRSNetSchedule(gamma=None)": lambda: MLRSNetSchedule(gamma=None),
        "MLRSNetSchedule(gamma=-1)": lambda: MLRSNetSchedule(gamma=-1),
        "MLRSNetSchedule(gamma=nan)": lambda: MLRSNetSchedule(gamma=math.nan),
        "MLRSNetSchedule(stage_starts=[0.5])": lambda: MLRSNetSchedule(stage_starts=[0.5]),
        "MLRSNetSchedule(relative_max_scale=0)": lambda: MLRSNetSchedule(relative_max_scale=0),
        "MLRSNetSchedule(input_normalization='x')": lambda: MLRSNetSchedule(input_normalization="x"),
        "LRController(hidden_sizes=[])": lambda: LRController(hidden_sizes=[]),
        "LRController(min_lr=1, max_lr=0.1)": lambda: LRController(min_lr=1, max_lr=0.1),
        "MLRSNetConfig(gamma=-1)": lambda: MLRSNetConfig(output_dir="/tmp/x", gamma=-1),
        "MLRSNetConfig(learning_rate=inf)": lambda: MLRSNetConfig(output_dir="/tmp/x", learning_rate=math.inf),
        "MLRSNetConfig(schedule_num_stages=2.5)": lambda: MLRSNetConfig(output_dir="/tmp/x", schedule_num_stages=2.5),
        "MLRSNetConfig(meta_update_interval=0)": lambda: MLRSNetConfig(output_dir="/tmp/x", meta_update_interval=0),
        "from_pretrained('a'*5000)": lambda: MLRSNetSchedule.from_pretrained("a" * 5000),
        "from_pretrained('no/such/dir')": lambda: MLRSNetSchedule.from_pretrained("./no/such/dir"),
    }
    for case, attempt in cases.items():
        try:
            attempt()
            probes.record("arguments", case, False, "accepted")
        except (ValueError, TypeError, ScheduleFileError) as e:
            probes.record("arguments", case, len(str(e)) > 20 and len(str(e)) < 1200, f"bare: {e!r}")
        except Exception as e:  # noqa: BLE001
            probes.record("arguments", case, False, f"{type(e).__name__}: {str(e)[:200]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--flips", type=int, default=100, help="bit flips per file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    probes = Probes()
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        kills(probes, Path(tmp) / "kills")
        repos(probes, Path(tmp) / "repos", args.flips, random.Random(args.seed))
    checkpoints(probes)
    arguments(probes)
    total = {k: sum(v[k] for v in probes.results.values()) for k in ("held", "failed")}
    record = {
        "when": time.strftime("%Y-%m-%d %H:%M", time.gmtime(started)),
        "seconds": round(time.time() - started),
        "flips_per_file": args.flips,
        "seed": args.seed,
        "results": probes.results,
        "total": total,
        "failures": probes.failures,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hostile_probes.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        f"# Hostile-input probes ({record['when']} UTC, {record['seconds']} s, CPU; `benchmarks/hostile_probes.py`)",
        "",
        "| family | held | failed |",
        "|---|---|---|",
        *(f"| {family} | {c['held']} | {c['failed']} |" for family, c in probes.results.items()),
        f"| **all** | **{total['held']}** | **{total['failed']}** |",
        "",
        *(["Failures:", "", *(f"- {f}" for f in probes.failures)] if probes.failures else ["No failures."]),
    ]
    (args.out / "hostile_probes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
