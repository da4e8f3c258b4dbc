"""Issue 14: what a new user meets on the command line and with the presets (each item reproduced, then fixed)."""

import math

import pytest
import torch
from test_trainer import config
from tiny import DigitsNet, digits

from mlrsnet_hf import MLRSNetSchedule, MLRSNetTrainer, ScheduleFileError
from mlrsnet_hf.experiments.data import load_ptb_lm
from mlrsnet_hf.experiments.metrics import perplexity_metrics
from mlrsnet_hf.experiments.tasks import parse


def test_an_adam_optimizer_on_a_preset_falls_back_to_relative_mode(tmp_path):
    _, sgd = parse(["--task", "ptb-lstm2", "--output_dir", str(tmp_path)], meta_train=False)
    assert sgd.gamma == 40.0  # the recipe's, for its optimizer
    _, adam = parse(["--task", "ptb-lstm2", "--optim", "adamw_torch", "--output_dir", str(tmp_path)], meta_train=False)
    assert adam.gamma is None  # -> gamma="relative" with a warning when the run starts, as the Python API does
    _, explicit = parse(
        ["--task", "ptb-lstm2", "--optim", "adamw_torch", "--gamma", "40", "--output_dir", str(tmp_path)], False
    )
    assert explicit.gamma == 40.0


def test_the_perplexity_of_a_diverged_run_is_inf_not_a_crash():
    from transformers import EvalPrediction

    compute, _ = perplexity_metrics()
    labels = torch.zeros(2, 3, dtype=torch.long)
    result = compute(EvalPrediction(predictions=torch.full((2, 1), 1e5).numpy(), label_ids=labels.numpy()))
    assert result["perplexity"] == math.inf and result["token_nll"] == pytest.approx(1e5 * 2 / 6)


@pytest.fixture
def ptb_dir(tmp_path):
    words = ["the", "cat", "sat", "on", "the", "mat", "and", "the", "dog", "ran"]
    for name, n in (("ptb.valid.txt", 200), ("ptb.test.txt", 50)):
        (tmp_path / name).write_text("\n".join(" ".join(words[(i + j) % 10] for j in range(8)) for i in range(n)))
    return tmp_path


def test_overlapping_ptb_splits_are_refused_and_slices_carve_them_apart(ptb_dir):
    with pytest.raises(ValueError, match="train and meta splits overlap"):
        load_ptb_lm(str(ptb_dir), batch_size=2, train_split="validation", meta_split="validation")
    with pytest.raises(ValueError, match="meta and test splits overlap"):
        load_ptb_lm(str(ptb_dir), batch_size=2, train_split="validation", meta_split="test")
    chunks, _ = load_ptb_lm(
        str(ptb_dir), batch_size=2, seq_len=5, train_split="validation[:90%]", meta_split="validation[90%:]"
    )
    train_tokens, meta_tokens = chunks["train"].streams.numel(), chunks["meta"].streams.numel()
    assert train_tokens == pytest.approx(9 * meta_tokens, rel=0.1)  # 180 and 20 sentences of 9 tokens


def test_a_mistyped_local_path_fails_at_once_without_a_hub_lookup(tmp_path, monkeypatch):
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was asked")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    monkeypatch.setattr("mlrsnet_hf.repo_files.hf_hub_download", no_hub)
    MLRSNetSchedule(hidden_size=4).save_pretrained(tmp_path / "schedule")
    with pytest.raises(ScheduleFileError, match="^No such directory: "):
        MLRSNetSchedule.from_pretrained(str(tmp_path / "schedul"))
    config = tmp_path / "schedule" / "config.json"
    with pytest.raises(ScheduleFileError, match=f"^{config} is a file: a schedule is a directory holding config.json"):
        MLRSNetSchedule.from_pretrained(str(config))
    from mlrsnet_hf.experiments.data import load_raw

    with pytest.raises(ValueError, match=f"^--dataset {config} is a file: pass the directory"):
        load_raw(str(config))


def test_a_meta_training_run_without_meta_updates_says_so(tmp_path, caplog):
    data = digits(200)
    args = config(tmp_path, meta_train=True, meta_update_interval=10, max_steps=4, snapshot_fractions=[])
    trainer = MLRSNetTrainer(model=DigitsNet(), args=args, train_dataset=data[:150], meta_dataset=data[150:])
    trainer.train()
    with caplog.at_level("WARNING"):
        trainer.save_schedule(tmp_path / "schedule")
    assert "made no meta update" in caplog.text
    assert MLRSNetSchedule.from_pretrained(tmp_path / "schedule").meta_training["meta_updates"] == 0
    assert "| meta_updates | 0 |" in (tmp_path / "schedule" / "README.md").read_text()


def test_command_help_lists_every_training_flag_and_no_arguments_is_an_error(capsys):
    from mlrsnet_hf.cli import main

    assert main(["meta-train", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--meta_update_interval", "--per_device_train_batch_size", "--corruption", "--gamma", "--task"):
        assert flag in out
    assert "cifar10c-resnet18" in out
    assert main(["train-controller", "--help"]) == 0
    assert "--episodes" in capsys.readouterr().out
    assert main(["meta-train"]) == 2
    assert "--task and --output_dir are required" in capsys.readouterr().err


def test_the_examples_help_lists_every_flag(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "meta_train.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "--meta_update_interval" in out.stdout and "--num_train_epochs" in out.stdout


def test_version_override_blame_and_convert_official_errors(tmp_path, capsys):
    from mlrsnet_hf import __version__, convert_official
    from mlrsnet_hf.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and __version__ in capsys.readouterr().out
    MLRSNetSchedule(hidden_size=4).save_pretrained(tmp_path / "schedule")
    with pytest.raises(ValueError, match=r"from_pretrained\(.*gamma='atuo'\): gamma must be") as error:
        MLRSNetSchedule.from_pretrained(tmp_path / "schedule", gamma="atuo")
    assert not isinstance(error.value, ScheduleFileError)  # the override is wrong, not config.json
    # convert-official: stage order, --out a file, a file that is not a checkpoint
    names = [tmp_path / f"mlr_snet_{e}.pth" for e in (200, 1)]
    for path in names:
        torch.save({"not": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="stage order"):
        convert_official(names)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        convert_official(names[::-1], tmp_path / "a-file")
    (tmp_path / "mlr_snet_1.pth").write_text("not a checkpoint")
    assert main(["convert-official", str(tmp_path / "mlr_snet_1.pth"), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "not a released MLR-SNet checkpoint" in err and "weights_only" not in err


def test_the_record_keeps_only_the_settings_the_run_used(tmp_path):
    """learning_rate is recorded only when gamma scales from it; weight_decay only when it was applied."""
    data = digits(200)
    for name, gamma, weight_decay in (("fixed", 0.1, 0.0), ("relative", "relative", 5e-4)):
        args = config(
            tmp_path / name, meta_train=True, meta_update_interval=2, max_steps=4, snapshot_fractions=[],
            gamma=gamma, weight_decay=weight_decay,
        )  # fmt: skip
        trainer = MLRSNetTrainer(model=DigitsNet(), args=args, train_dataset=data[:150], meta_dataset=data[150:])
        trainer.train()
        trainer.save_schedule(tmp_path / name / "schedule")
        record = MLRSNetSchedule.from_pretrained(tmp_path / name / "schedule").meta_training
        if name == "fixed":
            assert "learning_rate" not in record and "weight_decay" not in record
        else:
            assert record["learning_rate"] == args.learning_rate and record["weight_decay"] == 5e-4
