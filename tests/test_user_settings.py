"""Drop-in means drop-in: the user's optimizer and LR are kept, unused LR settings are named, a far-off LR is refused."""

import dataclasses
import logging

import pytest
import torch
from tiny import DigitsNet, digits
from transformers import Trainer, TrainingArguments

from mlrsnet_hf import MLRSNetCallback, MLRSNetConfig, MLRSNetSchedule, MLRSNetTrainer
from mlrsnet_hf.driver import DEFAULT_LEARNING_RATE

COMMON = dict(
    max_steps=4, per_device_train_batch_size=32, report_to="none", save_strategy="no", disable_tqdm=True,
    use_cpu=True, seed=0,
)  # fmt: skip


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("mlrsnet_hf")]


def train(tmp_path, schedule, **kwargs):
    torch.manual_seed(0)
    trainer = MLRSNetTrainer(
        model=DigitsNet(),
        args=MLRSNetConfig(output_dir=str(tmp_path), **{**COMMON, **kwargs}),
        schedule=schedule,
        train_dataset=digits(256),
    )
    trainer.train()
    return trainer


def test_every_training_arguments_default_is_kept(tmp_path):
    ours, theirs = MLRSNetConfig(output_dir=str(tmp_path)), TrainingArguments(output_dir=str(tmp_path))
    for f in dataclasses.fields(TrainingArguments):
        if f.init and f.name not in ("output_dir", "logging_dir"):
            assert getattr(ours, f.name) == getattr(theirs, f.name), f.name
    assert ours.optim == theirs.optim != "sgd"


def test_a_drop_in_swap_keeps_the_optimizer_and_the_lr(schedule_dir, tmp_path, caplog):
    """The issue's case: ``TrainingArguments(learning_rate=5e-5)`` -> ``MLRSNetConfig(learning_rate=5e-5)``."""
    with caplog.at_level(logging.INFO):
        trainer = train(tmp_path, str(schedule_dir), learning_rate=5e-5)
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert isinstance(inner, torch.optim.AdamW)
    lrs = trainer.lr_scheduler.lr_history
    assert lrs[0] == pytest.approx(5e-5, rel=1e-6) and max(lrs) <= 5e-5 * (1 + 1e-6) and len(set(lrs)) > 1
    assert warnings_of(caplog) == []  # nothing the user set goes unused


