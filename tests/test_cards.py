"""What the model cards claim: only what a run used, rounded numbers, the split of the results, honest licenses."""

import json
import re

import pytest
from conftest import CHECKPOINTS, REPO
from huggingface_hub import ModelCard

from mlrsnet_hf import LRController, MLRSNetSchedule, convert_official

# What MLRSNetTrainer records after a meta-training run on TrainingArguments' defaults (5e-05, 0.0).
RECORD = {
    "model": "DigitsCNN",
    "epochs": 31.58,
    "optimizer": "SGD",
    "learning_rate": 5e-05,
    "weight_decay": 0.0,
    "meta_learning_rate": 0.001,
    "meta_weight_decay": 0.0001,
    "dataset": "sklearn/digits",
    "eval_split": "test",
    "results": {"loss": 0.06616541743278503, "accuracy": 0.9825},
}


def card_of(schedule, tmp_path) -> tuple[str, ModelCard]:
    schedule.save_pretrained(tmp_path / "repo")
    return (tmp_path / "repo" / "README.md").read_text(), ModelCard.load(tmp_path / "repo" / "README.md")


def test_unused_training_arguments_are_not_claimed(tmp_path):
    text, _ = card_of(MLRSNetSchedule(gamma=1.0, meta_training=dict(RECORD)), tmp_path)
    assert "| learning_rate |" not in text and "5e-05" not in text  # gamma 1.0 sets every LR
    assert "| weight_decay |" not in text  # no weight decay was applied
    assert "| meta_learning_rate | 0.001 |" in text and "| meta_weight_decay | 0.0001 |" in text


def test_learning_rate_and_weight_decay_shown_where_used(tmp_path):
    record = {**RECORD, "learning_rate": 0.001, "weight_decay": 0.0005}
    text, _ = card_of(MLRSNetSchedule(gamma="relative", meta_training=record), tmp_path)
    assert "| learning_rate | 0.001 |" in text and "| weight_decay | 0.0005 |" in text


def test_results_are_rounded_and_say_their_split(tmp_path):
    text, card = card_of(MLRSNetSchedule(gamma=1.0, meta_training=dict(RECORD)), tmp_path)
    assert "0.06616541743278503" not in text and "| loss | 0.06617 |" in text
    assert re.search(r"measured at its end on the\s+\*\*test\*\* split", text)
    (result,) = [r for r in card.data.eval_results if r.metric_type == "loss"]
    assert result.metric_value == 0.06617 and result.dataset_split == "test"
    # A record that does not say: the card says it is not recorded, rather than guess.
    record = {k: v for k, v in RECORD.items() if k != "eval_split"}
    text, _ = card_of(MLRSNetSchedule(gamma=1.0, meta_training=record), tmp_path / "b")
    assert "its evaluation set (split not recorded)" in text


def test_controller_card_rounds_and_shows_its_loss_range(tmp_path):
    run = {"train_loss_range": [9.2, 6.1], "wall_time_s": 123.456789, "initial_lrs": [0.001]}
    LRController(training_run=run).save_pretrained(tmp_path / "c")
    text = (tmp_path / "c" / "README.md").read_text()
    assert "| wall_time_s | 123.5 |" in text and "123.456789" not in text
    assert "from\n9.2 to 6.1 (the range of the last\nepisode of its training)" in text


def test_the_library_license_is_in_the_project():
    """The cards of this library's own schedules claim apache-2.0: the project declares it and ships its text."""
    assert 'license="Apache-2.0"' in (REPO / "setup.py").read_text()
    text = (REPO / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
    assert MLRSNetSchedule._hub_mixin_info.model_card_data.license == "apache-2.0"


def test_released_weights_are_not_relicensed_and_the_best_epoch_is_labelled(official_dir, tmp_path):
    convert_official([official_dir / n for n in CHECKPOINTS], tmp_path / "official")
    text = (tmp_path / "official" / "README.md").read_text()
    card = ModelCard.load(tmp_path / "official" / "README.md")
    assert card.data.license == "other" and "apache" not in (card.data.license_name or "")
    assert card.data.license_link == "https://github.com/xjtushujun/MLR-SNet"
    assert "## License" in text and "not covered by the Apache-2.0 license" in text
    curves = json.loads((official_dir / "meta_train_curves.json").read_text())["resnet18_cifar10"]["test_acc"]
    assert (curves[-1], max(curves), curves.index(max(curves)) + 1, len(curves)) == (92.36, 94.37, 90, 200)
    (accuracy,) = card.data.eval_results
    assert accuracy.metric_value == pytest.approx(0.9236) and accuracy.dataset_split == "test"  # the last epoch's
    assert "| best_epoch_test_accuracy | 0.9437 (epoch 90 of 200; the results are the last epoch's) |" in text


def test_presets_record_the_split_their_results_come_from():
    from mlrsnet_hf.experiments.tasks import TaskArguments, eval_split_name

    assert eval_split_name(TaskArguments(task="cifar10-resnet18")) == "test"
    assert eval_split_name(TaskArguments(task="ptb-lstm2", test_split="test[50%:]")) == "test[50%:]"
    assert eval_split_name(TaskArguments(task="cifar10-resnet18", max_eval_samples=40)) == "test (first 40 examples)"
