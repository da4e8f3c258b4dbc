"""gamma="range_test": the LR scale measured by a range test on a copy, leaving the real run untouched."""

import copy
import logging
import math
import random

import pytest
import torch
from huggingface_hub import ModelCard
from test_trainer import Recorder
from tiny import DigitsNet, digits
from torch import nn
from transformers import PretrainedConfig, Trainer, TrainingArguments

from mlrsnet_hf import MLRSNetCallback, MLRSNetConfig, MLRSNetSchedule, MLRSNetTrainer
from mlrsnet_hf.lr_range_test import RULES, choose_lr, choose_lr_checked, lr_range_test
from mlrsnet_hf.provenance import update_model_card


def test_choose_lr_rules():
    lrs = [10.0**k for k in range(-3, 4)]  # 1e-3 ... 1e3
    smoothed = [2.3, 2.2, 1.6, 0.9, 0.7, 1.5, 3.0]  # steepest fall from 1e-1 to 1e0, lowest at 1e1
    assert choose_lr(lrs, smoothed, "min_loss_div_10") == pytest.approx(1.0)
    assert choose_lr(lrs, smoothed, "steepest") == pytest.approx(math.sqrt(1e-1 * 1e0))
    with pytest.raises(ValueError, match="too few"):
        choose_lr(lrs[:2], smoothed[:2])
    with pytest.raises(ValueError, match="rule"):
        choose_lr(lrs, smoothed, "valley")
    for rule in RULES:  # a curve that falls clearly: every rule's pick is kept
        checked = choose_lr_checked(lrs, smoothed, rule)
        assert checked.lr == checked.rule_lr == choose_lr(lrs, smoothed, rule) and checked.fallback_reason is None


LRS = [1e-3 * 1e6 ** (i / 59) for i in range(60)]  # a 60-step test over the default SGD span, [1e-3, 1e3]


def range_test_curve(fall: float, easy_second_batch: float | None = None) -> tuple[list[float], list[float]]:
    """The losses and smoothed losses (bias-corrected EMA, 0.9, as lr_range_test records) of a synthetic range test.

    The loss is 2.3 (10 classes at chance) plus batch noise (sd 0.02) up to LR 0.1, falls by ``fall`` from there
    to LR ~3 and rises beyond; ``easy_second_batch``: the loss of the second batch (a batch easier than the rest).
    """
    rng = random.Random(0)
    losses = []
    for lr in LRS:
        decade = math.log10(lr)
        level = 2.3 - fall * min(max(decade + 1, 0), 1.5) / 1.5 + 3 * max(decade - 0.5, 0) ** 2
        losses.append(level + 0.02 * rng.gauss(0, 1))
    if easy_second_batch is not None:
        losses[1] = easy_second_batch
    average, smoothed = 0.0, []
    for step, loss in enumerate(losses):
        average = 0.9 * average + 0.1 * loss
        smoothed.append(average / (1 - 0.9 ** (step + 1)))
    return losses, smoothed


@pytest.mark.parametrize("rule", RULES)
def test_a_pick_read_off_a_clear_fall_is_kept_without_warning(rule, caplog):
    losses, smoothed = range_test_curve(fall=0.8)
    with caplog.at_level(logging.WARNING, logger="mlrsnet_hf"):
        checked = choose_lr_checked(LRS, smoothed, rule, losses)
    assert checked.lr == checked.rule_lr == choose_lr(LRS, smoothed, rule)
    assert checked.fallback_reason is None and not caplog.records
    assert 0.1 <= checked.onset_lr <= 1.0 and checked.min_loss < checked.start_loss - 0.4  # the fall, measured


@pytest.mark.parametrize("easy_second_batch", [None, 2.0])
@pytest.mark.parametrize("rule", RULES)
def test_a_curve_that_never_fell_falls_back_below_where_the_loss_rose(rule, easy_second_batch, caplog):
    # Flat at chance, then rising from LR ~3: the rules read noise (min_loss_div_3 picks 2e-3, or with an easy
    # second batch 4e-4, where SGD moves nothing), as on digits with 40 % noisy labels.
    losses, smoothed = range_test_curve(fall=0.0, easy_second_batch=easy_second_batch)
    with caplog.at_level(logging.WARNING, logger="mlrsnet_hf"):
        checked = choose_lr_checked(LRS, smoothed, rule, losses)
    assert checked.rule_lr == choose_lr(LRS, smoothed, rule) and checked.rule_lr < 0.01
    assert checked.onset_lr is None and checked.fallback_reason.startswith("the loss never fell clearly")
    assert 3 < checked.edge_lr < 10 and checked.lr == pytest.approx(0.1 * checked.edge_lr)  # a tenth of the edge
    [record] = caplog.records
    message = record.getMessage()
    assert record.levelno == logging.WARNING and rule in message
    assert f"start {checked.start_loss:.4g}, lowest {checked.min_loss:.4g}" in message  # what was measured,
    assert f"pick lr={checked.rule_lr:.3g}" in message and f"lr={checked.edge_lr:.3g}" in message  # what was picked,
    assert message.endswith(f"lr={checked.lr:.3g}.")  # and what is used instead


