"""resume_from_checkpoint continues with exactly the LR sequence of an uninterrupted run."""

import pytest
import torch
from test_trainer import Recorder
from tiny import DigitsNet, digits
from transformers import Trainer, TrainingArguments

from mlrsnet_hf import MLRSNetCallback, MLRSNetConfig, MLRSNetSchedule, MLRSNetTrainer

COMMON = dict(
    max_steps=10, per_device_train_batch_size=32, logging_steps=1, report_to="none", save_strategy="steps",
    save_steps=4, disable_tqdm=True, use_cpu=True, seed=0,
)  # fmt: skip


@pytest.fixture
def schedule_dir(tmp_path):
    torch.manual_seed(1)
    schedule = MLRSNetSchedule(hidden_size=16, num_stages=3, gamma="auto")
    with torch.no_grad():
        for p in schedule.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    schedule.save_pretrained(tmp_path / "schedule")
    return tmp_path / "schedule"


def run_trainer(out, resume=None, **kwargs):
    torch.manual_seed(0)
    recorder = Recorder()
    data = digits()
    args = MLRSNetConfig(
        optim="sgd", output_dir=str(out), num_classes=10, auto_gamma_batches=3, **{**COMMON, **kwargs}
    )
    trainer = MLRSNetTrainer(
        model=DigitsNet(dropout=0.1),
        args=args,
        train_dataset=data[:1200],
        meta_dataset=data[1200:],
        callbacks=[recorder],
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer, [lrs[0] for lrs in recorder.lrs]


@pytest.mark.parametrize(("meta_train", "horizon"), [(False, 1), (True, 1), (True, 3)])
def test_trainer_resume_is_exact(schedule_dir, tmp_path, meta_train, horizon):
    # With horizon 3 the checkpoint after step 4 falls inside a meta horizon (steps 4-6): its step is in scheduler.pt.
    kwargs = dict(
        schedule=str(schedule_dir), meta_train=meta_train, meta_update_interval=3, meta_learning_rate=1e-2,
        meta_horizon=horizon, snapshot_fractions=[0.2, 0.6, 1.0],
    )  # fmt: skip
    full, lrs = run_trainer(tmp_path / "a", **kwargs)
    assert len(lrs) == 10
    resumed, tail = run_trainer(tmp_path / "b", resume=str(tmp_path / "a" / "checkpoint-4"), **kwargs)
    assert tail == lrs[4:]  # bit-exact, across a stage switch (auto gamma recomputed at step 6)
    assert resumed.lr_scheduler.run.gammas == full.lr_scheduler.run.gammas
    for key, value in full.schedule.weights().items():
        assert torch.equal(resumed.schedule.weights()[key], value), key
    if meta_train:
        assert resumed.lr_scheduler.meta.batches.state_dict() == full.lr_scheduler.meta.batches.state_dict()
        assert [x["step"] for x in resumed.snapshots] == [x["step"] for x in full.snapshots] == [2, 6, 10]
        for a, b in zip(resumed.snapshots, full.snapshots, strict=True):  # the one before the checkpoint restored
            assert all(torch.equal(a["weights"][k], v) for k, v in b["weights"].items())
        initial = MLRSNetSchedule.from_pretrained(schedule_dir).weights()
        assert any(not torch.equal(v, initial[k]) for k, v in full.schedule.weights().items())


def test_a_resume_with_a_longer_max_steps_follows_the_new_length_and_says_so(schedule_dir, tmp_path, caplog):
    kwargs = dict(schedule=str(schedule_dir))
    run_trainer(tmp_path / "a", save_steps=10, **kwargs)
    with caplog.at_level("WARNING"):
        resumed, _ = run_trainer(tmp_path / "b", resume=str(tmp_path / "a" / "checkpoint-10"), max_steps=20, **kwargs)
    stages = [h["schedule_stage"] for h in resumed.state.log_history if "schedule_stage" in h and h["step"] > 10]
    # a 20-step run's stages start at steps 0, 6 and 13: steps 11-13 are in stage 1 (they stayed in stage 2)
    assert stages == [1, 1, 1] + [2] * 7
    assert "Resuming a run of 10 optimizer steps as one of 20: the schedule's stages follow the new length (step 11 " \
        "is in stage 1, it was in stage 2)" in caplog.text  # fmt: skip


def run_callback(out, schedule, resume=None):
    torch.manual_seed(0)
    recorder = Recorder()
    args = TrainingArguments(output_dir=str(out), optim="sgd", **COMMON)
    callback = MLRSNetCallback(schedule, num_classes=10, auto_gamma_batches=3)
    trainer = Trainer(
        model=DigitsNet(dropout=0.1),
        args=args,
        train_dataset=digits(1200),
        callbacks=[callback, recorder],
        optimizers=(None, callback.lr_scheduler),
    )
    trainer.train(resume_from_checkpoint=resume)
    return [lrs[0] for lrs in recorder.lrs]


def test_callback_resume_is_exact(schedule_dir, tmp_path):
    lrs = run_callback(tmp_path / "a", str(schedule_dir))
    tail = run_callback(tmp_path / "b", str(schedule_dir), resume=str(tmp_path / "a" / "checkpoint-4"))
    assert tail == lrs[4:]


def test_checkpoints_hold_the_schedule_state_in_scheduler_pt_only_and_bounded(tmp_path):
    """One resume route (scheduler.pt) for the callback too; what a checkpoint holds does not grow with the run."""
    import json

    torch.manual_seed(0)
    args = TrainingArguments(output_dir=str(tmp_path), optim="sgd", **{**COMMON, "save_steps": 1, "max_steps": 12})
    callback = MLRSNetCallback(MLRSNetSchedule(hidden_size=8, gamma=0.1))
    trainer = Trainer(
        model=DigitsNet(), args=args, train_dataset=digits(600), callbacks=[callback],
        optimizers=(None, callback.lr_scheduler),
    )  # fmt: skip
    trainer.train()
    sizes = [(tmp_path / f"checkpoint-{k}" / "scheduler.pt").stat().st_size for k in (2, 6, 12)]
    assert max(sizes) - min(sizes) < 64, sizes  # not one entry per step taken
    state = json.loads((tmp_path / "checkpoint-12" / "trainer_state.json").read_text())
    assert "MLRSNetCallback" not in state.get("stateful_callbacks", {})
    saved = torch.load(tmp_path / "checkpoint-12" / "scheduler.pt", weights_only=True)
    assert saved["last_epoch"] == 12 and "lr_history" not in saved
    assert len(callback.lr_scheduler.lr_history) == 12  # kept in memory for this run's pictures
