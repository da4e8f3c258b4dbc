"""A longer meta-horizon: the hypergradient through the last K steps' LRs is exact (float64, independent reference)."""

import copy

import pytest
import torch
from test_meta_train import batch_of, loss_at
from tiny import DigitsNet, digits

from mlrsnet_hf import MLRSNetConfig, MLRSNetSchedule, MLRSNetTrainer


def reference_horizon_hypergradient(model, schedule_run, train, meta, wd, clip, steps):
    """Plain SGD written out: K real steps (directions from the gradients, held fixed), then the meta loss at
    ``w_0 - sum_s lr_s(theta) d_s`` differentiated to theta. Shares no code with the library's read-off."""
    model, run = copy.deepcopy(model), copy.deepcopy(schedule_run)
    schedule = run.schedule
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    virtual = dict(w)
    for _ in range(steps):
        leaf = {n: v.clone().requires_grad_(True) for n, v in w.items()}
        loss = loss_at(model, leaf, train)
        grads = dict(zip(leaf, torch.autograd.grad(loss, list(leaf.values())), strict=True))
        norm = torch.sqrt(sum((g**2).sum() for g in grads.values()))
        coef = torch.clamp(clip / (norm + 1e-6), max=1.0)
        d = {n: grads[n] * coef + wd[n] * w[n] for n in w}
        lr = run.step(loss.item(), differentiable=True)
        w = {n: w[n] - lr.detach() * d[n] for n in w}
        virtual = {n: virtual[n] - lr * d[n] for n in w}
    loss_at(model, virtual, meta).backward(inputs=list(schedule.parameters()))
    return {n: p.grad.clone() for n, p in schedule.named_parameters()}


def run(tmp_path, model, schedule, data, horizon):
    args = MLRSNetConfig(optim="sgd",
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=64, meta_batch_size=32, meta_train=True,
        meta_update_interval=3, meta_horizon=horizon, weight_decay=5e-4, max_grad_norm=0.5, report_to="none",
        save_strategy="no", disable_tqdm=True, use_cpu=True, num_classes=10,
    )  # fmt: skip
    trainer = MLRSNetTrainer(
        model=model, args=args, train_dataset=data[:64], meta_dataset=data[64:96], schedule=schedule
    )
    trainer.train()
    return trainer


def test_horizon_hypergradient_is_exact(tmp_path):
    torch.manual_seed(0)
    model = DigitsNet(hidden=16).double()
    data = digits(96, dtype=torch.float64)
    torch.manual_seed(3)
    schedule = MLRSNetSchedule(hidden_size=8, gamma=0.5).double()
    model_before, schedule_before = copy.deepcopy(model), copy.deepcopy(schedule)
    fresh = copy.deepcopy(schedule)
    trainer = run(tmp_path / "k3", model, schedule, data, horizon=3)
    wd = {}
    for n, p in model.named_parameters():
        wd[n] = next(g["weight_decay"] for g in trainer.optimizer.param_groups if any(q is p for q in g["params"]))
    run_before = schedule_before.start()
    run_before.enter_stage(0)
    train, meta = batch_of(data[:64]), batch_of(data[64:96])  # one full batch each: the order does not matter
    ref = reference_horizon_hypergradient(model_before, run_before, train, meta, wd, clip=0.5, steps=3)
    for name, grad in ref.items():
        torch.testing.assert_close(trainer.last_hypergradient[name], grad, rtol=1e-7, atol=1e-13, msg=name)

    # The one-step hypergradient of the same run differs: the earlier LRs are credited too.
    one_step = run(tmp_path / "k1", copy.deepcopy(model_before), fresh, data, horizon=1)
    assert any(
        not torch.allclose(one_step.last_hypergradient[n], g, rtol=1e-3) for n, g in trainer.last_hypergradient.items()
    )


def test_horizon_must_fit_the_meta_interval(tmp_path):
    with pytest.raises(ValueError, match="meta_horizon"):
        MLRSNetConfig(output_dir=str(tmp_path), meta_update_interval=2, meta_horizon=3)
    with pytest.raises(ValueError, match="snapshot_fractions"):
        MLRSNetConfig(output_dir=str(tmp_path), snapshot_fractions=[0.5, 0.2])


