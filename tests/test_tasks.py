"""The examples and `mlrsnet meta-train` / `transfer` on tiny data, offline (smoke tests that check the outputs)."""

import json
import math
import subprocess
import sys

import pytest
from conftest import REPO, SHARED
from hub_data import write_hub_layout

from mlrsnet_hf import LRController, MLRSNetSchedule
from mlrsnet_hf.cli import main
from mlrsnet_hf.experiments.tasks import CURVE_DEFAULTS, PRESETS, parse

QUICK = ["--max_steps", "4", "--logging_steps", "1", "--use_cpu", "--disable_tqdm", "true", "--save_strategy", "no"]


def test_presets_are_the_paper_recipes():
    _, args = parse(["--task", "cifar10-resnet18", "--output_dir", "o"], meta_train=True)
    assert (args.per_device_train_batch_size, args.weight_decay, args.num_train_epochs) == (128, 5e-4, 200)
    assert args.optim.value == "sgd" and args.meta_train
    _, args = parse(["--task", "ptb-lstm3", "--output_dir", "o", "--weight_decay", "0.1"], meta_train=False)
    assert args.per_device_train_batch_size == 32 and args.max_grad_norm == 0.25 and args.meta_update_interval == 100
    assert args.weight_decay == 0.1  # a flag given on the command line wins over the preset
    assert args.input_normalization == "log_num_classes" and args.gamma == 40.0
    assert set(PRESETS) >= {"cifar10-resnet18", "cifar100-wrn28-10", "ptb-lstm2", "ptb-lstm3"}


def test_preset_runs_log_the_loss_100_times_and_evaluate_10_times():
    _, preset = parse(["--task", "cifar10-resnet18", "--output_dir", "o"], meta_train=False)
    assert (preset.logging_steps, preset.eval_strategy, preset.eval_steps) == (0.01, "steps", 0.1)
    assert CURVE_DEFAULTS == {"logging_steps": 0.01, "eval_strategy": "steps", "eval_steps": 0.1}
    _, given = parse(["--task", "ptb-lstm2", "--output_dir", "o", "--logging_steps", "5"], meta_train=True)
    assert given.logging_steps == 5  # a flag given wins
    # (the 200-step run it gives: tests/test_plotting.py, slow)


