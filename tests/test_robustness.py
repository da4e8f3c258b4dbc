"""What a run meets in practice: bad meta losses, AdamW meta-training, odd batches, resumes without state."""

import pytest
import torch
from test_trainer import Recorder, config
from tiny import DigitsNet, digits
from transformers import Trainer, TrainingArguments

from mlrsnet_hf import MLRSNetCallback, MLRSNetSchedule, MLRSNetTrainer
from mlrsnet_hf.loss_meter import LossMeter


class OverflowAtCall(DigitsNet):
    """The loss (and so every gradient) becomes infinite at one training-mode forward, as an fp16 overflow does."""

    def __init__(self, at_call: int) -> None:
        super().__init__()
        self.at_call = at_call

    def forward(self, x, labels=None):
        out = super().forward(x, labels)
        if labels is not None and self.training and self.calls == self.at_call:
            out["loss"] = out["loss"] * float("inf")
        return out


def test_non_finite_meta_loss_skips_the_meta_update(tmp_path, caplog):
    torch.manual_seed(0)
    data = digits(400)
    model = OverflowAtCall(2)  # call 1: step 0's training forward; call 2: its meta forward
    args = config(tmp_path, meta_train=True, meta_update_interval=1, max_steps=5)
    with caplog.at_level("WARNING"):
        trainer = MLRSNetTrainer(model=model, args=args, train_dataset=data[:300], meta_dataset=data[300:])
        trainer.train()
    assert "Non-finite meta loss or meta-gradient" in caplog.text
    assert all(torch.isfinite(v).all() for v in trainer.schedule.weights().values())
    assert all(torch.isfinite(torch.tensor(trainer.lr_scheduler.lr_history)))
    assert len(trainer.lr_scheduler.lr_history) == 5


def test_relative_mode_meta_training_learns_and_never_exceeds_the_cap(tmp_path):
    torch.manual_seed(0)
    data = digits(500)
    args = config(
        tmp_path, meta_train=True, meta_update_interval=1, max_steps=8, optim="adamw_torch", learning_rate=1e-3
    )
    trainer = MLRSNetTrainer(model=DigitsNet(), args=args, train_dataset=data[:400], meta_dataset=data[400:])
    trainer.train()
    assert trainer.lr_scheduler.run.gamma == "relative"
    assert sum(g.abs().sum() for g in trainer.last_hypergradient.values()) > 0  # straight through the cap
    assert max(trainer.lr_scheduler.lr_history) <= 1e-3  # exactly, not 1e-3 + float32 rounding


def test_meta_batches_drop_keys_the_model_does_not_take(tmp_path):
    data = [{**d, "idx": i} for i, d in enumerate(digits(300))]
    args = config(tmp_path, meta_train=True, meta_update_interval=2, max_steps=4)
    trainer = MLRSNetTrainer(model=DigitsNet(), args=args, train_dataset=data[:200], meta_dataset=data[200:])
    trainer.train()
    assert trainer.lr_scheduler.meta.batches.index == 2 * 32


def test_resume_without_schedule_state_is_an_error(schedule_dir, tmp_path):
    args = config(tmp_path, schedule=str(schedule_dir), save_strategy="steps", save_steps=3, max_steps=6)
    args.save_only_model = True
    MLRSNetTrainer(model=DigitsNet(), args=args, train_dataset=digits(400)).train()
    trainer = MLRSNetTrainer(model=DigitsNet(), args=args, train_dataset=digits(400))
    with pytest.raises(ValueError, match="holds no schedule state"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"))


def test_a_scheduler_of_ones_own_is_refused(schedule_dir, tmp_path):
    model = DigitsNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="without a scheduler"):
        MLRSNetTrainer(
            model=model, args=config(tmp_path, schedule=str(schedule_dir)), train_dataset=digits(64),
            optimizers=(opt, torch.optim.lr_scheduler.StepLR(opt, 1)),
        )  # fmt: skip


def test_parameter_groups_keep_their_ratios(schedule_dir, tmp_path):
    model = DigitsNet()
    opt = torch.optim.SGD(
        [{"params": model.body.parameters(), "lr": 0.1}, {"params": model.head.parameters(), "lr": 0.01}]
    )
    recorder = Recorder()
    trainer = MLRSNetTrainer(
        model=model, args=config(tmp_path, schedule=str(schedule_dir)), train_dataset=digits(400),
        optimizers=(opt, None), callbacks=[recorder],
    )  # fmt: skip
    trainer.train()
    assert all(head == pytest.approx(body / 10, rel=1e-12) for body, head in recorder.lrs)


