"""Smoke test: the speed benchmark's --quick mode runs and records its figures."""

import json
import subprocess
import sys

from conftest import REPO


def test_speed_benchmark_quick(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "speed.py"), "--quick", "--device", "cpu", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "speed_cpu_quick.json").read_text())
    assert set(results["train"]) == {"builtin", "transfer", "meta-10", "meta-100", "meta-300", "meta-1"}
    assert all(v["steps_per_s"] > 0 and v["peak_mb"] > 0 for v in results["train"].values())
    assert set(results["meta_step"]) == {
        f"{m}/{k}" for m in ("cnn", "wide_mlp") for k in ("plain", "ours", "released")
    }
    ratios = results["ratios"]
    assert ratios["cnn_transfer_overhead_per_step"] < 0.1  # the LSTM step is tiny next to a training step
    assert "| transfer |" in (tmp_path / "speed_cpu_quick.md").read_text()
