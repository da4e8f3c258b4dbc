"""DeepSpeed: a "scheduler" block and the plain-Trainer path are refused; MLRSNetTrainer sets each LR in time.

Under DeepSpeed, accelerate steps the optimizer inside ``accelerator.backward`` of the last micro-batch. The ordering
is tested here with a test double of that backward (no DeepSpeed needed); tests/scripts/deepspeed_transfer.py runs
the real engine (ZeRO 1-3, 2 CPU processes) where DeepSpeed is installed.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, accelerate_launch
from tiny import DigitsNet, digits
from transformers import TrainerCallback, TrainerControl, TrainerState

from mlrsnet_hf import LRController, MLRSNetCallback, MLRSNetConfig, MLRSNetSchedule, MLRSNetTrainer
from mlrsnet_hf.engines import check_deepspeed_config, check_deepspeed_meta_training, deepspeed_config


def deepspeed_args(config: dict) -> SimpleNamespace:
    """TrainingArguments as the Trainer leaves them under DeepSpeed (only what the checks read)."""
    return SimpleNamespace(hf_deepspeed_config=SimpleNamespace(config=config))


def schedule() -> MLRSNetSchedule:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return MLRSNetSchedule(hidden_size=4, gamma=0.1)


@pytest.mark.parametrize("event", ["on_init_end", "on_train_begin"])
@pytest.mark.parametrize("in_trainer", [False, True])
@pytest.mark.parametrize(("block", "kind"), [("scheduler", "WarmupLR"), ("optimizer", "AdamW")])
def test_a_deepspeed_scheduler_or_optimizer_block_is_refused(event, in_trainer, block, kind):
    callback = MLRSNetCallback(schedule())
    callback.lr_before_backward = in_trainer  # as MLRSNetTrainer sets it under DeepSpeed
    args = deepspeed_args({"zero_optimization": {"stage": 2}, block: {"type": kind, "params": {}}})
    with pytest.raises(
        ValueError, match=rf'The "{block}" block of the DeepSpeed config \(type {kind}\) is not supported.*Remove the'
    ):
        getattr(callback, event)(args, TrainerState(), TrainerControl(), lr_scheduler=callback.lr_scheduler)


@pytest.mark.parametrize("event", ["on_init_end", "on_train_begin"])
def test_a_plain_trainer_under_deepspeed_is_refused(event):
    callback = MLRSNetCallback(schedule())
    args = deepspeed_args({"zero_optimization": {"stage": 3}})
    with pytest.raises(ValueError, match="cannot drive a plain Trainer under DeepSpeed.*Use MLRSNetTrainer"):
        getattr(callback, event)(args, TrainerState(), TrainerControl(), lr_scheduler=callback.lr_scheduler)


def test_the_checks_read_a_real_hf_deepspeed_config():
    pytest.importorskip("deepspeed")
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    config = HfTrainerDeepSpeedConfig({"zero_optimization": {"stage": 1}, "scheduler": {"type": "WarmupLR"}})
    found = deepspeed_config(SimpleNamespace(hf_deepspeed_config=config))
    with pytest.raises(ValueError, match="scheduler"):
        check_deepspeed_config(found)
    assert deepspeed_config(SimpleNamespace()) is None  # no DeepSpeed: nothing to check
    with pytest.raises(ValueError, match="Meta-training under DeepSpeed is not supported"):
        check_deepspeed_meta_training(True)
    check_deepspeed_meta_training(False)


class DeepSpeedLikeBackward(TrainerCallback):
    """A test double of accelerate's DeepSpeed backward: the optimizer step (then zero-grad) runs inside
    ``accelerator.backward`` of the last micro-batch, one parameter group at a time as ZeRO's does, and the
    Trainer's ``optimizer.step()`` does nothing.

    ``used`` is the LR of every step the inner optimizer took (group 0's call).
    """

    def __init__(self) -> None:
        self.used: list[float] = []
        self.trainer = None

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        accelerator, inner = self.trainer.accelerator, optimizer.optimizer
        optimizer.step = lambda *a, **k: None  # accelerate's DeepSpeedOptimizerWrapper.step
        backward = accelerator.backward

        def deepspeed_backward(loss, **kw):
            backward(loss, **kw)
            if accelerator.sync_gradients:  # engine.step(): ZeRO 1-2 step the torch optimizer one group at a time
                groups = inner.param_groups
                for group in groups:
                    inner.param_groups = [group]
                    inner.step()
                inner.param_groups = groups
                inner.zero_grad()
                self.used.append(float(groups[0]["lr"]))

        accelerator.backward = deepspeed_backward


class UsedLRs(TrainerCallback):
    """The LR of every step the optimizer took (without the double)."""

    def __init__(self) -> None:
        self.used: list[float] = []

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        optimizer.optimizer.register_step_post_hook(  # (after the schedule's pre-hook)
            lambda opt, a, k: self.used.append(float(opt.param_groups[0]["lr"]))
        )


def run(out, family: str, double: bool, fix: bool):
    torch.manual_seed(0)
    data = digits()
    chosen = schedule() if family == "mlrsnet" else LRController(decision_interval=2, probe_size=32)
    args = MLRSNetConfig(
        output_dir=str(out), max_steps=8, per_device_train_batch_size=16, gradient_accumulation_steps=2,
        logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0,
        learning_rate=0.1, max_grad_norm=0.0, optim="sgd",
    )  # fmt: skip
    recorder = DeepSpeedLikeBackward() if double else UsedLRs()
    trainer = MLRSNetTrainer(
        model=DigitsNet(batchnorm=False), args=args, train_dataset=data[:512], meta_dataset=data[1200:],
        schedule=chosen, callbacks=[recorder],
    )  # fmt: skip
    recorder.trainer = trainer
    trainer.mlrsnet_callback.lr_before_backward = fix  # what MLRSNetTrainer sets when DeepSpeed is enabled
    trainer.train()
    logged = [e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e]
    return recorder.used, trainer.lr_scheduler.lr_history, logged, trainer.model.state_dict()


@pytest.mark.parametrize("family", ["mlrsnet", "controller"])
def test_under_a_deepspeed_like_backward_each_step_uses_its_own_lr(family, tmp_path):
    used, history, logged, weights = run(tmp_path / "ref", family, double=False, fix=False)
    assert len(used) == 8 and used == history == logged
    assert len(set(used)) > 1  # the schedule does move the LR
    # The fix: the LR of step t is set after the last micro-batch's forward, before its backward steps.
    ds_used, ds_history, ds_logged, ds_weights = run(tmp_path / "ds", family, double=True, fix=True)
    assert ds_used == ds_history == ds_logged == used
    assert all(torch.equal(v, ds_weights[k]) for k, v in weights.items())
    # (Set at on_pre_optimizer_step, every LR reached the optimizer one step late, as the real engine showed with
    # ZeRO-1 on CPU; the optimizer's step hooks, the route of every other loop, fire once per group here.)


def launch(out: Path, *script_args: str) -> dict:
    """tests/scripts/deepspeed_transfer.py on 2 CPU processes; what rank 0 and rank 1 recorded."""
    out.mkdir()
    done = accelerate_launch(
        "deepspeed_transfer.py", str(out), *script_args, timeout=900, env={"DS_ACCELERATOR": "cpu"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize(("stage", "family"), [(1, "mlrsnet"), (2, "mlrsnet"), (3, "mlrsnet"), (3, "controller")])
def test_deepspeed_zero_on_two_cpu_processes_uses_the_schedules_lr(stage, family, tmp_path):
    """The real engine: 2 CPU processes (gloo), ZeRO ``stage``; compared with the same run under DDP."""
    pytest.importorskip("deepspeed")
    results = {
        "ddp": launch(tmp_path / "ddp", "0", family),
        "zero": launch(tmp_path / "zero", str(stage), family),
    }
    for engine, ranks in results.items():
        for rank in ranks:
            assert len(rank["used"]) == 6, engine
            assert rank["used"] == rank["history"] == rank["logged"], engine  # used = set = logged, exactly
            assert rank["one_lr_per_step"]  # ZeRO steps the inner optimizer once per parameter group
        assert ranks[0]["used"] == ranks[1]["used"]
        assert [r["deepspeed"] for r in ranks] == [engine == "zero"] * 2
        assert [r["zero_stage"] for r in ranks] == [stage if engine == "zero" else None] * 2
    ddp, zero = results["ddp"][0]["used"], results["zero"][0]["used"]
    assert zero == pytest.approx(ddp, rel=1e-6)  # the same LR sequence as without DeepSpeed
    assert len(set(zero)) > 1
    if family == "mlrsnet":
        refused = results["zero"][0]["refused"]  # under the real engine, before any training
        assert refused["meta_train"].startswith("Meta-training under DeepSpeed is not supported")
        assert refused["scheduler_block"].startswith('The "scheduler" block of the DeepSpeed config (type WarmupLR)')
        assert refused["optimizer_block"].startswith('The "optimizer" block of the DeepSpeed config (type SGD)')
        assert refused["plain_trainer"].startswith("MLRSNetCallback cannot drive a plain Trainer under DeepSpeed")


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_deepspeed_zero3_run_resumes_its_lr_sequence_exactly(tmp_path):
    pytest.importorskip("deepspeed")
    full = launch(tmp_path / "full", "3", "--save")[0]
    checkpoint = tmp_path / "full" / "run" / "checkpoint-3"
    assert (checkpoint / "scheduler.pt").is_file()  # the driver's state, next to DeepSpeed's own checkpoint
    resumed = launch(tmp_path / "resumed", "3", "--resume", str(checkpoint))[0]
    assert resumed["steps"] == [3, 4, 5] and resumed["used"] == full["used"][3:]
    assert resumed["logged"][-3:] == full["logged"][3:]


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("zero_stage", [None, "3"])
def test_the_shipped_deepspeed_config_runs_as_written(zero_stage, tmp_path):
    """examples/accelerate/deepspeed_cpu.yaml (ZeRO-2), and with --zero_stage 3 as its comment says."""
    pytest.importorskip("deepspeed")
    config = str(REPO / "examples" / "accelerate" / "deepspeed_cpu.yaml")
    stage = ["--zero_stage", zero_stage] if zero_stage else []
    done = accelerate_launch(
        "deepspeed_transfer.py", str(tmp_path), "0", launch=["--config_file", config, *stage], timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]  # two processes
    for rank in ranks:
        assert rank["deepspeed"] and rank["world_size"] == 2 and rank["zero_stage"] == int(zero_stage or 2)
        assert len(rank["used"]) == 6
        assert rank["used"] == rank["history"] == rank["logged"]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_scheduler_block_in_an_accelerate_deepspeed_config_file_is_refused(tmp_path):
    """The config-file route (no TrainingArguments.deepspeed): the Trainer's DeepSpeed plugin is read."""
    pytest.importorskip("deepspeed")
    ds = {
        "zero_optimization": {"stage": 2}, "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto", "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 2}},
    }  # fmt: skip
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    (tmp_path / "accelerate.yaml").write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\ndeepspeed_config:\n"
        f"  deepspeed_config_file: {tmp_path / 'ds.json'}\n  zero3_init_flag: false\n"
        "num_machines: 1\nnum_processes: 2\nuse_cpu: true\n"
    )
    done = accelerate_launch(
        "deepspeed_transfer.py",
        str(tmp_path),
        "0",
        launch=["--config_file", str(tmp_path / "accelerate.yaml")],
        timeout=900,
    )
    assert done.returncode != 0
    assert 'ValueError: The "scheduler" block of the DeepSpeed config (type WarmupLR)' in done.stderr