def test_non_finite_meta_loss_skips_the_meta_update(tmp_path, caplog):
    """A NaN meta loss whose gradients are finite (a constant NaN added) must not update the schedule."""
    torch.manual_seed(0)
    data = digits(96)
    schedule = MLRSNetSchedule(hidden_size=8, gamma=0.5)
    initial = copy.deepcopy(schedule.state_dict())
    # Forward calls alternate training (odd) and meta (even) with a meta update every step: call 2 is the
    # first meta forward.
    model = DigitsNet(hidden=16, nan_at_call=2)
    args = MLRSNetConfig(optim="sgd",
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=64, meta_batch_size=32, meta_train=True,
        meta_update_interval=1, report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True,
        num_classes=10,
    )  # fmt: skip
    trainer = MLRSNetTrainer(
        model=model, args=args, train_dataset=data[:64], meta_dataset=data[64:96], schedule=schedule
    )
    with caplog.at_level("WARNING", logger="mlrsnet_hf"):
        trainer.train()
    assert model.calls == 2 and "skipping this meta update" in caplog.text
    assert trainer.last_hypergradient is None
    for k, v in trainer.schedule.state_dict().items():
        if not k.endswith("_extra_state"):
            assert torch.equal(v, initial[k]), k


def test_w_t_buffers_are_kept_between_meta_updates_and_change_nothing(tmp_path, monkeypatch):
    """At most ``meta_horizon`` parameter-sized buffers over a whole run, refilled in place: the same LRs and theta."""
    from mlrsnet_hf.mlrsnet.meta_training import MetaLearner

    torch.manual_seed(0)
    data = digits(96, dtype=torch.float64)
    model0, schedule0 = DigitsNet(hidden=16).double(), MLRSNetSchedule(hidden_size=8, gamma=0.5).double()
    snapshot = MetaLearner._snapshot
    storages: list[set[int]] = []

    def recorded(self, params):
        buffers = snapshot(self, params)
        storages[-1].add(tuple(b.data_ptr() for b in buffers))
        return buffers

    monkeypatch.setattr(MetaLearner, "_snapshot", recorded)

    def train(keep: bool):
        if not keep:
            monkeypatch.setattr(MetaLearner, "_release", lambda self, buffers: None)
        storages.append(set())
        args = MLRSNetConfig(optim="sgd",
            output_dir=str(tmp_path), max_steps=12, per_device_train_batch_size=16, meta_batch_size=16,
            meta_train=True, meta_update_interval=3, meta_horizon=2, report_to="none", save_strategy="no",
            disable_tqdm=True, use_cpu=True, num_classes=10,
        )  # fmt: skip
        trainer = MLRSNetTrainer(
            model=copy.deepcopy(model0), args=args, train_dataset=data[:64], meta_dataset=data[64:],
            schedule=copy.deepcopy(schedule0),
        )  # fmt: skip
        trainer.train()
        assert trainer.lr_scheduler.meta.num_updates == 4
        return trainer.lr_scheduler.lr_history, trainer.schedule.state_dict()

    kept_lrs, kept_theta = train(keep=True)
    fresh_lrs, fresh_theta = train(keep=False)
    assert len(kept_lrs) == 12 and kept_lrs == fresh_lrs
    for key, value in fresh_theta.items():
        if not key.endswith("_extra_state"):
            assert torch.equal(kept_theta[key], value), key
    # 8 snapshots (2 per meta update), in 2 buffers; fresh buffers otherwise (the allocator may reuse addresses)
    assert len(storages[0]) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="where the schedule steps matters only next to a GPU")
def test_meta_training_next_to_a_gpu_steps_the_schedule_on_the_host_as_a_cpu_run_does(tmp_path):
    """The model on the GPU, the schedule and its meta step on the host: the LRs and theta of the same run on a CPU."""
    runs = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        data = digits(96, dtype=torch.float64)
        model, schedule = DigitsNet(hidden=16).double(), MLRSNetSchedule(hidden_size=8, gamma=0.5).double()
        args = MLRSNetConfig(optim="sgd",
            output_dir=str(tmp_path / device), max_steps=8, per_device_train_batch_size=16, meta_batch_size=16,
            meta_train=True, meta_update_interval=2, meta_horizon=2, report_to="none", save_strategy="no",
            disable_tqdm=True, use_cpu=device == "cpu", num_classes=10,
        )  # fmt: skip
        trainer = MLRSNetTrainer(
            model=model, args=args, train_dataset=data[:64], meta_dataset=data[64:], schedule=schedule
        )
        trainer.train()
        assert next(trainer.model.parameters()).device.type == device
        assert {p.device.type for p in trainer.schedule.parameters()} == {"cpu"}
        assert trainer.lr_scheduler.meta.num_updates == 4
        runs[device] = (torch.tensor(trainer.lr_scheduler.lr_history), trainer.schedule.state_dict())
    torch.testing.assert_close(runs["cuda"][0], runs["cpu"][0], rtol=1e-9, atol=0)
    for key, value in runs["cpu"][1].items():
        if not key.endswith("_extra_state"):
            torch.testing.assert_close(runs["cuda"][1][key], value, rtol=1e-9, atol=1e-12, msg=key)
