"""A schedule in a training loop of your own (``MLRSNetDriver.for_loop``): the Trainer's LRs, exactly, and exact resume."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, accelerate_launch
from tiny import DigitsNet, digits
from torch.utils.data import DataLoader
from transformers import default_data_collator

from mlrsnet_hf import MLRSNetConfig, MLRSNetDriver, MLRSNetSchedule, MLRSNetTrainer

STEPS, BATCH, LR = 12, 32, 0.1
TRANSFER = dict(gamma=1.0, num_classes=10)
META = dict(
    meta_train=True, meta_update_interval=3, meta_horizon=2, meta_learning_rate=1e-2, gamma="auto", num_classes=10,
    auto_gamma_batches=2,
)  # fmt: skip


def fresh_schedule() -> MLRSNetSchedule:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return MLRSNetSchedule(hidden_size=8, num_stages=2, gamma=1.0)


def by_trainer(out, options, save_to=None):
    torch.manual_seed(0)
    data = digits()
    args = MLRSNetConfig(
        output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=BATCH, learning_rate=LR, optim="sgd",
        train_sampling_strategy="sequential", report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True,
        seed=0, **options,
    )  # fmt: skip
    trainer = MLRSNetTrainer(
        model=DigitsNet(), args=args, train_dataset=data[:1200], schedule=fresh_schedule(),
        meta_dataset=data[1200:] if options.get("meta_train") else None,
    )  # fmt: skip
    trainer.train()
    if save_to is not None:
        trainer.save_schedule(save_to, trajectory=True)
    return trainer.lr_scheduler.lr_history, trainer.model, trainer.schedule


def plain_loop(options, steps=STEPS, stop_at=None, resume=None, custom_loss=False, save_to=None):
    """SGD on the Trainer's batches (sequential), clipped at the Trainer's default 1.0; the driver sets every LR.

    ``stop_at``: return the checkpoint (model, optimizer, driver states) after that many steps; ``resume``: go on
    from one.
    """
    torch.manual_seed(0)
    data = digits()
    model = DigitsNet()
    # the Trainer's two groups (with and without weight decay, 0 here), in its order: the online scale's sums over
    # the parameters run in that order, so another order would round differently
    groups = [[p for n, p in model.named_parameters() if n.endswith("bias") == bias] for bias in (False, True)]
    optimizer = torch.optim.SGD([{"params": group} for group in groups], lr=LR)
    loader = DataLoader(data[:1200], batch_size=BATCH, collate_fn=default_data_collator)
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
    driver = MLRSNetDriver.for_loop(
        fresh_schedule(), optimizer, model, steps, train_dataloader=loader, meta_dataset=data[1200:] if options.get("meta_train") else None,
        state=None if resume is None else resume["driver"], loss_from_model=not custom_loss, **options,
    )  # fmt: skip
    model.train()
    done = 0 if resume is None else resume["driver"]["last_epoch"]
    for step, batch in enumerate(loader):
        if step < done:
            continue
        if step in (stop_at, steps):
            break
        if custom_loss:
            loss = torch.nn.functional.cross_entropy(model(batch["x"])["logits"], batch["labels"])
            driver.observe(loss)
        else:
            loss = model(**batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "driver": driver.state_dict()}
    driver.finish()
    if save_to is not None:
        driver.save_schedule(save_to, trajectory=True)
    return driver.lr_history, model, driver.schedule, checkpoint


@pytest.mark.parametrize(
    "options", [TRANSFER, META, {**TRANSFER, "online_scale": "mechanic"}], ids=["transfer", "meta-training", "online"]
)
def test_a_plain_loop_sets_exactly_the_trainers_lrs(tmp_path, options):
    lrs_a, model_a, schedule_a = by_trainer(tmp_path, options)
    lrs_b, model_b, schedule_b, _ = plain_loop(options)
    assert len(lrs_a) == STEPS and lrs_a == lrs_b
    assert len(set(lrs_a)) > 1  # the schedule moved the LR
    assert all(torch.equal(v, model_b.state_dict()[k]) for k, v in model_a.state_dict().items())
    weights_a, weights_b = schedule_a.weights(), schedule_b.weights()
    assert all(torch.equal(v, weights_b[k]) for k, v in weights_a.items())
    if options.get("meta_train"):
        assert not all(torch.equal(v, fresh_schedule().weights()[k]) for k, v in weights_a.items())  # it learned


def test_a_plain_loop_resumes_exactly_from_a_checkpoint_inside_a_meta_horizon():
    lrs, _, schedule, _ = plain_loop(META)
    *_, checkpoint = plain_loop(META, stop_at=5)  # step 5: inside the horizon of the meta update at step 6
    tail, _, resumed, _ = plain_loop(META, resume=checkpoint)
    assert tail == lrs[5:]
    assert all(torch.equal(v, resumed.weights()[k]) for k, v in schedule.weights().items())


def test_a_checkpoint_from_before_runs_were_apart_from_schedules_resumes_exactly():
    """Checkpoints written before this version kept the run's state in the schedule's ``_extra_state``."""
    lrs, *_ = plain_loop(META)
    *_, checkpoint = plain_loop(META, stop_at=5)
    driver = dict(checkpoint["driver"])
    run = driver.pop("run")
    legacy_run = {k: v for k, v in run.items() if k not in ("gamma", "input_normalization", "relative_max_scale")}
    driver["schedule"] = {**driver["schedule"], "_extra_state": legacy_run}
    tail, *_ = plain_loop(META, resume={**checkpoint, "driver": driver})
    assert tail == lrs[5:]


def test_a_transfer_run_leaves_the_schedule_it_was_given_as_it_was():
    schedule = fresh_schedule()
    config, weights = schedule.config, {k: v.clone() for k, v in schedule.state_dict().items()}
    model = DigitsNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    loader = DataLoader(digits(4 * BATCH), batch_size=BATCH, collate_fn=default_data_collator)
    with MLRSNetDriver.for_loop(schedule, optimizer, model, 4, gamma=0.3, relative_max_scale=2.0) as driver:
        for batch in loader:
            model(**batch)["loss"].backward()
            optimizer.step()
            optimizer.zero_grad()
    assert driver.run.gamma == 0.3 and driver.run.num_steps == 4
    assert schedule.config == config
    assert all(torch.equal(v, weights[k]) for k, v in schedule.state_dict().items())


def test_a_driver_publishes_and_checkpoints_before_its_run_starts():
    schedule = fresh_schedule()
    driver = MLRSNetDriver(schedule)
    assert driver.run is None and driver.published_schedule().config == schedule.config
    assert driver.state_dict()["run"] is None


def test_losses_handed_over_equal_losses_read_from_the_model():
    assert plain_loop(TRANSFER, custom_loss=True)[0] == plain_loop(TRANSFER)[0]


def hooks(optimizer, model):
    return (
        len(optimizer._optimizer_step_pre_hooks)
        + len(optimizer._optimizer_step_post_hooks)
        + len(model._forward_hooks)
    )


def test_a_driver_that_cannot_start_leaves_nothing_on_the_optimizer_and_model():
    model = DigitsNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    with MLRSNetDriver.for_loop(fresh_schedule(), optimizer, model, STEPS, **TRANSFER) as driver:
        unscaled = driver.state_dict()  # a checkpoint of a run without the online scale
    refused = [
        (dict(gamma="auto", num_classes=10), "train_dataloader"),  # gamma="auto" reads the data: refused at bind
        (
            dict(TRANSFER, meta_train=True, meta_dataset=digits(64), meta_batch_size=16, loss_from_model=False),
            "loss_from_model=False",
        ),
        # the online scale's hooks are already on the optimizer when the checkpoint is found to hold no scale
        (dict(TRANSFER, online_scale="mechanic", state=unscaled), "holds no online scale"),
    ]
    for options, match in refused:
        with pytest.raises(ValueError, match=match):
            MLRSNetDriver.for_loop(fresh_schedule(), optimizer, model, STEPS, **options)
        assert hooks(optimizer, model) == 0 and not hasattr(optimizer, "_mlrsnet_driver")
    with MLRSNetDriver.for_loop(fresh_schedule(), optimizer, model, STEPS, **TRANSFER) as driver:
        assert hooks(optimizer, model) == 3  # the LR's pre-hook, the step's post-hook, the loss's forward hook
        with pytest.raises(RuntimeError, match="another driver"):
            MLRSNetDriver.for_loop(fresh_schedule(), optimizer, model, STEPS, **TRANSFER)
    assert hooks(optimizer, model) == 0 and driver.lr_history == []


def test_observe_takes_per_example_losses_numbers_and_losses_without_gradients():
    def run(hand_over):
        torch.manual_seed(0)
        model = DigitsNet()
        optimizer = torch.optim.SGD(model.parameters(), lr=LR)
        driver = MLRSNetDriver.for_loop(fresh_schedule(), optimizer, model, 4, loss_from_model=False, **TRANSFER)
        for batch in DataLoader(digits(128), batch_size=BATCH, collate_fn=default_data_collator):
            logits = model(batch["x"])["logits"]
            losses = torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none")
            hand_over(driver, losses)
            losses.mean().backward()
            optimizer.step()
            optimizer.zero_grad()
        driver.finish()
        return driver.lr_history

    reference = run(lambda driver, losses: driver.observe(losses.mean()))
    assert len(reference) == 4
    assert run(lambda driver, losses: driver.observe(losses)) == reference  # the mean of the per-example losses
    assert run(lambda driver, losses: driver.observe(losses.mean().item())) == pytest.approx(reference, rel=1e-6)

    def without_gradients(driver, losses):
        with torch.no_grad():
            driver.observe(losses.mean() * 1)

    assert run(without_gradients) == reference


def test_a_model_whose_output_holds_no_loss_is_named_with_the_way_out():
    class Features(torch.nn.Module):  # returns (logits, features): no loss; its logits must not pass for one
        def __init__(self):
            super().__init__()
            self.net = DigitsNet()

        def forward(self, x, labels=None):
            return self.net(x)["logits"], x

    model = Features()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    driver = MLRSNetDriver.for_loop(fresh_schedule(), optimizer, model, STEPS, **TRANSFER)
    batch = default_data_collator(digits(8))
    logits, _ = model(**batch)
    torch.nn.functional.cross_entropy(logits, batch["labels"]).backward()
    with pytest.raises(RuntimeError, match=r"loss_from_model=False and hand each loss to driver.observe"):
        optimizer.step()
    driver.finish()


def test_a_bound_driver_refuses_a_second_loss_route_and_a_second_binding():
    model = DigitsNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    driver = MLRSNetDriver.for_loop(fresh_schedule(), optimizer, model, STEPS, **TRANSFER)
    with pytest.raises(RuntimeError, match="loss_from_model=False"):
        driver.observe(torch.tensor(1.0))
    with pytest.raises(RuntimeError, match="already bound"):
        driver.bind(model, optimizer, STEPS)
    driver.finish()
    before = [float(g["lr"]) for g in optimizer.param_groups]
    model(**default_data_collator(digits(8)))["loss"].backward()
    optimizer.step()  # unbound: the optimizer is the user's again
    assert [float(g["lr"]) for g in optimizer.param_groups] == before


@pytest.mark.multiprocess
def test_an_accelerate_loop_on_two_processes_sets_the_same_lrs_and_learns_the_same_schedule_on_both(tmp_path):
    out = accelerate_launch("plain_loop_ddp.py", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert a["world_size"] == b["world_size"] == 2
    assert a["steps"] == b["steps"] == 12 and len(a["lrs"]) == 12  # 24 micro-batches, accumulated in pairs
    assert a["lrs"] == b["lrs"] and len(set(a["lrs"])) > 1
    assert all(torch.equal(v, b["theta"][k]) for k, v in a["theta"].items())  # one meta-gradient, averaged
    assert not all(torch.equal(v, fresh_schedule().weights()[k]) for k, v in a["theta"].items())  # it learned
    params = [k for k in a["model"] if "running_" not in k and "num_batches_tracked" not in k]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in params)


@pytest.mark.slow
def test_the_example_meta_trains_in_an_accelerate_loop_and_transfers_what_it_learned(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "plain_loop.py"), "--output_dir", str(tmp_path), "--steps", "40",
         "--cpu"], capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    meta, transfer = results["meta-trained (CNN)"], results["transferred (MLP)"]
    assert len(meta["lrs"]) == len(transfer["lrs"]) == 40
    assert meta["test_accuracy"] > 0.5 and transfer["test_accuracy"] > 0.5  # 10 classes: chance is 0.1
    learned = MLRSNetSchedule.from_pretrained(tmp_path / "schedule")  # the trajectory of the meta-training run
    assert learned.num_stages == 3 and learned.meta_training["snapshots"]["steps"] == [1, 20, 40]
    assert learned.meta_training["dataset"] == "sklearn digits" and learned.meta_training["meta_updates"] == 4
    assert not torch.equal(learned.stages[0].head.weight, learned.stages[2].head.weight)  # it learned on the way


def test_a_plain_loop_saves_the_trajectory_the_trainer_saves(tmp_path):
    by_trainer(tmp_path / "run", META, save_to=tmp_path / "by-trainer")
    plain_loop(META, save_to=tmp_path / "by-loop")
    a, b = (MLRSNetSchedule.from_pretrained(tmp_path / name) for name in ("by-trainer", "by-loop"))
    assert a.num_stages == b.num_stages == 3  # the snapshots at 0.005, 0.5 and 1.0 of the run
    assert all(torch.equal(v, b.weights()[k]) for k, v in a.weights().items())
    record = b.meta_training
    assert record["snapshots"] == a.meta_training["snapshots"] == {"fractions": [0.005, 0.5, 1.0], "steps": [1, 6, 12]}
    assert (record["model"], record["max_steps"], record["optimizer"], record["meta_updates"]) == (
        "DigitsNet",
        12,
        "SGD",
        4,
    )
    assert record["per_device_train_batch_size"] == BATCH and "epochs" not in record  # a loop has no epoch count
    assert {k: v for k, v in a.meta_training.items() if k not in ("epochs",)} == record


def test_a_step_the_grad_scaler_skips_is_not_counted_and_its_loss_goes_to_the_next_step():
    """The optimizer's hooks do not fire on a step a GradScaler skips (an inf gradient): no LR is set, no step is
    counted, and its loss joins the next step's mean, as if it had been one more micro-batch of that step."""
    losses = [2.3, 2.1, 1.9, 1.8, 1.6, 1.5]
    skip = 2

    def run(with_scaler: bool):
        model = torch.nn.Linear(3, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=LR)
        scaler = torch.amp.GradScaler("cpu")
        driver = MLRSNetDriver.for_loop(fresh_schedule(), optimizer, model, 5, loss_from_model=False, **TRANSFER)
        for i, loss in enumerate(losses):
            driver.observe(loss)
            out = model(torch.ones(1, 3)).sum()
            if not with_scaler:
                out.backward()
                if i != skip:  # (at the skip: a micro-batch of the next step)
                    optimizer.step()
                    optimizer.zero_grad()
                continue
            scaler.scale(out).backward()
            if i == skip:
                model.weight.grad[0, 0] = float("inf")
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
        driver.finish()
        return driver.lr_history, driver.last_epoch, driver.run.num_steps

    skipped_lrs, taken, schedule_steps = run(with_scaler=True)
    assert taken == schedule_steps == len(skipped_lrs) == 5
    assert skipped_lrs == run(with_scaler=False)[0]
