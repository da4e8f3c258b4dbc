"""MLRSNetTrainer and MLRSNetCallback in transfer mode: the LR of every step, logging, options, bad input."""

import copy
import json
from types import SimpleNamespace

import pytest
import torch
from tiny import DigitsNet, digits
from transformers import Trainer, TrainerCallback, TrainingArguments

from mlrsnet_hf import MLRSNetCallback, MLRSNetConfig, MLRSNetSchedule, MLRSNetTrainer, ScheduleFileError, auto_gamma


class Recorder(TrainerCallback):
    """The LR each optimizer step actually used, read from the optimizer right after the step."""

    def __init__(self):
        self.lrs = []

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.lrs.append([float(group["lr"]) for group in optimizer.param_groups])


def training_losses(model):
    """Record every training-mode forward's loss (what the schedule reads)."""
    losses = []

    def hook(module, args, kwargs, output):
        if module.training and torch.is_grad_enabled():
            losses.append(output["loss"].detach().float().item())

    model.register_forward_hook(hook, with_kwargs=True)
    return losses


def config(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path / "out"), optim="sgd", max_steps=9, per_device_train_batch_size=32, logging_steps=1,
        report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0, num_classes=10,
    )  # fmt: skip
    return MLRSNetConfig(**{**defaults, **kwargs})


def replay(schedule_dir, losses, total, **start):
    """The LR sequence the released recipe gives for these step losses (a fresh copy of the schedule)."""
    run = MLRSNetSchedule.from_pretrained(schedule_dir).start(**start)
    lrs = []
    for step, loss in enumerate(losses):
        stage = run.stage_at(step, total)
        if stage != run.stage:
            run.enter_stage(stage)
        lrs.append(run.step(loss))
    return lrs


def test_transfer_sets_and_logs_the_lr_of_each_step(schedule_dir, tmp_path):
    torch.manual_seed(0)
    model = DigitsNet()
    losses = training_losses(model)
    recorder = Recorder()
    trainer = MLRSNetTrainer(
        model=model, args=config(tmp_path, schedule=str(schedule_dir)), train_dataset=digits(600), callbacks=[recorder]
    )
    trainer.train()
    used = [lrs[0] for lrs in recorder.lrs]
    assert len(used) == 9 and len(set(used)) > 3
    # LR of step t from the loss of step t (between stage entries the fused step: the same up to rounding)
    assert used == pytest.approx(replay(schedule_dir, losses, 9), rel=1e-6)
    logged = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert logged == used  # the logged learning_rate is the LR actually used
    assert trainer.lr_scheduler.get_last_lr()[0] == used[-1]
    assert [h["schedule_stage"] for h in trainer.state.log_history if "loss" in h] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(lrs == [lrs[0]] * len(lrs) for lrs in recorder.lrs)  # every param group


def test_callback_gives_a_plain_trainer_the_same_lr_sequence(schedule_dir, tmp_path):
    torch.manual_seed(0)
    rec_a = Recorder()
    MLRSNetTrainer(
        model=DigitsNet(),
        args=config(tmp_path, schedule=str(schedule_dir)),
        train_dataset=digits(600),
        callbacks=[rec_a],
    ).train()
    torch.manual_seed(0)
    rec_b = Recorder()
    args = TrainingArguments(
        output_dir=str(tmp_path / "plain"), max_steps=9, per_device_train_batch_size=32, logging_steps=1,
        report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0, optim="sgd",
        lr_scheduler_type="linear",
    )  # fmt: skip
    callback = MLRSNetCallback(MLRSNetSchedule.from_pretrained(schedule_dir), num_classes=10)
    plain = Trainer(
        model=DigitsNet(), args=args, train_dataset=digits(600), callbacks=[callback, rec_b],
        optimizers=(None, callback.lr_scheduler),
    )  # fmt: skip
    plain.train()
    assert rec_a.lrs == rec_b.lrs
    logged = [h["learning_rate"] for h in plain.state.log_history if "learning_rate" in h]
    assert logged == [lrs[0] for lrs in rec_b.lrs]  # the plain Trainer's logs are true too