@pytest.mark.slow
def test_meta_train_example_then_transfer_to_text(tmp_path):
    data = write_hub_layout(tmp_path / "cifar10", "cifar10", n_train=300, n_test=40)
    out = tmp_path / "schedule"
    run = subprocess.run(
        [sys.executable, str(REPO / "examples" / "meta_train.py"), "--task", "cifar10-resnet18", "--dataset",
         str(data), "--output_dir", str(out), "--per_device_train_batch_size", "16", "--meta_size", "40",
         "--meta_update_interval", "2", "--meta_horizon", "2", "--record_dataset", "uoft-cs/cifar10", *QUICK],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    schedule = MLRSNetSchedule.from_pretrained(out)  # the output directory is a schedule repo
    assert schedule.meta_training["task"] == "cifar10-resnet18"
    assert schedule.meta_training["dataset"] == "uoft-cs/cifar10" and schedule.meta_training["num_classes"] == 10
    # The default artifact is the trajectory: the networks after steps 1, 2 and 4 of the 4-step run, in thirds.
    assert schedule.num_stages == 3 and schedule.meta_training["snapshots"]["steps"] == [1, 2, 4]
    assert schedule.meta_training["meta_horizon"] == 2 and schedule.meta_training["eval_split"] == "test"
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["eval_accuracy"] <= 1 and len(metrics["learning_rates"]) == 4
    assert len(set(metrics["learning_rates"])) > 1
    printed = json.loads(run.stdout[run.stdout.rindex("{\n") :])  # the example prints its final metrics
    assert printed["eval_accuracy"] == metrics["eval_accuracy"]
    for name in ("training_curves.png", "lr_used.png", "README.md", "model/config.json"):
        assert (out / name).is_file(), name
    assert not (out / "lr_curve.png").exists()  # it was lr_used.png byte for byte

    ptb = SHARED / "data" / "ptb"
    if not (ptb / "ptb.valid.txt").is_file():
        pytest.skip(f"Penn Treebank text not found in {ptb}")
    text_out = tmp_path / "ptb"
    code = main(
        ["transfer", "--task", "ptb-lstm2", "--schedule", str(out), "--dataset", str(ptb), "--train_split",
         "validation[:90%]", "--meta_split", "validation[90%:]", "--output_dir", str(text_out),
         "--max_eval_samples", "200", *QUICK]
    )  # fmt: skip
    assert code == 0
    metrics = json.loads((text_out / "metrics.json").read_text())
    assert metrics["eval_perplexity"] > 1 and len(set(metrics["learning_rates"])) > 1
    assert all(0 < lr < 40 for lr in metrics["learning_rates"])  # gamma 40 (the paper's text setting) times p
    assert (text_out / "lr_curve.png").is_file()  # a transfer writes no schedule repo: its LR picture is this one


def test_meta_train_preset_in_process_writes_a_schedule_repo(tmp_path, capsys):
    """`mlrsnet meta-train` on a preset, in-process and tiny: the fast twin of the end-to-end runs (slow) here."""
    data = write_hub_layout(tmp_path / "cifar10", "cifar10", n_train=60, n_test=16)
    out = tmp_path / "schedule"
    code = main(
        ["meta-train", "--task", "cifar10-resnet18", "--dataset", str(data), "--output_dir", str(out),
         "--per_device_train_batch_size", "4", "--meta_size", "20", "--meta_update_interval", "2", *QUICK]
    )  # fmt: skip
    assert code == 0
    schedule = MLRSNetSchedule.from_pretrained(out)
    assert schedule.meta_training["task"] == "cifar10-resnet18" and schedule.meta_training["num_classes"] == 10
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["eval_accuracy"] <= 1 and len(metrics["learning_rates"]) == 4
    assert (out / "model" / "config.json").is_file()
    assert (out / "training_curves.png").is_file() and (out / "lr_used.png").is_file()
    assert not (out / "lr_curve.png").exists()  # it was lr_used.png byte for byte


def test_a_preset_run_resumes_from_the_checkpoint_it_is_given(tmp_path, monkeypatch):
    """``--resume_from_checkpoint`` continues the run exactly (it was accepted and ignored: the run restarted)."""
    from mlrsnet_hf import MLRSNetTrainer

    ptb = SHARED / "data" / "ptb"
    if not (ptb / "ptb.valid.txt").is_file():
        pytest.skip(f"Penn Treebank text not found in {ptb}")
    steps = []
    real = MLRSNetTrainer.training_step
    monkeypatch.setattr(MLRSNetTrainer, "training_step", lambda self, *a, **k: steps.append(1) or real(self, *a, **k))
    argv = ["transfer", "--task", "ptb-lstm2", "--schedule", "mlrsnet_hf/ptb-lstm-200", "--dataset", str(ptb),
            "--train_split", "validation[:90%]", "--meta_split", "validation[90%:]", "--max_eval_samples", "20",
            "--eval_strategy", "no", *QUICK[:-2], "--save_strategy", "steps", "--save_steps", "2"]  # fmt: skip
    assert main([*argv, "--output_dir", str(tmp_path / "full")]) == 0
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())["learning_rates"]
    steps.clear()
    resumed_dir = tmp_path / "resumed"
    checkpoint = str(tmp_path / "full" / "checkpoint-2")
    assert main([*argv, "--output_dir", str(resumed_dir), "--resume_from_checkpoint", checkpoint]) == 0
    assert len(steps) == 2  # steps 3 and 4 only
    # The LRs of the uninterrupted run's steps 3 and 4, from the schedule's restored state (the history holds the
    # steps this process ran). Not bit for bit: the LSTM LM's state carried between batches is not in a checkpoint,
    # so the losses the schedule reads differ a little; a restart would repeat steps 1 and 2's LRs instead.
    resumed = json.loads((resumed_dir / "metrics.json").read_text())["learning_rates"]
    assert resumed == pytest.approx(full[2:], rel=2e-3) and resumed != pytest.approx(full[:2], rel=2e-3)


