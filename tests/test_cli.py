import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import torch
from conftest import CHECKPOINTS, REPO
from PIL import Image

from mlrsnet_hf import MLRSNetSchedule
from mlrsnet_hf.cli import main, read_losses


def test_console_script_is_installed():
    (script,) = entry_points(group="console_scripts", name="mlrsnet")
    assert script.value == "mlrsnet_hf.cli:main"


def test_convert_info_plot(official_dir, tmp_path, capsys):
    out = tmp_path / "official"
    assert main(["convert-official", *(str(official_dir / n) for n in CHECKPOINTS), "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file()
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "stages: 3" in info and "gamma rule: auto" in info and "dataset: uoft-cs/cifar10" in info

    losses = tmp_path / "losses.txt"
    losses.write_text("\n".join(str(x) for x in torch.linspace(2.3, 0.1, 90).tolist()))
    png = tmp_path / "lr.png"
    assert main(["plot", str(out), "--out", str(png), "--losses", str(losses), "--num-classes", "10"]) == 0
    assert "90 steps" in capsys.readouterr().out
    with Image.open(png) as img:
        assert img.format == "PNG"


def test_plot_default_curve_and_json_losses(tmp_path, capsys):
    repo = tmp_path / "s"
    MLRSNetSchedule(gamma=0.5).save_pretrained(repo)
    assert main(["plot", str(repo), "--out", str(tmp_path / "a.png")]) == 0
    assert "600 steps" in capsys.readouterr().out
    (tmp_path / "l.json").write_text(json.dumps([2.0, 1.0, 0.5]))
    assert read_losses(tmp_path / "l.json") == [2.0, 1.0, 0.5]


def test_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mlrsnet: error: ") and "config.json is missing" in err
    bad = tmp_path / "bad.txt"
    bad.write_text("1.0\nabc\n")
    MLRSNetSchedule(gamma=1.0).save_pretrained(tmp_path / "s")
    assert main(["plot", str(tmp_path / "s"), "--out", str(tmp_path / "x.png"), "--losses", str(bad)]) == 1
    assert "expected a JSON list of numbers" in capsys.readouterr().err


def test_demo_without_released_checkpoints(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "demo.py"), "--output_dir", str(tmp_path), "--official_dir", str(tmp_path / "none")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "building a fresh schedule" in out.stderr
    repo = Path(tmp_path / "schedule")
    assert {p.name for p in repo.iterdir()} == {"config.json", "model.safetensors", "README.md", "lr_response.png"}
    assert MLRSNetSchedule.from_pretrained(repo).num_stages == 3


def test_demo_with_released_checkpoints(official_dir, tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "demo.py"), "--output_dir", str(tmp_path), "--official_dir", str(official_dir)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Converting the released checkpoints" in out.stderr
    assert (tmp_path / "lr_response_cifar10_curve.png").is_file()
    assert MLRSNetSchedule.from_pretrained(tmp_path / "schedule").meta_training["model"] == "ResNet-18"