@pytest.mark.parametrize("rule", RULES)
def test_a_pick_far_below_where_the_loss_fell_is_replaced(rule, caplog):
    # One easy batch at step 1 makes the smoothed loss lowest there (1.78, against 2.13 at LR 4.6, where the fall
    # from LR ~1 ends): the rules pick ~1e-3 and below, over 1000x below the fall.
    losses, smoothed = range_test_curve(fall=0.3, easy_second_batch=1.3)
    with caplog.at_level(logging.WARNING, logger="mlrsnet_hf"):
        checked = choose_lr_checked(LRS, smoothed, rule, losses)
    assert checked.rule_lr == choose_lr(LRS, smoothed, rule) and checked.rule_lr < 2e-3
    assert 0.3 < checked.onset_lr < 3 and "10x below" in checked.fallback_reason
    assert checked.onset_lr / 10 <= checked.lr <= 5  # read off the fall, not above its lowest point
    if rule.startswith("min_loss"):  # what the rule picks without the easy batch
        _, without = range_test_curve(fall=0.3)
        assert checked.lr == pytest.approx(choose_lr(LRS, without, rule))
    [record] = caplog.records
    assert f"{checked.onset_lr:.3g}" in record.getMessage() and f"{checked.lr:.3g}" in record.getMessage()


class ChanceModel(nn.Module):
    """A model whose loss is its batch's ``x`` (whatever the LR): a range test that never falls nor rises."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.config = PretrainedConfig()  # what Trainer.create_model_card reads

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": x.mean() + 0 * self.weight.sum()}


def test_range_test_records_and_logs_its_fallback(caplog, tmp_path):
    generator = torch.Generator().manual_seed(0)
    batches = [{"x": 2.3 + 0.02 * torch.randn(8, generator=generator), "labels": torch.zeros(8)} for _ in range(30)]
    batches[1]["x"] = batches[1]["x"] - 0.2  # an easy batch: the rule's minimum
    model = ChanceModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with caplog.at_level(logging.INFO, logger="mlrsnet_hf"):
        result = lr_range_test(model, optimizer, batches, num_steps=30)
    assert result.rule_lr == pytest.approx(result.lrs[1] / 3)  # min_loss_div_3 at the easy batch
    assert result.edge_lr == result.lrs[-1] == pytest.approx(1e3)  # the loss never rose
    assert result.lr == pytest.approx(100.0) and result.fallback_reason.startswith("the loss never fell clearly")
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]
    assert "not its pick" in caplog.records[1].getMessage()  # the choice is in the log
    record = result.to_dict()
    assert record["lr"] == result.lr and record["rule_lr"] == result.rule_lr
    assert record["fallback_reason"] == result.fallback_reason and record["onset_lr"] is None
    assert record["losses"] == result.losses and "smoothed" not in result.summary()
    # The card of a model trained with it, and of a schedule saved from the run, state the choice and the reason.
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n# A model\n")
    schedule = MLRSNetSchedule(hidden_size=8, gamma="range_test")
    update_model_card(tmp_path, schedule, range_test=result)
    stated = ModelCard.load(tmp_path / "README.md").data.to_dict()["schedule"]["range_test"]
    assert stated == {
        "lr": 100.0, "rule": "min_loss_div_3", "rule_lr": float(f"{result.rule_lr:.4g}"),
        "fallback_reason": result.fallback_reason,
    }  # fmt: skip
    text = str(schedule.generate_model_card(range_test=result))
    assert f"chose lr = 100.0, not the rule's own pick {result.rule_lr:.4g}: the loss never fell clearly" in text


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
    assert 1e-3 < found < 1e3 and driver.run.base_lr == found
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
    assert trainer.lr_scheduler.run.gamma == "range_test"  # kept: not replaced by the AdamW default "relative"


def test_range_test_schedule_repo_round_trip(tmp_path):
    MLRSNetSchedule(hidden_size=8, gamma="range_test").save_pretrained(tmp_path / "repo")
    loaded = MLRSNetSchedule.from_pretrained(tmp_path / "repo")
    assert loaded.gamma == "range_test" and loaded.uses_base_lr
    assert "an LR range test runs on a copy of the" in (tmp_path / "repo" / "README.md").read_text()
    # A preview needs a base LR in place of the measured one: the simulated LRs are relative to it.
    lrs = loaded.simulate([2.3, 2.0, 1.5], base_lr=1.0)
    assert lrs[0] == pytest.approx(1.0, rel=1e-6) and all(0 < lr <= 1.0 for lr in lrs)


def test_the_cards_of_a_run_state_the_range_test_choice(tmp_path):
    """With the range test's pick replaced, the model's card and the saved schedule's card say so, and why."""
    generator = torch.Generator().manual_seed(0)
    data = [{"x": 2.3 + 0.02 * torch.randn((), generator=generator), "labels": torch.tensor(0)} for _ in range(64)]
    args = MLRSNetConfig(
        output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2, optim="sgd", gamma="range_test",
        range_test_steps=30, report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True,
    )  # fmt: skip
    trainer = MLRSNetTrainer(
        model=ChanceModel(), args=args, train_dataset=data, schedule=MLRSNetSchedule(hidden_size=8, gamma=0.3)
    )
    trainer.train()
    result = trainer.lr_scheduler.range_test
    assert result.fallback_reason.startswith("the loss never fell clearly") and result.lr != result.rule_lr
    trainer.create_model_card()
    stated = ModelCard.load(tmp_path / "out" / "README.md").data.to_dict()["schedule"]["range_test"]
    assert stated["lr"] == float(f"{result.lr:.4g}") and stated["fallback_reason"] == result.fallback_reason
    trainer.save_schedule(tmp_path / "schedule")
    text = (tmp_path / "schedule" / "README.md").read_text()
    assert f"chose lr = {stated['lr']}, not the rule's own pick {stated['rule_lr']}: the loss never fell" in text