def test_a_ptb_transfer_trains_on_all_of_a_split_the_meta_split_would_overlap(tmp_path, capsys):
    """A transfer reads no meta split, so PTB's default one (validation) may overlap the training text; meta-training
    still refuses the overlap."""
    ptb = SHARED / "data" / "ptb"
    if not (ptb / "ptb.valid.txt").is_file():
        pytest.skip(f"Penn Treebank text not found in {ptb}")
    argv = ["--task", "ptb-lstm2", "--dataset", str(ptb), "--train_split", "validation", "--max_eval_samples", "20",
            "--eval_strategy", "no", *QUICK]  # fmt: skip
    assert main(["transfer", *argv, "--schedule", "mlrsnet_hf/ptb-lstm-200", "--output_dir", str(tmp_path / "t")]) == 0
    assert len(json.loads((tmp_path / "t" / "metrics.json").read_text())["learning_rates"]) == 4
    capsys.readouterr()
    assert main(["meta-train", *argv, "--output_dir", str(tmp_path / "m")]) == 1
    assert "The train and meta splits overlap" in capsys.readouterr().err


def test_cli_errors(tmp_path, capsys):
    assert main(["transfer", "--task", "cifar10-resnet18", "--output_dir", str(tmp_path)]) == 1
    assert "transfer needs --schedule" in capsys.readouterr().err
    assert main(["meta-train", "--task", "imagenet", "--output_dir", str(tmp_path)]) == 1
    assert "Unknown task 'imagenet'" in capsys.readouterr().err
    assert main(["meta-train", "--help"]) == 0
    assert "cifar10-resnet18" in capsys.readouterr().out
    ptb = ["--task", "ptb-lstm2", "--output_dir", str(tmp_path)]
    for argv in (["meta-train", *ptb], ["meta-train", "--task", "cifar10-resnet18", "--output_dir", str(tmp_path)]):
        assert (
            main([*argv, "--dataset", "./nope"]) == 1
        )  # was 31 lines ending in "Repo id must use alphanumeric chars"
        assert capsys.readouterr().err == (
            "mlrsnet: error: --dataset ./nope: no such directory (a local path, so no Hub dataset was looked up).\n"
        )


@pytest.mark.slow
def test_train_controller_then_transfer_it(tmp_path, capsys):
    """`mlrsnet train-controller` writes a controller repo; `mlrsnet transfer` trains with it (Adam, from 1e-3)."""
    data = write_hub_layout(tmp_path / "cifar10", "cifar10", n_train=200, n_test=40)
    controller_dir = tmp_path / "controller"
    code = main(
        ["train-controller", "--task", "cifar10-resnet18", "--dataset", str(data), "--meta_size", "40",
         "--output_dir", str(controller_dir), "--episodes", "1", "--episode_steps", "4", "--decision_interval", "2",
         "--batch_size", "8", "--probe_size", "16", "--ppo_n_steps", "2", "--ppo_batch_size", "2"]
    )  # fmt: skip
    assert code == 0
    assert json.loads(capsys.readouterr().out)["episodes"] == 1
    controller = LRController.from_pretrained(controller_dir)
    assert controller.decision_interval == 2 and controller.probe_size == 16
    assert controller.training_run["task"] == "cifar10-resnet18" and controller.training_run["algorithm"] == "PPO"
    assert main(["info", str(controller_dir)]) == 0
    assert "LR controller (PPO)" in capsys.readouterr().out

    out = tmp_path / "transfer"
    code = main(
        ["transfer", "--task", "cifar10-resnet18", "--schedule", str(controller_dir), "--dataset", str(data),
         "--meta_size", "40", "--optim", "adamw_torch", "--learning_rate", "1e-3", "--weight_decay", "0",
         "--per_device_train_batch_size", "8", "--output_dir", str(out), *QUICK]
    )  # fmt: skip
    assert code == 0
    lrs = json.loads((out / "metrics.json").read_text())["learning_rates"]
    assert len(lrs) == 4 and lrs[0] == lrs[1] and lrs[2] == lrs[3]  # one decision every 2 steps
    assert all(round(lr / 1e-3 / 1.05 ** round(math.log(lr / 1e-3, 1.05)), 9) == 1 for lr in lrs)
    # With the preset's SGD recipe, whose gamma is MLR-SNet's and not the user's, the controller runs as well; a
    # schedule option given on the command line is refused, named.
    sgd = ["transfer", "--task", "cifar10-resnet18", "--schedule", str(controller_dir), "--dataset", str(data),
           "--meta_size", "40", "--per_device_train_batch_size", "8", *QUICK]  # fmt: skip
    assert main([*sgd, "--output_dir", str(tmp_path / "sgd")]) == 0
    capsys.readouterr()
    assert main([*sgd, "--output_dir", str(tmp_path / "refused"), "--gamma", "0.1"]) == 1
    assert "takes no schedule options (got ['gamma'])" in capsys.readouterr().err