def test_callback_restore_keeps_the_schedule_in_use(schedule_dir, tmp_path):
    """With restore_callback_states_from_checkpoint=True the Trainer rebuilds the callback from its saved args."""

    def run(out, resume=None):
        torch.manual_seed(0)
        recorder = Recorder()
        args = TrainingArguments(
            output_dir=str(out), optim="sgd", max_steps=9, per_device_train_batch_size=32, report_to="none",
            save_strategy="steps", save_steps=4, disable_tqdm=True, use_cpu=True, seed=0,
            restore_callback_states_from_checkpoint=True,
        )  # fmt: skip
        schedule = MLRSNetSchedule.from_pretrained(schedule_dir, gamma=0.2, stage_starts=[0.0, 0.5, 0.9])
        callback = MLRSNetCallback(schedule, num_classes=10)
        Trainer(
            model=DigitsNet(), args=args, train_dataset=digits(600), callbacks=[callback, recorder],
            optimizers=(None, callback.lr_scheduler),
        ).train(resume_from_checkpoint=resume)  # fmt: skip
        return [lrs[0] for lrs in recorder.lrs]

    lrs = run(tmp_path / "a")
    assert run(tmp_path / "b", resume=str(tmp_path / "a" / "checkpoint-4")) == lrs[4:]


def test_attach_drops_losses_left_by_an_interrupted_run():
    meter = LossMeter()
    model = DigitsNet().train()
    meter.attach(model)
    batch = digits(8)
    x, y = torch.stack([d["x"] for d in batch]), torch.stack([d["labels"] for d in batch])
    model(x, y)  # a loss recorded, then the run dies before the optimizer step
    meter.attach(model)
    loss = model(x, y)["loss"].item()
    assert meter.step_loss() == pytest.approx(loss)


def test_bad_options_fail_at_construction(tmp_path):
    import math

    from mlrsnet_hf import MLRSNetConfig

    for kwargs, match in (
        ({"relative_max_scale": 0.0}, "relative_max_scale"),
        ({"relative_max_scale": math.nan}, "relative_max_scale"),
        ({"meta_batch_size": 0}, "meta_batch_size"),
        ({"gamma": True}, "gamma"),
        ({"learning_rate": 0.0}, "learning_rate"),
    ):
        with pytest.raises(ValueError, match=match):
            MLRSNetConfig(output_dir=str(tmp_path), **kwargs)
    schedule = MLRSNetSchedule(hidden_size=8, gamma=0.5)
    for bad in (0.0, -1.0, math.nan, True):
        with pytest.raises(ValueError, match="relative_max_scale"):
            MLRSNetCallback(schedule, relative_max_scale=bad)
    with pytest.raises(ValueError, match="stage_starts"):
        MLRSNetSchedule(num_stages=2, stage_starts=[0.0, math.nan])
    with pytest.raises(ValueError, match="relative_max_scale"):
        MLRSNetSchedule(relative_max_scale=math.nan)


def test_convert_official_refuses_non_finite_weights(official_dir, tmp_path):
    from mlrsnet_hf import convert_official
    from mlrsnet_hf.hub import ScheduleFileError

    state = torch.load(official_dir / "mlr_snet_1.pth", map_location="cpu", weights_only=True)
    key = next(iter(state))
    state[key] = state[key].clone().fill_(float("nan"))
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ScheduleFileError, match="non-finite weights"):
        convert_official([tmp_path / "bad.pth"])


def test_hostile_configs_fail_cleanly_naming_the_file(tmp_path):
    import json

    from mlrsnet_hf import LRController
    from mlrsnet_hf.hub import ScheduleFileError

    MLRSNetSchedule(hidden_size=8).save_pretrained(tmp_path / "s")
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    # A few bytes asking for a network of 3 GB of weights: refused from the config's limits, nothing built.
    (tmp_path / "s" / "config.json").write_text(json.dumps({**config, "hidden_size": 20000}))
    with pytest.raises(ScheduleFileError, match="hidden_size must be an integer from 1 to 1024, got 20000"):
        MLRSNetSchedule.from_pretrained(tmp_path / "s")
    LRController().save_pretrained(tmp_path / "c")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    for bad in ({"hidden_sizes": [-1]}, {"decision_interval": 1.5}, {"obs_clip": -1.0}, {"obs_epsilon": 0.0}):
        (tmp_path / "c" / "config.json").write_text(json.dumps({**config, **bad}))
        with pytest.raises(ScheduleFileError, match="config.json"):
            LRController.from_pretrained(tmp_path / "c")


def test_meta_set_without_labels_fails_before_the_first_step(tmp_path):
    data = digits(400)
    unlabeled = [{"x": d["x"]} for d in data[300:]]
    args = config(tmp_path, meta_train=True, meta_update_interval=1, max_steps=5)
    model = DigitsNet()
    trainer = MLRSNetTrainer(model=model, args=args, train_dataset=data[:300], meta_dataset=unlabeled)
    with pytest.raises(ValueError, match="meta dataset batches carry no"):
        trainer.train()
    assert model.calls == 0  # no training step was taken
