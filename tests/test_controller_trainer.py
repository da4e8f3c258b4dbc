"""The LR controller inside MLRSNetTrainer and a plain Trainer (MLRSNetCallback): LRs, equality, exact resume."""

import pytest
import torch
from test_trainer import Recorder
from tiny import DigitsNet, digits
from transformers import Trainer, TrainingArguments

from mlrsnet_hf import LRController, MLRSNetCallback, MLRSNetConfig, MLRSNetTrainer, ScheduleFileError
from mlrsnet_hf.hub import load_any_schedule

COMMON = dict(
    max_steps=12, per_device_train_batch_size=32, logging_steps=1, report_to="none", save_strategy="steps",
    save_steps=7, disable_tqdm=True, use_cpu=True, seed=0, learning_rate=0.05,
)  # fmt: skip


def always_increase() -> LRController:
    controller = LRController(decision_interval=4, probe_size=50)
    with torch.no_grad():
        for p in controller.parameters():
            p.zero_()
        controller.action_net.bias.copy_(torch.tensor([0.0, 0.0, 1.0]))  # argmax: "increase"
    return controller


@pytest.fixture
def controller_dir(tmp_path):
    """A controller whose decisions depend on the observed state (random actor, statistics near the real ones)."""
    torch.manual_seed(3)
    controller = LRController(decision_interval=4, probe_size=50)
    with torch.no_grad():
        for p in controller.parameters():
            if p.dim() == 2:
                p.normal_(0, 2.0)
        controller.obs_mean.copy_(torch.tensor([2.0, 2.0, 0.01, 1e-4, 0.0, 0.01, 0.05], dtype=torch.float64))
        controller.obs_var.copy_(torch.tensor([0.5, 0.5, 1e-4, 1e-8, 1e-4, 1e-4, 1e-3], dtype=torch.float64))
    controller.save_pretrained(tmp_path / "controller")
    return tmp_path / "controller"


def run_trainer(out, schedule, resume=None, **kwargs):
    torch.manual_seed(0)
    recorder = Recorder()
    data = digits()
    args = MLRSNetConfig(output_dir=str(out), **{"optim": "sgd", **COMMON, **kwargs})
    trainer = MLRSNetTrainer(
        model=DigitsNet(dropout=0.1), args=args, train_dataset=data[:1200], meta_dataset=data[1200:],
        schedule=schedule, callbacks=[recorder],
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=resume)
    return trainer, [lrs[0] for lrs in recorder.lrs]


def run_callback(out, schedule, resume=None):
    torch.manual_seed(0)
    recorder = Recorder()
    data = digits()
    callback = MLRSNetCallback(schedule, probe_dataset=data[1200:])
    args = TrainingArguments(output_dir=str(out), optim="sgd", **COMMON)
    trainer = Trainer(
        model=DigitsNet(dropout=0.1),
        args=args,
        train_dataset=data[:1200],
        callbacks=[callback, recorder],
        optimizers=(None, callback.lr_scheduler),
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer, [lrs[0] for lrs in recorder.lrs]


def test_decisions_every_k_steps_from_learning_rate(tmp_path):
    trainer, lrs = run_trainer(tmp_path / "a", always_increase())
    assert lrs == pytest.approx([0.05 * 1.05 ** (1 + step // 4) for step in range(12)], rel=1e-12)
    assert trainer.lr_scheduler.lr_history == lrs
    logged = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert logged == pytest.approx(lrs)  # the Trainer logs the LR actually used


def test_trainer_and_callback_set_the_same_lrs(controller_dir, tmp_path):
    _, by_trainer = run_trainer(tmp_path / "a", str(controller_dir))
    _, by_callback = run_callback(tmp_path / "b", str(controller_dir))
    assert by_trainer == by_callback
    assert len(set(by_trainer)) > 1  # the controller acted on the observed state


def test_resume_mid_interval_is_exact(controller_dir, tmp_path):
    full, lrs = run_trainer(tmp_path / "a", str(controller_dir))
    _, tail = run_trainer(tmp_path / "b", str(controller_dir), resume=str(tmp_path / "a" / "checkpoint-7"))
    assert tail == lrs[7:]  # step 7 is mid-interval: interval losses and last predictions were restored
    _, by_callback = run_callback(tmp_path / "c", str(controller_dir))
    _, callback_tail = run_callback(tmp_path / "d", str(controller_dir), resume=str(tmp_path / "c" / "checkpoint-7"))
    assert callback_tail == by_callback[7:]


def test_controller_errors(controller_dir, tmp_path):
    with pytest.raises(ValueError, match="PPO"):
        run_trainer(tmp_path / "a", str(controller_dir), meta_train=True)
    with pytest.raises(ValueError, match="probe_dataset"):
        args = TrainingArguments(output_dir=str(tmp_path / "b"), optim="sgd", **COMMON)
        Trainer(
            model=DigitsNet(), args=args, train_dataset=digits(64), callbacks=[MLRSNetCallback(str(controller_dir))]
        ).train()
    assert isinstance(load_any_schedule(controller_dir), LRController)
    config = controller_dir / "config.json"
    config.write_text(config.read_text().replace('"lr_controller"', '"something_else"'))
    with pytest.raises(ScheduleFileError, match="something_else"):
        load_any_schedule(controller_dir)