def test_cifar_c_data_one_corruption_clean_meta_and_test(tmp_path):
    from hub_data import write_cifar_c_layout

    from mlrsnet_hf.experiments.corrupted_data import load_corrupted_dataset

    corrupted = write_cifar_c_layout(tmp_path / "cifar10c", n=120)
    clean = write_hub_layout(tmp_path / "cifar10", "cifar10", n_train=300, n_test=20)
    splits, spec = load_corrupted_dataset(
        "cifar10c", "gaussian_noise", 5, str(corrupted), str(clean), meta_per_class=3
    )
    assert spec.num_classes == 10 and len(splits["train"]) == 120
    meta_labels = [splits["meta"][i]["labels"] for i in range(len(splits["meta"]))]
    assert sorted(meta_labels) == sorted(list(range(10)) * 3)  # 3 clean images per class
    assert len(splits["test"]) == 300 - 30  # the rest of the clean training set
    example = splits["train"][0]
    assert example["pixel_values"].shape == (3, 32, 32) and isinstance(example["labels"], int)
    with pytest.raises(ValueError, match=r"no images of corruption 'snow'.*'fog', 'gaussian_noise'"):
        load_corrupted_dataset("cifar10c", "snow", 5, str(corrupted), str(clean))
    with pytest.raises(ValueError, match="severity"):
        load_corrupted_dataset("cifar10c", "fog", 0, str(corrupted), str(clean))
    with pytest.raises(ValueError, match="is it a CIFAR-C copy"):
        load_corrupted_dataset("cifar10c", "fog", 5, str(clean), str(clean))


def test_robustness_preset_records_what_the_schedule_was_trained_on(tmp_path, capsys):
    from hub_data import write_cifar_c_layout

    corrupted = write_cifar_c_layout(tmp_path / "cifar10c", n=40)
    clean = write_hub_layout(tmp_path / "cifar10", "cifar10", n_train=60, n_test=10)
    out = tmp_path / "schedule"
    code = main(
        ["meta-train", "--task", "cifar10c-resnet18", "--dataset", str(corrupted), "--clean_dataset", str(clean),
         "--corruption", "fog", "--severity", "3", "--meta_per_class", "2", "--meta_batch_size", "4",
         "--output_dir", str(out), "--per_device_train_batch_size", "4", "--meta_update_interval", "2", *QUICK]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    record = MLRSNetSchedule.from_pretrained(out).meta_training
    assert (record["corruption"], record["severity"], record["meta_set_size"]) == ("fog", 3, 20)
    card = (out / "README.md").read_text()
    assert "corruption `fog` at severity 3" in card
    assert main(["meta-train", "--task", "cifar10c-resnet18", "--output_dir", str(out)]) == 1
    assert "pass --corruption" in capsys.readouterr().err


@pytest.mark.slow
def test_robustness_runner_writes_one_table_with_the_transfer_variant(tmp_path):
    from hub_data import write_cifar_c_layout

    corrupted = write_cifar_c_layout(tmp_path / "cifar10c", n=40)
    clean = write_hub_layout(tmp_path / "cifar10", "cifar10", n_train=60, n_test=10)
    command = [sys.executable, str(REPO / "examples" / "robustness_cifar_c.py"), "--transfer", "--corruptions", "fog",
               "--output_dir", str(tmp_path / "out"), "--dataset", str(corrupted), "--clean_dataset", str(clean),
               "--meta_per_class", "2", "--meta_batch_size", "4", "--per_device_train_batch_size", "4",
               "--meta_update_interval", "2", *QUICK]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    table = json.loads((tmp_path / "out" / "robustness.json").read_text())
    assert set(table) == {
        "MLR-SNet meta-trained",
        "SGD fixed",
        "SGD cosine",
        "MLR-SNet transferred from gaussian_noise",
    }
    assert set(table["MLR-SNet meta-trained"]["per_corruption"]) == {"gaussian_noise", "fog"}
    assert set(table["MLR-SNet transferred from gaussian_noise"]["per_corruption"]) == {"fog"}
    assert all(0 <= v["mean"] <= 1 for v in table.values())
