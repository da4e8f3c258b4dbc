"""What a resume takes back from scheduler.pt is checked before the first resumed step (issue 35 item 1).

A bad value raises a CheckpointStateError (a ValueError) naming the checkpoint and the field; no step is taken.
"""

import copy
import math

import pytest
import torch
from safetensors.torch import load_file
from test_plain_loop import META, TRANSFER, plain_loop
from tiny import DigitsNet, digits

from mlrsnet_hf import MLRSNetConfig, MLRSNetDriver, MLRSNetSchedule, MLRSNetTrainer
from mlrsnet_hf.state_checks import CheckpointStateError


@pytest.fixture(scope="module")
def checkpoint():
    """A meta-training loop's checkpoint at step 5 (stage 0 entered, inside a meta horizon)."""
    *_, saved = plain_loop(META, stop_at=5)
    return saved


def corrupt(state, path, value):
    state = copy.deepcopy(state)
    *parents, last = path
    target = state
    for key in parents:
        target = target[key]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value(target[last]) if callable(value) else value
    return state


def nan_like(tensor):
    return torch.full_like(tensor, math.nan)


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        (("run", "gammas"), lambda g: [-1.0, *g[1:]], r"run.gammas\[0\] must be > 0, got -1.0"),
        (("run", "gammas"), [0.3], r"run.gammas must hold one gamma per stage \(2\)"),
        (("run", "h"), nan_like, r"run.h \(the LSTM state\) holds non-finite values"),
        (("run", "c"), lambda c: c[:, :3], r"run.c \(the LSTM state\) has shape \(1, 3\), expected \(1, 8\)"),
        (("run", "stage"), 7, "run.stage must be an integer from -1 to 1, got 7"),
        (("run", "num_steps"), -3, "run.num_steps must be an integer >= 0"),
        (("run", "last_lr"), math.inf, "run.last_lr must be a finite number, got inf"),
        (("run", "base_lr"), -0.1, r"run.base_lr must be > 0, got -0.1"),
        (("last_lrs",), [math.nan, 0.1], r"last_lrs\[0\] must be a finite number, got nan"),
        (("initial_lrs",), [0.1], r"initial_lrs must hold one LR per parameter group \(2\)"),
        (("last_epoch",), KeyError, "the field 'last_epoch' is missing"),
        (("run",), KeyError, "holds no run state"),
        (("schedule", "stages.0.head.bias"), nan_like, r"schedule\['stages.0.head.bias'\] holds non-finite values"),
        (("schedule", "stages.0.head.weight"), lambda w: w[:, :2], r"schedule\['stages.0.head.weight'\] has shape"),
        (("meta", "optimizer", "state"), lambda s: {k: {**v, "exp_avg": nan_like(v["exp_avg"])} for k, v in s.items()},
         r"meta.optimizer\['state'\]\[0\]\['exp_avg'\] holds non-finite values"),
        (("meta", "num_updates"), 2.5, "meta.num_updates must be an integer"),
        (("meta", "optimizer", "state", 0, "exp_avg"), lambda t: t.reshape(-1)[:-1],
         r"meta.optimizer\['state'\]\[0\]\['exp_avg'\] has shape"),
        (("meta", "optimizer", "state", 0, "step"), -1, r"meta.optimizer\['state'\]\[0\]\['step'\] must be"),
        (("meta", "optimizer", "param_groups", 0, "lr"), "x", r"meta.optimizer\['param_groups'\]\[0\]\['lr'\]"),
        (("meta", "horizon", 0, "stage"), -1, r"meta.horizon\[0\]\['stage'\] must be an integer from 0 to 1"),
        (("meta", "horizon", 0, "delta", 0), lambda d: d[:1], r"meta.horizon\[0\]\['delta'\]\[0\] has shape"),
        (("meta", "horizon", 0, "h"), KeyError, r"meta.horizon\[0\] must hold"),
        (("run", "stage"), -1, "run.stage is -1 \\(no stage entered\\), but the run has taken steps"),
    ],
)  # fmt: skip
def test_a_bad_value_in_scheduler_pt_is_named_before_the_first_resumed_step(checkpoint, path, value, match):
    bad = {**checkpoint, "driver": corrupt(checkpoint["driver"], path, value)}
    with pytest.raises(CheckpointStateError, match=f"the checkpoint's scheduler.pt cannot be resumed: .*{match}"):
        plain_loop(META, resume=bad)  # the driver refuses at bind: the loop takes no step