def test_unused_settings_get_one_warning_naming_the_lr_used(schedule_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        trainer = train(
            tmp_path, str(schedule_dir), optim="sgd", learning_rate=1e-4, lr_scheduler_type="cosine", warmup_steps=2
        )
    first = trainer.lr_scheduler.lr_history[0]
    assert first > 1e-3  # the schedule's SGD LR, not the user's 1e-4
    (message,) = warnings_of(caplog)
    assert "learning_rate=0.0001, lr_scheduler_type='cosine', warmup_steps=2 are not used" in message
    assert f"The first step's LR is {first:.4g} (gamma=0.4 is fixed, times the schedule's output)" in message


def test_a_default_learning_rate_the_user_never_set_is_not_named(schedule_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        train(tmp_path, str(schedule_dir), optim="sgd")
    assert warnings_of(caplog) == []  # (the preset runs and every optim="sgd" run named "learning_rate=5e-05")
    assert TrainingArguments(output_dir=str(tmp_path)).learning_rate == DEFAULT_LEARNING_RATE


def train_with_own_optimizer(tmp_path, schedule, optimizer_lr, **kwargs):
    """A run with the user's own AdamW at ``optimizer_lr``; returns the trainer and the LR each step used."""
    torch.manual_seed(0)
    model = DigitsNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=optimizer_lr)
    used = []
    optimizer.register_step_post_hook(lambda opt, *_: used.append(opt.param_groups[0]["lr"]))
    trainer = MLRSNetTrainer(
        model=model,
        args=MLRSNetConfig(output_dir=str(tmp_path), **{**COMMON, **kwargs}),
        schedule=schedule,
        train_dataset=digits(256),
        optimizers=(optimizer, None),
    )
    trainer.train()
    return trainer, used


def test_the_lr_history_is_the_lr_the_users_own_optimizer_used(schedule_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        trainer, used = train_with_own_optimizer(tmp_path, str(schedule_dir), 1e-3, logging_steps=1)
    assert used[0] == pytest.approx(1e-3) and len(set(used)) > 1  # relative: the optimizer's LR is the first
    assert trainer.lr_scheduler.lr_history == used  # (it was scaled to learning_rate=5e-05: 20x too low)
    logged = [e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e]
    assert logged and all(lr in used for lr in logged)
    assert warnings_of(caplog) == []


def test_a_fixed_gamma_is_checked_against_the_users_own_optimizers_lr(schedule_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        trainer, used = train_with_own_optimizer(tmp_path, str(schedule_dir), 0.1, gamma=0.4)
    assert trainer.lr_scheduler.lr_history == used and 0.1 < used[0] < 0.4  # 0.4 x p: within 10x of 0.1
    (message,) = warnings_of(caplog)
    assert message.startswith("The learned schedule sets every step's LR: the optimizer's lr=0.1 is not used")
    with pytest.raises(ValueError, match=r"AdamW would start at LR 0\.\d+, \d+x the optimizer's lr=0\.0001 you set"):
        train_with_own_optimizer(tmp_path, str(schedule_dir), 1e-4, gamma=0.4, learning_rate=0.1)


def test_a_fixed_gamma_far_above_adamws_lr_is_refused_before_the_first_update(schedule_dir, tmp_path):
    torch.manual_seed(0)
    model = DigitsNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = MLRSNetConfig(output_dir=str(tmp_path), gamma=0.1, **COMMON)
    trainer = MLRSNetTrainer(model=model, args=args, schedule=str(schedule_dir), train_dataset=digits(256))
    with pytest.raises(
        ValueError, match=r"AdamW would start at LR 0\.0\d+, \d+x the learning_rate=5e-05 you set"
    ) as e:
        trainer.train()
    assert "gamma=0.1 is fixed" in str(e.value) and "leave gamma unset" in str(e.value)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in ("body.0.weight", "head.weight"))  # no update was applied


def test_the_old_readme_callback_snippet_is_refused(schedule_dir, tmp_path):
    """The README's callback snippet of issue 36, as written: ``gamma=0.1`` on a default ``TrainingArguments``."""
    callback = MLRSNetCallback(MLRSNetSchedule.from_pretrained(schedule_dir), gamma=0.1)
    trainer = Trainer(
        model=DigitsNet(),
        args=TrainingArguments(output_dir=str(tmp_path), **COMMON),
        train_dataset=digits(256),
        callbacks=[callback],
        optimizers=(None, callback.lr_scheduler),
    )
    with pytest.raises(ValueError, match="would start at LR .*x the learning_rate=5e-05 you set"):
        trainer.train()


def test_a_learning_rate_that_asks_for_the_lr_is_not_refused(schedule_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        trainer = train(tmp_path, str(schedule_dir), gamma=0.1, learning_rate=0.01)
    first = trainer.lr_scheduler.lr_history[0]
    assert 0.01 < first < 0.1
    (message,) = warnings_of(caplog)
    assert message.startswith("The learned schedule sets every step's LR: learning_rate=0.01 is not used")


def test_a_measured_lr_is_not_refused(schedule_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        trainer = train(tmp_path, str(schedule_dir), gamma="range_test", range_test_steps=10, learning_rate=1e-3)
    first = trainer.lr_scheduler.lr_history[0]
    (message,) = [m for m in warnings_of(caplog) if "sets every step's LR" in m]
    assert f"gamma='range_test' measured the LR on this task: {first:.4g}" in message


def test_an_online_scale_says_the_lr_is_its_scale_times_the_shape(schedule_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        train(tmp_path, str(schedule_dir), optim="sgd", learning_rate=0.1, online_scale="mechanic")
    (message,) = warnings_of(caplog)
    assert "learning_rate=0.1 is not used. The first step's LR is S x 1 (online_scale='mechanic' learns" in message


def test_the_presets_keep_the_papers_sgd():
    from mlrsnet_hf.experiments.presets import PRESETS

    assert {preset.training.get("optim") for preset in PRESETS.values()} == {"sgd"}


def test_options_a_transfer_does_not_use_are_named(schedule_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        torch.manual_seed(0)
        data = digits(300)
        args = MLRSNetConfig(output_dir=str(tmp_path), optim="sgd", relative_max_scale=2.0, **COMMON)
        MLRSNetTrainer(
            model=DigitsNet(), args=args, schedule=str(schedule_dir), train_dataset=data[:256], meta_dataset=data[256:]
        ).train()
    meta, first = warnings_of(caplog)
    assert meta.startswith("meta_dataset is read only to meta-train the schedule (meta_train=True)")
    assert "relative_max_scale=2 (gamma=0.4) is not used" in first
