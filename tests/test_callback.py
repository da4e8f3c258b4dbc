"""MLRSNetCallback on a plain Trainer: meta-training equal to MLRSNetTrainer's, one LR route, clear refusals."""

import pytest
import torch
from safetensors import safe_open
from test_trainer import Recorder
from tiny import DigitsNet, digits
from transformers import Trainer, TrainingArguments, get_constant_schedule

from mlrsnet_hf import LRController, MLRSNetCallback, MLRSNetConfig, MLRSNetSchedule, MLRSNetTrainer

COMMON = dict(
    max_steps=12, per_device_train_batch_size=32, logging_steps=1, report_to="none", save_strategy="steps",
    save_steps=5, disable_tqdm=True, use_cpu=True, seed=0, learning_rate=0.1,
)  # fmt: skip
META = dict(
    meta_train=True, meta_update_interval=3, meta_horizon=2, meta_learning_rate=1e-2, gamma="auto", num_classes=10,
    auto_gamma_batches=2, snapshot_fractions=[0.25, 1.0],
)  # fmt: skip


def fresh_schedule() -> MLRSNetSchedule:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return MLRSNetSchedule(hidden_size=8, num_stages=2, gamma=1.0)


def by_trainer(out, resume=None):
    torch.manual_seed(0)
    recorder, data = Recorder(), digits()
    args = MLRSNetConfig(optim="sgd", output_dir=str(out), **COMMON, **META)
    trainer = MLRSNetTrainer(
        model=DigitsNet(dropout=0.1), args=args, train_dataset=data[:1200], meta_dataset=data[1200:],
        schedule=fresh_schedule(), callbacks=[recorder],
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=resume)
    return trainer.schedule, trainer.lr_scheduler, [lrs[0] for lrs in recorder.lrs]


def by_callback(out, resume=None):
    torch.manual_seed(0)
    recorder, data = Recorder(), digits()
    callback = MLRSNetCallback(fresh_schedule(), meta_dataset=data[1200:], **META)
    trainer = Trainer(
        model=DigitsNet(dropout=0.1), args=TrainingArguments(output_dir=str(out), optim="sgd", **COMMON),
        train_dataset=data[:1200], callbacks=[callback, recorder], optimizers=(None, callback.lr_scheduler),
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=resume)
    return callback.schedule, callback.lr_scheduler, [lrs[0] for lrs in recorder.lrs]


def test_meta_training_through_the_callback_equals_the_trainer(tmp_path):
    schedule_a, driver_a, lrs_a = by_trainer(tmp_path / "a")
    schedule_b, driver_b, lrs_b = by_callback(tmp_path / "b")
    assert lrs_a == lrs_b and len(lrs_a) == 12
    weights_a, weights_b = schedule_a.weights(), schedule_b.weights()
    assert all(torch.equal(v, weights_b[k]) for k, v in weights_a.items())
    assert not all(torch.equal(v, fresh_schedule().weights()[k]) for k, v in weights_a.items())  # it learned
    assert [s["step"] for s in driver_a.meta.snapshots] == [s["step"] for s in driver_b.meta.snapshots] == [3, 12]
    # and the callback's meta-training resumes exactly, from inside a horizon (step 5 of interval 3, horizon 2)
    _, _, tail = by_callback(tmp_path / "c", resume=str(tmp_path / "b" / "checkpoint-5"))
    assert tail == lrs_b[5:]


def test_the_callback_refuses_a_scheduler_it_does_not_own(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), optim="sgd", **COMMON)
    model = DigitsNet()
    with pytest.raises(ValueError, match=r"optimizers=\(None, callback.lr_scheduler\)"):
        Trainer(model=model, args=args, train_dataset=digits(64), callbacks=[MLRSNetCallback(fresh_schedule())])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="was given a LambdaLR"):
        Trainer(
            model=model, args=args, train_dataset=digits(64), callbacks=[MLRSNetCallback(fresh_schedule())],
            optimizers=(optimizer, get_constant_schedule(optimizer)),
        )  # fmt: skip
    with pytest.raises(TypeError, match="Unknown schedule option"):
        MLRSNetCallback(fresh_schedule(), gama=0.1)
    with pytest.raises(ValueError, match="meta_dataset"):
        MLRSNetCallback(fresh_schedule(), meta_train=True)


def test_an_lr_controller_probe_without_labels_fails_at_train_start(tmp_path):
    data = digits(200)
    unlabeled = [{"x": d["x"]} for d in data[100:]]
    callback = MLRSNetCallback(LRController(decision_interval=2, probe_size=20), probe_dataset=unlabeled)
    trainer = Trainer(
        model=DigitsNet(), args=TrainingArguments(output_dir=str(tmp_path), optim="sgd", **COMMON),
        train_dataset=data[:100], callbacks=[callback], optimizers=(None, callback.lr_scheduler),
    )  # fmt: skip
    with pytest.raises(ValueError, match="probe batches carry no"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_a_plain_trainer_with_the_callback_writes_the_trainers_schedule_repo_byte_for_byte(tmp_path):
    """The trajectory schedule meta-trained through the callback is published by the same route as the Trainer's."""
    torch.manual_seed(0)
    data = digits()
    args = MLRSNetConfig(optim="sgd", output_dir=str(tmp_path / "a"), **{**COMMON, "save_strategy": "no"}, **META)
    trainer = MLRSNetTrainer(
        model=DigitsNet(dropout=0.1), args=args, train_dataset=data[:1200], meta_dataset=data[1200:],
        schedule=fresh_schedule(),
    )  # fmt: skip
    trainer.train()
    trainer.save_schedule(tmp_path / "by-trainer", trajectory=True)
    torch.manual_seed(0)
    callback = MLRSNetCallback(fresh_schedule(), meta_dataset=data[1200:], **META)
    with pytest.raises(RuntimeError, match="after"):
        callback.save_schedule(tmp_path / "too-early")
    plain = Trainer(
        model=DigitsNet(dropout=0.1), callbacks=[callback], optimizers=(None, callback.lr_scheduler),
        args=TrainingArguments(output_dir=str(tmp_path / "b"), optim="sgd", **{**COMMON, "save_strategy": "no"}),
        train_dataset=data[:1200],
    )  # fmt: skip
    plain.train()
    callback.save_schedule(tmp_path / "by-callback", trajectory=True)
    a, b = tmp_path / "by-trainer", tmp_path / "by-callback"
    assert (a / "config.json").read_bytes() == (b / "config.json").read_bytes()
    # the weights' file: the same tensors, bytes, and metadata (safetensors writes its metadata's keys in a random order)
    with safe_open(a / "model.safetensors", "pt") as x, safe_open(b / "model.safetensors", "pt") as y:
        names = sorted(x.keys())
        assert x.metadata() == y.metadata() and names == sorted(y.keys())
        for name in names:
            assert x.get_tensor(name).dtype == y.get_tensor(name).dtype
            assert torch.equal(x.get_tensor(name), y.get_tensor(name)), name
    saved = MLRSNetSchedule.from_pretrained(tmp_path / "by-callback")
    assert saved.num_stages == 2 and saved.meta_training["snapshots"]["steps"] == [3, 12]  # the trajectory
    assert saved.meta_training["meta_updates"] == 4 and saved.meta_training["optimizer"] == "SGD"
    assert callback.saved_schedule == {"path": str(tmp_path / "by-callback")}
