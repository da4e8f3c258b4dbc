"""Shared fixtures: paths to ../shared, and an independent reference forward of the MLR-SNet cell."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers side by side: one torch thread each
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MLRSNET_SHARED", REPO.parent / "shared"))
OFFICIAL = SHARED / "official"
CHECKPOINTS = ("mlr_snet_1.pth", "mlr_snet_100.pth", "mlr_snet_200.pth")
TWO_PROCESSES = ("--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                 "--dynamo_backend", "no")  # fmt: skip


def free_port() -> int:
    """A TCP port the OS reports free now: each launch its own rendezvous (a fixed port may still be held)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_launch(
    script: str,
    *args: str,
    launch: Sequence[str] = TWO_PROCESSES,
    timeout: int = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """``accelerate launch <launch> tests/scripts/<script> <args>``: one thread per process, on a free port (so that
    test runs side by side do not meet on one rendezvous); ``env`` adds to the environment."""
    accelerate = Path(sys.executable).with_name("accelerate")
    command = [
        str(accelerate),
        "launch",
        *launch,
        "--main_process_port",
        str(free_port()),
        str(REPO / "tests" / "scripts" / script),
        *args,
    ]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )  # fmt: skip


def hf_cache_snapshot(
    repo: Path, cache: Path, repo_id: str, commit: str = "0123456789abcdef0123456789abcdef01234567"
) -> str:
    """Lay ``repo``'s files out as `hf download <repo_id>` leaves them in the HF cache ``cache``; returns the commit."""
    cached = cache / f"models--{repo_id.replace('/', '--')}"
    (cached / "refs").mkdir(parents=True)
    (cached / "refs" / "main").write_text(commit)
    snapshot = cached / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in repo.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    return commit


@pytest.fixture
def schedule_dir(tmp_path: Path) -> Path:
    """A three-stage schedule repo (fixed gamma 0.4) with perturbed, seeded weights."""
    from mlrsnet_hf import MLRSNetSchedule

    torch.manual_seed(1)
    schedule = MLRSNetSchedule(hidden_size=16, num_stages=3, gamma=0.4)
    with torch.no_grad():
        for p in schedule.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    schedule.save_pretrained(tmp_path / "schedule")
    return tmp_path / "schedule"


@pytest.fixture
def official_dir() -> Path:
    if not all((OFFICIAL / name).is_file() for name in CHECKPOINTS):
        pytest.skip(
            f"released MLR-SNet checkpoints not found in {OFFICIAL} (set MLRSNET_SHARED to the shared/ folder)"
        )
    return OFFICIAL


@pytest.fixture
def released_losses(official_dir: Path) -> list[float]:
    """400 real losses: the released ResNet-18/CIFAR-10 run's per-epoch train then test loss."""
    curves = json.loads((official_dir / "meta_train_curves.json").read_text())["resnet18_cifar10"]
    return curves["train_loss"] + curves["test_loss"]


def reference_unroll(weights: list[dict[str, torch.Tensor]], head: dict[str, torch.Tensor], losses, layout="ifgo"):
    """p_t for a loss sequence, in float64, written from the documented formulas (not the library's code).

    ``weights[k]`` holds cell k's ``i0w, i0b, i2w, i2b, h0w, h0b, h2w, h2b`` (fc_i2h.0/.2, fc_h2h.0/.2);
    ``head`` holds ``w, b``.
    """
    d = torch.float64
    hidden = head["w"].shape[1]
    h = [torch.zeros(hidden, dtype=d) for _ in weights]
    c = [torch.zeros(hidden, dtype=d) for _ in weights]
    out = []
    for loss in losses:
        x = torch.tensor([float(loss)], dtype=d)
        for k, w in enumerate(weights):
            w = {n: t.to(d) for n, t in w.items()}
            z = (
                w["i2w"] @ torch.relu(w["i0w"] @ x + w["i0b"])
                + w["i2b"]
                + w["h2w"] @ torch.relu(w["h0w"] @ h[k] + w["h0b"])
                + w["h2b"]
            )
            if layout == "ifgo":
                i, f, g, o = z.split(hidden)
                f = torch.sigmoid(f)
            else:
                i, f, o, g = z.split(hidden)
                f = torch.sigmoid(f - 1)
            c[k] = f * c[k] + torch.sigmoid(i) * torch.tanh(g)
            h[k] = torch.sigmoid(o) * torch.tanh(c[k])
            x = h[k]
        out.append(torch.sigmoid(head["w"].to(d) @ x + head["b"].to(d)).item())
    return torch.tensor(out, dtype=d)


def weights_of(net) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Unpack an MLRSNet's parameters into the reference's plain-tensor form."""
    cells = [
        {
            "i0w": cell.fc_i2h[0].weight.detach(),
            "i0b": cell.fc_i2h[0].bias.detach(),
            "i2w": cell.fc_i2h[2].weight.detach(),
            "i2b": cell.fc_i2h[2].bias.detach(),
            "h0w": cell.fc_h2h[0].weight.detach(),
            "h0b": cell.fc_h2h[0].bias.detach(),
            "h2w": cell.fc_h2h[2].weight.detach(),
            "h2b": cell.fc_h2h[2].bias.detach(),
        }
        for cell in net.cells
    ]
    return cells, {"w": net.head.weight.detach(), "b": net.head.bias.detach()}