def test_the_lr_is_set_inside_optimizer_step_as_in_every_loop(schedule_dir, tmp_path):
    """One LR route for the Trainer, the callback and a loop of your own: the optimizer's step pre-hook, after
    clipping and after on_pre_optimizer_step (a callback there sees the last step's LR; it cannot change this
    step's), before the update; the schedule's callback is an ordinary callback of the Trainer's list."""
    seen = {"pre": [], "post": []}

    class Watch(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            seen["pre"].append(optimizer.param_groups[0]["lr"])
            optimizer.param_groups[0]["lr"] = 123.0  # overwritten by the schedule inside step()

        def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            seen["post"].append(optimizer.param_groups[0]["lr"])

    trainer = MLRSNetTrainer(
        model=DigitsNet(), args=config(tmp_path, schedule=str(schedule_dir), logging_steps=1),
        train_dataset=digits(600), callbacks=[Watch()],
    )  # fmt: skip
    trainer.train()
    assert trainer.mlrsnet_callback in trainer.callback_handler.callbacks
    lrs = trainer.lr_scheduler.lr_history
    assert len(lrs) == trainer.lr_scheduler.run.num_steps == 9
    assert seen["post"] == pytest.approx(lrs, rel=0, abs=0)
    assert seen["pre"][1:] == seen["post"][:-1]  # before the step: what the previous step left
    logged = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert logged == pytest.approx(lrs, rel=1e-6)
    assert not trainer.optimizer.optimizer._optimizer_step_pre_hooks  # unhooked at the end of the run


class OwnLoss(MLRSNetTrainer):
    """A subclass that computes the loss its own way, without Trainer.compute_loss (here the model's loss)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        return (outputs["loss"], outputs) if return_outputs else outputs["loss"]


def test_the_loss_is_read_in_compute_loss_or_by_a_hook_when_a_subclass_computes_it(schedule_dir, tmp_path):
    """MLRSNetTrainer reads the loss in compute_loss (a forward hook slows every call of the model); a subclass with
    its own compute_loss gets the hook, and the same LRs."""

    class Hooks(TrainerCallback):
        def __init__(self):
            self.counts = []

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.counts.append(len(model._forward_hooks))

    runs = {}
    for cls in (MLRSNetTrainer, OwnLoss):
        torch.manual_seed(0)
        recorder, hooks, model = Recorder(), Hooks(), DigitsNet()
        args = config(tmp_path / cls.__name__, schedule=str(schedule_dir))
        cls(model=model, args=args, train_dataset=digits(600), callbacks=[recorder, hooks]).train()
        runs[cls] = recorder.lrs, hooks.counts, len(model._forward_hooks)
    assert runs[MLRSNetTrainer][1:] == ([0] * 9, 0)
    assert runs[OwnLoss][1:] == ([1] * 9, 0)  # removed at the end of training
    assert runs[OwnLoss][0] == runs[MLRSNetTrainer][0] and len({lrs[0] for lrs in runs[OwnLoss][0]}) > 3


def test_a_loss_the_trainer_computes_label_smoothing_or_compute_loss_func_is_the_one_read(schedule_dir, tmp_path):
    """With label_smoothing_factor or compute_loss_func the model returns no loss: the schedule reads the Trainer's."""

    def cross_entropy(outputs, labels, num_items_in_batch=None):  # the model's own loss, computed by the Trainer
        return torch.nn.functional.cross_entropy(outputs["logits"], labels)

    runs = {}
    for name, kwargs in (("model", {}), ("compute_loss_func", {"compute_loss_func": cross_entropy})):
        torch.manual_seed(0)
        recorder = Recorder()
        args = config(tmp_path / name, schedule=str(schedule_dir))
        MLRSNetTrainer(model=DigitsNet(), args=args, train_dataset=digits(600), callbacks=[recorder], **kwargs).train()
        runs[name] = [lrs[0] for lrs in recorder.lrs]
    assert runs["compute_loss_func"] == runs["model"] and len(set(runs["model"])) > 3  # (it raised at step 1)

    torch.manual_seed(0)
    model, recorder = DigitsNet(), Recorder()
    model.config = SimpleNamespace(problem_type=None)  # (the Trainer reads it under label smoothing)
    smoothed = []
    real = MLRSNetTrainer.compute_loss

    def spy(self, *args, **kwargs):
        result = real(self, *args, **kwargs)
        smoothed.append(float(result[0] if isinstance(result, tuple) else result))
        return result

    args = config(tmp_path / "smoothing", schedule=str(schedule_dir), label_smoothing_factor=0.1)
    trainer = MLRSNetTrainer(model=model, args=args, train_dataset=digits(600), callbacks=[recorder])
    trainer.compute_loss = spy.__get__(trainer)
    trainer.train()
    assert [lrs[0] for lrs in recorder.lrs] == pytest.approx(replay(schedule_dir, smoothed, 9), rel=1e-6)


def test_callback_options_and_path(schedule_dir, tmp_path):
    callback = MLRSNetCallback(str(schedule_dir), gamma=0.1)
    assert callback.schedule.name_or_path == str(schedule_dir)
    with pytest.raises(TypeError, match="a registered schedule family .* or a path/repo id of one, got int"):
        MLRSNetCallback(42)


def test_gradient_accumulation_averages_micro_batch_losses(schedule_dir, tmp_path):
    torch.manual_seed(0)
    model = DigitsNet()
    losses = training_losses(model)
    recorder = Recorder()
    args = config(tmp_path, schedule=str(schedule_dir), gradient_accumulation_steps=3, per_device_train_batch_size=16)
    MLRSNetTrainer(model=model, args=args, train_dataset=digits(900), callbacks=[recorder]).train()
    assert len(losses) == 27
    step_losses = [sum(losses[i : i + 3]) / 3 for i in range(0, 27, 3)]
    expected = replay(schedule_dir, step_losses, 9)
    assert [lrs[0] for lrs in recorder.lrs] == pytest.approx(expected, rel=1e-6)


def test_gamma_auto_uses_the_average_training_loss_at_stage_starts(tmp_path):
    torch.manual_seed(2)
    schedule = MLRSNetSchedule(hidden_size=16, num_stages=3, gamma="auto")
    torch.manual_seed(0)
    model = DigitsNet(batchnorm=False)  # (BN statistics would move with the first training forward)
    initial = copy.deepcopy(model).eval()
    data = digits(600)
    args = config(tmp_path, auto_gamma_batches=4, schedule=None)
    trainer = MLRSNetTrainer(model=model, args=args, train_dataset=data, schedule=schedule)
    trainer.train()
    with torch.no_grad():  # the first 4 batches of 32, in order, eval mode, at the initial weights
        batches = [data[i * 32 : (i + 1) * 32] for i in range(4)]
        mean = (
            sum(
                initial(torch.stack([d["x"] for d in b]), torch.stack([d["labels"] for d in b]))["loss"].item()
                for b in batches
            )
            / 4
        )
    assert trainer.lr_scheduler.run.gammas[0] == pytest.approx(auto_gamma(mean, 10), rel=1e-5)
    assert all(g is not None and g > 0 for g in trainer.lr_scheduler.run.gammas)
    assert len(set(trainer.lr_scheduler.run.gammas)) == 3  # recomputed at each stage


def test_adamw_defaults_to_relative_mode(schedule_dir, tmp_path, caplog):
    torch.manual_seed(0)
    recorder = Recorder()
    args = config(tmp_path, schedule=str(schedule_dir), optim="adamw_torch", learning_rate=1e-3, max_steps=30)
    with caplog.at_level("INFO"):
        trainer = MLRSNetTrainer(model=DigitsNet(), args=args, train_dataset=digits(1000), callbacks=[recorder])
        trainer.train()
    assert "using gamma='relative'" in caplog.text
    used = [lrs[0] for lrs in recorder.lrs]
    assert used[0] == pytest.approx(1e-3, rel=1e-6)
    assert all(0 < lr <= 1e-3 * (1 + 1e-6) for lr in used)
    assert trainer.lr_scheduler.run.gamma == "relative"


def test_bf16_autocast_and_clipping(schedule_dir, tmp_path):
    torch.manual_seed(0)
    model = DigitsNet()
    losses = training_losses(model)
    recorder = Recorder()
    args = config(tmp_path, schedule=str(schedule_dir), bf16=True, max_grad_norm=0.1)
    MLRSNetTrainer(model=model, args=args, train_dataset=digits(600), callbacks=[recorder]).train()
    assert [lrs[0] for lrs in recorder.lrs] == pytest.approx(replay(schedule_dir, losses, 9), rel=1e-6)


def test_nan_loss_keeps_the_last_lr_and_state(schedule_dir, tmp_path, caplog):
    torch.manual_seed(0)
    model = DigitsNet(nan_at_call=4)
    recorder = Recorder()
    with caplog.at_level("WARNING"):
        trainer = MLRSNetTrainer(
            model=model,
            args=config(tmp_path, schedule=str(schedule_dir)),
            train_dataset=digits(600),
            callbacks=[recorder],
        )
        trainer.train()
    used = [lrs[0] for lrs in recorder.lrs]
    assert used[3] == used[2]  # the NaN step reuses the last good LR
    assert all(torch.isfinite(torch.tensor(used)))
    assert trainer.lr_scheduler.run.num_skipped == 1 and trainer.lr_scheduler.run.num_steps == 8
    assert torch.isfinite(trainer.lr_scheduler.run.state.h).all()
    assert "Non-finite training loss" in caplog.text


def test_bad_input_is_a_clear_error(schedule_dir, tmp_path):
    with pytest.raises(ValueError, match="Transfer mode .* needs a learned schedule"):
        MLRSNetTrainer(model=DigitsNet(), args=config(tmp_path), train_dataset=digits(64))
    with pytest.raises(ValueError, match="meta_train=True needs meta_dataset"):
        MLRSNetTrainer(model=DigitsNet(), args=config(tmp_path, meta_train=True), train_dataset=digits(64))
    with pytest.raises(ValueError, match="gamma must be"):
        config(tmp_path, gamma="cosine")
    bad = json.loads((schedule_dir / "config.json").read_text())
    (schedule_dir / "config.json").write_text(json.dumps({**bad, "gate_layout": "fgio"}))
    with pytest.raises(ScheduleFileError, match="Unknown gate_layout 'fgio'"):
        MLRSNetTrainer(model=DigitsNet(), args=config(tmp_path, schedule=str(schedule_dir)), train_dataset=digits(64))
    with pytest.raises(TypeError, match="must be an MLRSNetConfig"):
        MLRSNetTrainer(model=DigitsNet(), args=TrainingArguments(output_dir=str(tmp_path)), train_dataset=digits(64))


def test_needs_num_classes_for_auto_gamma(tmp_path):
    schedule = MLRSNetSchedule(hidden_size=8, gamma="auto")
    args = config(tmp_path, num_classes=None, schedule=None)
    trainer = MLRSNetTrainer(model=DigitsNet(), args=args, train_dataset=digits(64), schedule=schedule)
    with pytest.raises(ValueError, match="pass num_classes"):
        trainer.train()


def test_config_is_a_cli():
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(MLRSNetConfig).parse_args_into_dataclasses(
        [
            "--output_dir",
            "o",
            "--schedule",
            "org/x",
            "--gamma",
            "0.5",
            "--meta_update_interval",
            "7",
            "--report_to",
            "none",
        ]
    )
    assert args.gamma == 0.5 and args.meta_update_interval == 7 and args.schedule == "org/x"
    assert args.optim == TrainingArguments(output_dir="o").optim  # TrainingArguments' default (AdamW), not SGD


def test_push_schedule_to_hub_uploads_the_trained_schedule(schedule_dir, tmp_path, monkeypatch):
    from pathlib import Path

    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoUrl

    uploaded = {}

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploaded.update(repo_id=repo_id, files={p.name for p in Path(folder_path).iterdir()})
        uploaded["config"] = json.loads((Path(folder_path) / "config.json").read_text())
        return "https://huggingface.co/org/x/commit/0"

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: RepoUrl(f"https://huggingface.co/{repo_id}"))
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    torch.manual_seed(0)
    data = digits(400)
    args = config(tmp_path, schedule=str(schedule_dir), meta_train=True, meta_update_interval=3)
    trainer = MLRSNetTrainer(model=DigitsNet(), args=args, train_dataset=data[:300], meta_dataset=data[300:])
    trainer.train()
    trainer.push_schedule_to_hub("org/mlrsnet-digits", meta_training={"dataset": "sklearn/digits"})
    assert uploaded["repo_id"] == "org/mlrsnet-digits"
    assert uploaded["files"] == {"config.json", "model.safetensors", "README.md", "lr_response.png", "lr_used.png"}
    assert uploaded["config"]["meta_training"]["dataset"] == "sklearn/digits"
    assert uploaded["config"]["meta_training"]["max_steps"] == 9
