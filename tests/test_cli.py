import json
import subprocess
import sys
from importlib.metadata import entry_points

import pytest
import torch
from conftest import CHECKPOINTS, REPO, SHARED
from PIL import Image

from mlrsnet_hf import LRController, MLRSNetSchedule
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
    assert "results (test): accuracy=0.9236" in info and "license_note" not in info

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


@pytest.mark.slow
def test_demo_reduced_budget(tmp_path):
    """The main job's pieces on a reduced budget: schedule repo, transfers, baselines, table and plots."""
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "demo.py"), "--output_dir", str(tmp_path), "--steps", "30",
         "--text_steps", "10", "--quick"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    schedule = MLRSNetSchedule.from_pretrained(tmp_path / "schedule")
    assert schedule.meta_training["dataset"] == "sklearn/digits" and schedule.meta_training["max_steps"] == 30
    results = json.loads((tmp_path / "results.json").read_text())
    tasks = {"digits-cnn (meta-train task)", "digits-mlp (architecture transfer)"}
    assert tasks <= set(results)
    for name in tasks:
        runs = results[name]["runs"]
        assert {"constant (best lr 0.1)", "cosine (best lr 0.1)"} <= set(runs)
        assert all(0 <= r["final"] <= 1 for r in runs.values())
    baseline = results["digits-mlp (architecture transfer)"]["runs"]["cosine (best lr 0.1)"]
    assert 0 <= baseline["validation"] <= 1 and baseline["lr"] == 0.1 and not baseline["interior"]  # a 1-point grid
    assert len(baseline["lrs"]) == 30 and baseline["lrs"][0] == pytest.approx(0.1) and baseline["lrs"][-1] < 0.01
    assert "MLR-SNet (transferred)" in results["digits-mlp (architecture transfer)"]["runs"]
    transferred = results["digits-mlp (architecture transfer)"]["runs"]["MLR-SNet (transferred)"]
    assert len(transferred["lrs"]) == 30 and len(set(transferred["lrs"])) > 1
    if (SHARED / "data" / "ptb" / "ptb.valid.txt").is_file():
        assert results["ptb-lstm (modality transfer)"]["metric"] == "perplexity"
    table = (tmp_path / "results.md").read_text()
    assert "| digits-mlp (architecture transfer) | MLR-SNet (transferred) |" in table
    assert (
        "the best metric on the validation split" in table
        and "| digits-cnn (meta-train task) | constant | 0.1 |" in table
    )
    assert (tmp_path / "results.png").is_file()
    if (SHARED / "official" / "mlr_snet_1.pth").is_file():
        assert MLRSNetSchedule.from_pretrained(tmp_path / "official-schedule").num_stages == 3
    # It talks (issue 36): run k of N with the time left, a line per phase, a verdict per task; results written
    # as they arrive (one record per run), and a rerun resumes instead of training again.
    n = 9 if "ptb-lstm (modality transfer)" in results else 6
    assert f"run {n} of {n} (" in out.stderr and "== 3. tuned baselines on the image tasks done: 4 runs" in out.stderr
    assert (
        results["digits-mlp (architecture transfer)"]["verdict"].startswith(
            "digits-mlp (architecture transfer): MLR-SNet (transferred) "
        )
        and "(1 run) vs " in results["digits-mlp (architecture transfer)"]["verdict"]
    )
    assert "Verdicts" in table and table.count("(a grid of 1 run)") == len(results) and "_Measured " in table
    assert len(list((tmp_path / "runs" / "records").glob("*/*.json"))) == n  # one directory per budget and seed
    again = subprocess.run(
        [sys.executable, str(REPO / "examples" / "demo.py"), "--output_dir", str(tmp_path), "--steps", "30",
         "--text_steps", "10", "--quick"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert again.returncode == 0 and "runs already done (resumed)" in again.stderr and "run 1 of" not in again.stderr
    assert json.loads((tmp_path / "results.json").read_text()) == results


def test_plot_an_lr_controller_in_the_range_of_its_training_losses(tmp_path, capsys):
    from mlrsnet_hf import LRController
    from mlrsnet_hf.lr_controller.plotting import controller_loss_curve

    run = {"episode_steps": 50, "initial_lrs": [1e-3, 1e-2], "train_loss_range": [9.2, 7.1]}
    LRController(decision_interval=10, training_run=run).save_pretrained(tmp_path / "c")
    assert main(["plot", str(tmp_path / "c"), "--out", str(tmp_path / "c.png")]) == 0
    assert f"wrote {tmp_path / 'c.png'}: 50 steps" in capsys.readouterr().out
    with Image.open(tmp_path / "c.png") as img:
        assert img.format == "PNG"
    losses = controller_loss_curve(LRController.from_pretrained(tmp_path / "c"), 50)
    assert losses[0] == pytest.approx(9.2) and losses[-1] == pytest.approx(
        7.1, abs=0.01
    )  # text-LM range, not 2.3 -> 0
    # --base-lr is the controller's initial LR (decisions change it by at most 5 %); --num-classes means nothing to it.
    assert main(["plot", str(tmp_path / "c"), "--out", str(tmp_path / "d.png"), "--base-lr", "0.05"]) == 0
    first = float(capsys.readouterr().out.split("LR from ")[1].split()[0])
    assert 0.05 / 1.06 < first < 0.05 * 1.06
    assert main(["plot", str(tmp_path / "c"), "--out", str(tmp_path / "e.png"), "--num-classes", "10"]) == 1
    assert "--num-classes is for an MLR-SNet schedule" in capsys.readouterr().err


def test_plot_base_lr_only_where_the_gamma_rule_uses_it(tmp_path, capsys):
    MLRSNetSchedule(gamma=0.5).save_pretrained(tmp_path / "fixed")
    assert main(["plot", str(tmp_path / "fixed"), "--out", str(tmp_path / "a.png"), "--base-lr", "0.1"]) == 1
    err = capsys.readouterr().err
    assert "--base-lr is used only by gamma='relative'" in err and "0.5" in err
    assert not (tmp_path / "a.png").exists()
    MLRSNetSchedule(gamma="relative", relative_max_scale=2.0).save_pretrained(tmp_path / "rel")
    assert main(["plot", str(tmp_path / "rel"), "--out", str(tmp_path / "b.png"), "--base-lr", "0.1"]) == 0
    out = capsys.readouterr().out
    assert float(out.split("LR from ")[1].split()[0]) == pytest.approx(0.1)  # the first step uses learning_rate
    assert float(out.split("max ")[1].rstrip(")\n")) <= 0.2 + 1e-9


def test_plot_out_without_extension_reports_the_file_written(tmp_path, capsys):
    MLRSNetSchedule(gamma=0.5).save_pretrained(tmp_path / "s")
    assert main(["plot", str(tmp_path / "s"), "--out", str(tmp_path / "noext")]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'noext.png'}: ")
    assert (tmp_path / "noext.png").is_file() and not (tmp_path / "noext").exists()


def modules_after(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; what it printed last (JSON)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


HEAVY = ("torch", "transformers", "transformers.trainer", "datasets", "matplotlib")


def test_help_imports_neither_torch_nor_the_trainer():
    found = modules_after(
        "import contextlib, io, json, sys\n"
        "import mlrsnet_hf.cli\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    mlrsnet_hf.cli.main(['--help'])\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    assert found == []  # `mlrsnet --help` took 11 s importing them (now ~0.1 s)


def test_a_training_commands_help_imports_neither_the_trainer_nor_the_data_nor_the_models():
    found = modules_after(
        "import contextlib, io, json, sys\n"
        "import mlrsnet_hf.cli\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    assert mlrsnet_hf.cli.main(['meta-train', '--help']) == 0\n"
        "    assert mlrsnet_hf.cli.main(['transfer', '--task', 'ptb-lstm2', '--help']) == 0\n"
        "heavy = ('transformers.trainer', 'datasets', 'mlrsnet_hf.experiments.tasks', 'mlrsnet_hf.experiments.data')\n"
        "print(json.dumps(['--task TASK' in out.getvalue(), [m for m in heavy if m in sys.modules]]))"
    )
    assert found == [True, []]  # 8.5 s when it imported the presets' runs (now ~3 s: TrainingArguments, torch)


@pytest.mark.slow  # a fresh interpreter importing torch: several seconds on a busy machine
def test_info_and_plot_import_no_trainer_and_the_package_still_exports_everything(tmp_path):
    found = modules_after(
        "import contextlib, io, json, sys\n"
        "from mlrsnet_hf.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['info', 'mlrsnet_hf/digits-cnn-600']) == 0\n"
        f"    assert main(['plot', 'mlrsnet_hf/ptb-lstm-200', '--out', {str(tmp_path / 'p.png')!r}]) == 0\n"
        "trainer = 'transformers.trainer' in sys.modules\n"
        "from mlrsnet_hf.families import registered_families\n"
        "from mlrsnet_hf import MLRSNetTrainer, LRController, __all__\n"
        "import mlrsnet_hf\n"
        "print(json.dumps([trainer, sorted(registered_families()), all(hasattr(mlrsnet_hf, n) for n in __all__)]))"
    )
    assert found == [False, ["lr_controller", "mlrsnet_schedule"], True]


@pytest.mark.slow  # a fresh interpreter importing torch
def test_the_registry_has_both_builtin_families_whatever_was_imported_first():
    found = modules_after(
        "import json\n"
        "from mlrsnet_hf.hub import registered_schedule_types\n"
        "print(json.dumps(sorted(registered_schedule_types())))"
    )
    assert found == ["lr_controller", "mlrsnet_schedule"]


def test_training_command_help_groups_task_schedule_and_training_flags(capsys):
    assert main(["transfer", "--help"]) == 0
    out = capsys.readouterr().out
    groups = [line for line in out.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert groups[:3] == ["options:", "task:", "schedule:"] and groups[3].startswith("training (TrainingArguments)")
    assert out.index("--task") < out.index("--gamma") < out.index("  --schedule ") < out.index("--learning_rate")
    assert out.startswith("usage: mlrsnet transfer --task TASK --schedule SCHEDULE --output_dir DIR [FLAG ...]\n")
    for ignored in ("--lr_scheduler_type", "--warmup_steps", "--warmup_ratio"):
        assert ignored not in out
    assert "--dataloader_num_workers" not in out and len(out.splitlines()) < 260  # was 720 lines
    assert main(["transfer", "--help-all"]) == 0
    every = capsys.readouterr().out
    assert "--dataloader_num_workers" in every and "--lr_scheduler_type" not in every


def test_plot_errors_are_one_line(tmp_path, capsys):
    repo = tmp_path / "s"
    MLRSNetSchedule(gamma=1.0).save_pretrained(repo)
    assert main(["plot", str(repo), "--out", str(tmp_path / "x.png"), "--losses", str(tmp_path / "none.txt")]) == 1
    assert capsys.readouterr().err == f"mlrsnet: error: --losses {tmp_path / 'none.txt'}: no such file.\n"
    out = tmp_path / "no" / "x.png"
    assert main(["plot", str(repo), "--out", str(out)]) == 1
    assert capsys.readouterr().err == f"mlrsnet: error: --out {out}: the folder {out.parent} does not exist.\n"
    assert main(["info", "myschedule"]) == 1  # no Hub lookup: one line at once (was 23 s and 55 lines)
    err = capsys.readouterr().err
    assert (
        err.startswith("mlrsnet: error: 'myschedule' is not a local directory, not a zoo schedule")
        and err.count("\n") == 1
    )


def test_small_usage_errors_are_said_at_once_and_name_the_way_out(tmp_path, capsys):
    assert main(["transfer"]) == 2
    assert "--task, --schedule and --output_dir are required" in capsys.readouterr().err
    # a wrong task before the Trainer, the data and the models are imported (it took 9 s)
    found = modules_after(
        "import contextlib, io, json, sys\n"
        "import mlrsnet_hf.cli\n"
        "err = io.StringIO()\n"
        "with contextlib.redirect_stderr(err):\n"
        "    code = mlrsnet_hf.cli.main(['transfer', '--task', 'imagenet', '--output_dir', 'x'])\n"
        "print(json.dumps([code, err.getvalue(), 'transformers.trainer' in sys.modules]))"
    )
    assert found[0] == 1 and found[1].startswith("mlrsnet: error: Unknown task 'imagenet': expected one of cifar10")
    assert found[2] is False
    assert main(["plot", "mlrsnet_hf/ptb-gpt2-200", "--out", str(tmp_path / "p"), "--num-classes", "-5"]) == 1
    assert (
        capsys.readouterr().err
        == "mlrsnet: error: --num-classes must be at least 2 (the number of classes C), got -5.\n"
    )


def test_plot_draws_a_schedule_under_another_gamma(tmp_path, capsys):
    """``--gamma relative --base-lr``: what the default run with AdamW gets, for a schedule saved with a fixed gamma."""
    out = tmp_path / "rel"
    assert (
        main(["plot", "mlrsnet_hf/digits-cnn-600", "--out", str(out), "--gamma", "relative", "--base-lr", "1e-3"]) == 0
    )
    assert capsys.readouterr().out.startswith(f"wrote {out}.png: 600 steps, LR from 0.001 to ")
    assert main(["plot", "mlrsnet_hf/digits-cnn-600", "--out", str(out), "--base-lr", "1e-3"]) == 1
    assert "(--gamma relative --base-lr LR: what a run" in capsys.readouterr().err
    controller = tmp_path / "controller"
    LRController().save_pretrained(controller)
    assert main(["plot", str(controller), "--out", str(out), "--gamma", "relative"]) == 1
    assert capsys.readouterr().err.startswith("mlrsnet: error: --gamma: Unknown schedule options ['gamma']")
