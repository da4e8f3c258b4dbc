"""gamma="range_test": the LR scale measured by a range test on a copy, leaving the real run untouched."""

import copy
import math

import pytest
import torch
from test_trainer import Recorder
from tiny import DigitsNet, digits
from transformers import Trainer, TrainingArguments

from mlrsnet_hf import MLRSNetCallback, MLRSNetConfig, MLRSNetSchedule, MLRSNetTrainer
from mlrsnet_hf.lr_range_test import choose_lr, lr_range_test


def test_choose_lr_rules():
    lrs = [10.0**k for k in range(-3, 4)]  # 1e-3 ... 1e3
    smoothed = [2.3, 2.2, 1.6, 0.9, 0.7, 1.5, 3.0]  # steepest fall from 1e-1 to 1e0, lowest at 1e1
    assert choose_lr(lrs, smoothed, "min_loss_div_10") == pytest.approx(1.0)
    assert choose_lr(lrs, smoothed, "steepest") == pytest.approx(math.sqrt(1e-1 * 1e0))
    with pytest.raises(ValueError, match="too few"):
        choose_lr(lrs[:2], smoothed[:2])
    with pytest.raises(ValueError, match="rule"):
        choose_lr(lrs, smoothed, "valley")


def test_range_test_leaves_model_optimizer_and_rng_alone():
    torch.manual_seed(0)
    model = DigitsNet(dropout=0.2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    data = digits(256)
    batches = [
        {
            "x": torch.stack([d["x"] for d in data[i : i + 32]]),
            "labels": torch.stack([d["labels"] for d in data[i : i + 32]]),
        }
        for i in range(0, 256, 32)
    ]
    weights = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    result = lr_range_test(model, optimizer, batches, num_steps=30, max_grad_norm=1.0)
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k  # BatchNorm statistics included
    assert optimizer.state == {} and optimizer.param_groups[0]["lr"] == 0.1
    assert 3 <= len(result.lrs) <= 30 and result.lrs[0] == pytest.approx(1e-3)
    assert all(b > a for a, b in zip(result.lrs, result.lrs[1:], strict=False))
    best = min(range(len(result.smoothed)), key=result.smoothed.__getitem__)
    assert result.lr == pytest.approx(result.lrs[best] / 3)  # the default rule, min_loss_div_3
    assert result.seconds > 0


def trainer_run(out, gamma, learning_rate, callback=False):
    torch.manual_seed(0)
    recorder = Recorder()
    common = dict(
        output_dir=str(out), max_steps=12, per_device_train_batch_size=32, report_to="none", save_strategy="no",
        disable_tqdm=True, use_cpu=True, seed=0, learning_rate=learning_rate, max_grad_norm=1.0, optim="sgd",
    )  # fmt: skip
    torch.manual_seed(1)
    schedule = MLRSNetSchedule(hidden_size=16, num_stages=2, gamma=0.3)
    data = digits(1200)
    torch.manual_seed(0)
    model = DigitsNet(dropout=0.1)
    if callback:
        cb = MLRSNetCallback(schedule, gamma=gamma, range_test_steps=20)
        trainer = Trainer(
            model=model, args=TrainingArguments(**common), train_dataset=data, callbacks=[cb, recorder],
            optimizers=(None, cb.lr_scheduler),
        )  # fmt: skip
        trainer.train()
        return cb.lr_scheduler, model, [lrs[0] for lrs in recorder.lrs]
    args = MLRSNetConfig(gamma=gamma, range_test_steps=20, **common)
    trainer = MLRSNetTrainer(model=model, args=args, train_dataset=data, schedule=schedule, callbacks=[recorder])
    trainer.train()
    return trainer.lr_scheduler, model, [lrs[0] for lrs in recorder.lrs]


def test_range_test_sets_the_scale_and_leaves_the_run_as_if_given(tmp_path):
    driver, model, lrs = trainer_run(tmp_path / "a", "range_test", learning_rate=0.05)
    found = driver.range_test.lr
    assert 1e-3 < found < 1e3 and driver.schedule.base_lr == found
    assert lrs[0] == pytest.approx(found, rel=1e-6)  # the first step uses the measured LR (float32 network)
    assert max(lrs) <= found  # never above it (relative_max_scale 1)
    # The same run with that LR given (gamma="relative"): identical LRs and weights, so the test changed
    # neither the model, nor the optimizer, nor the data order, nor any random stream.
    _, given_model, given = trainer_run(tmp_path / "b", "relative", learning_rate=found)
    assert given == lrs
    for (k, v), w in zip(model.state_dict().items(), given_model.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    # The callback on a plain Trainer measures and sets the same.
    cb_driver, _, cb_lrs = trainer_run(tmp_path / "c", "range_test", learning_rate=0.05, callback=True)
    assert cb_driver.range_test.lr == found and cb_lrs == lrs


def test_range_test_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="range_test_rule"):
        MLRSNetConfig(output_dir=str(tmp_path), gamma="range_test", range_test_rule="valley")
    with pytest.raises(ValueError, match="range_test_min_lr"):
        MLRSNetConfig(output_dir=str(tmp_path), gamma="range_test", range_test_min_lr=-1.0)


def test_range_test_with_adamw_spans_adaptive_lrs(tmp_path):
    torch.manual_seed(0)
    data = digits(640)
    args = MLRSNetConfig(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=32, optim="adamw_torch",
        gamma="range_test", range_test_steps=30, report_to="none", save_strategy="no", disable_tqdm=True,
        use_cpu=True,
    )  # fmt: skip
    recorder = Recorder()
    torch.manual_seed(1)
    schedule = MLRSNetSchedule(hidden_size=16, gamma=0.3)
    trainer = MLRSNetTrainer(model=DigitsNet(), args=args, train_dataset=data, schedule=schedule, callbacks=[recorder])
    trainer.train()
    result = trainer.lr_scheduler.range_test
    assert result.lrs[0] == pytest.approx(1e-6) and result.lrs[-1] <= 1.0  # the adaptive optimizers' span
    assert 1e-6 <= result.lr <= 1.0 and recorder.lrs[0][0] == pytest.approx(result.lr, rel=1e-6)
    assert trainer.schedule.gamma == "range_test"  # kept: not replaced by the AdamW default "relative"


def test_range_test_schedule_repo_round_trip(tmp_path):
    MLRSNetSchedule(hidden_size=8, gamma="range_test").save_pretrained(tmp_path / "repo")
    loaded = MLRSNetSchedule.from_pretrained(tmp_path / "repo")
    assert loaded.gamma == "range_test" and loaded.uses_base_lr
    assert "an LR range test runs on a copy of the" in (tmp_path / "repo" / "README.md").read_text()
    # A preview needs a base LR in place of the measured one: the simulated LRs are relative to it.
    lrs = loaded.simulate([2.3, 2.0, 1.5], base_lr=1.0)
    assert lrs[0] == pytest.approx(1.0, rel=1e-6) and all(0 < lr <= 1.0 for lr in lrs)