def test_a_foreign_state_is_named_not_a_key_error(checkpoint):
    with pytest.raises(CheckpointStateError, match="scheduler.pt cannot be resumed: the field .* is missing"):
        plain_loop(META, resume={**checkpoint, "driver": {"family": "MLRSNetDriver", "weights": [1, 2]}})


def test_snapshots_are_checked_on_resume_not_at_the_final_save():
    *_, saved = plain_loop({**META, "snapshot_fractions": [0.25, 0.5, 1.0]}, stop_at=5)
    assert saved["driver"]["meta"]["snapshots"]  # a snapshot was taken at step 3
    bad = corrupt(saved["driver"], ("meta", "snapshots", 0, "weights", "head.bias"), nan_like)
    with pytest.raises(
        CheckpointStateError, match=r"meta.snapshots\[0\]\['weights'\]\['head.bias'\] holds non-finite"
    ):
        plain_loop({**META, "snapshot_fractions": [0.25, 0.5, 1.0]}, resume={**saved, "driver": bad})


def trainer(out, **kwargs):
    torch.manual_seed(0)
    args = MLRSNetConfig(
        output_dir=str(out), max_steps=6, save_steps=3, per_device_train_batch_size=32, learning_rate=0.1,
        optim="sgd", report_to="none", disable_tqdm=True, use_cpu=True, seed=0, gamma=0.1, num_classes=10,
        **kwargs,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        schedule = MLRSNetSchedule(hidden_size=8, gamma=0.1)
    return MLRSNetTrainer(model=DigitsNet(), args=args, train_dataset=digits(600), schedule=schedule)


def test_the_trainer_names_the_checkpoint_file_and_takes_no_step(tmp_path):
    trainer(tmp_path).train()
    path = tmp_path / "checkpoint-3" / "scheduler.pt"
    state = torch.load(path, weights_only=True)
    torch.save(corrupt(state, ("run", "gammas"), [-1.0]), path)  # gradient ascent, were it used
    resumed = trainer(tmp_path)
    with pytest.raises(CheckpointStateError, match=rf"{path} cannot be resumed: run.gammas\[0\] must be > 0"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    assert resumed.lr_scheduler.lr_history == []
    saved = load_file(tmp_path / "checkpoint-3" / "model.safetensors")
    assert all(torch.equal(v, saved[k]) for k, v in resumed.model.state_dict().items())  # no step was taken
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(CheckpointStateError, match=rf"{path} cannot be read \(truncated or not a checkpoint\?\)"):
        trainer(tmp_path).train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))


def test_no_zero_or_negative_lr_from_the_optimizer_or_the_arguments():
    model = DigitsNet()
    groups = [{"params": [model.head.weight], "lr": 0.0}, {"params": [model.head.bias]}]
    with pytest.raises(ValueError, match="The first parameter group's LR is 0.0"):
        MLRSNetDriver.for_loop(MLRSNetSchedule(hidden_size=4), torch.optim.SGD(groups, lr=0.1), model, 4, **TRANSFER)
    with pytest.raises(ValueError, match="The first parameter group's LR is inf"):  # (the callback took inf)
        MLRSNetDriver.for_loop(
            MLRSNetSchedule(hidden_size=4), torch.optim.SGD(model.parameters(), lr=math.inf), model, 4, **TRANSFER
        )
