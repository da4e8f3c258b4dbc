"""Meta-training: the hypergradient is exact (float64, vs an independent double-backward reference)."""

import copy

import pytest
import torch
from tiny import DigitsNet, digits
from torch.func import functional_call

from mlrsnet_hf import MLRSNetConfig, MLRSNetSchedule, MLRSNetTrainer
from mlrsnet_hf.meta_gradient import MetaBatches, lr_derivatives, meta_loss, step_delta

torch.set_default_dtype(torch.float32)


def batch_of(data):
    return {"x": torch.stack([d["x"] for d in data]), "labels": torch.stack([d["labels"] for d in data])}


def loss_at(model, weights, batch):
    tensors = {**weights, **{n: b.clone() for n, b in model.named_buffers()}}
    return functional_call(model, tensors, args=(), kwargs=batch)["loss"]


def reference_hypergradient(model, run, loss_value, train, meta, kind, opt_state, wd, clip, betas=(0.9, 0.999)):
    """The released style: gradient with create_graph=True on a model copy, virtual step w' = w - lr(theta) d,
    meta loss at w', backward through everything to theta. Independent of the library's read-off."""
    model = copy.deepcopy(model)
    run = copy.deepcopy(run)  # (and the schedule it runs)
    schedule = run.schedule
    names = [n for n, _ in model.named_parameters()]
    w = dict(model.named_parameters())
    grads = torch.autograd.grad(loss_at(model, w, train), list(w.values()), create_graph=True)
    norm = torch.sqrt(sum((g.detach() ** 2).sum() for g in grads))
    coef = torch.clamp(clip / (norm + 1e-6), max=1.0)
    d = {}
    for n, g in zip(names, grads, strict=True):
        g = g * coef
        st = opt_state.get(n, {})
        if kind == "sgd":
            step = g + wd[n] * w[n]
            d[n] = st["momentum"] * st["buf"] + step if st.get("buf") is not None else step
        else:  # adamw: decoupled decay plus the bias-corrected moment ratio
            t = st["step"] + 1
            m = betas[0] * st["exp_avg"] + (1 - betas[0]) * g
            v = betas[1] * st["exp_avg_sq"] + (1 - betas[1]) * g * g
            d[n] = wd[n] * w[n] + (m / (1 - betas[0] ** t)) / ((v / (1 - betas[1] ** t)).sqrt() + 1e-8)
    lr = run.step(loss_value, differentiable=True)
    virtual = {n: w[n] - lr * d[n] for n in names}
    loss_at(model, virtual, meta).backward(inputs=list(schedule.parameters()))
    return {n: p.grad.clone() for n, p in schedule.named_parameters()}


def optimizer_state(model, optimizer):
    """Per-parameter optimizer state before the step (momentum buffers / Adam moments)."""
    state = {}
    for n, p in model.named_parameters():
        s = optimizer.state.get(p, {})
        group = next(g for g in optimizer.param_groups if any(q is p for q in g["params"]))
        state[n] = {
            "momentum": group.get("momentum", 0.0),
            "buf": s.get("momentum_buffer"),
            "step": float(s["step"]) if "step" in s else 0.0,
            "exp_avg": s.get("exp_avg", torch.zeros_like(p)).clone(),
            "exp_avg_sq": s.get("exp_avg_sq", torch.zeros_like(p)).clone(),
        }
        if state[n]["buf"] is not None:
            state[n]["buf"] = state[n]["buf"].clone()
    return state


@pytest.mark.parametrize(("kind", "momentum"), [("sgd", 0.0), ("sgd", 0.9), ("adamw", None)])
def test_hypergradient_is_exact(kind, momentum):
    torch.manual_seed(0)
    model = DigitsNet(hidden=16, dropout=0.0).double()
    data = digits(160, dtype=torch.float64)
    train, meta = batch_of(data[:64]), batch_of(data[64:96])
    wd = 5e-4
    if kind == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum, weight_decay=wd)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=wd)
    for i in range(3):  # warm the optimizer state (momentum buffers, Adam moments)
        optimizer.zero_grad()
        model(**batch_of(data[96 + 16 * i : 112 + 16 * i]))["loss"].backward()
        optimizer.step()
    torch.manual_seed(1)
    schedule = MLRSNetSchedule(hidden_size=8, gamma=0.7 if kind == "sgd" else 0.01).double()
    run = schedule.start()
    run.enter_stage(0)
    run.step(2.1)  # a non-zero LSTM state

    model_before, run_before = copy.deepcopy(model), copy.deepcopy(run)
    state_before = optimizer_state(model, optimizer)
    optimizer.zero_grad()
    loss = model(**train)["loss"]
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)  # d must come from the clipped gradient
    lr = run.step(loss.item(), differentiable=True)
    for group in optimizer.param_groups:
        group["lr"] = lr.item()
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    optimizer.step()
    (derivative,) = lr_derivatives(meta_loss(model, meta), params, [step_delta(before, params)], [lr.item()])
    lr.backward(derivative)
    ours = {n: p.grad.clone() for n, p in schedule.named_parameters()}

    ref = reference_hypergradient(
        model_before, run_before, loss.item(), train, meta, kind, state_before,
        {n: wd for n, _ in model.named_parameters()}, clip=0.5,
    )  # fmt: skip
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-9, atol=1e-15, msg=name)
    assert sum(g.abs().sum() for g in ours.values()) > 0


def test_meta_loss_leaves_batchnorm_statistics_alone():
    torch.manual_seed(0)
    model = DigitsNet()
    before = {n: b.clone() for n, b in model.named_buffers()}
    loss = meta_loss(model, batch_of(digits(32)))
    assert loss.requires_grad
    for n, b in model.named_buffers():
        assert torch.equal(b, before[n]), n


def test_trainer_hypergradient_is_exact(tmp_path):
    """The whole loop (Trainer, clipping, per-group weight decay, meta batch): first meta step vs the reference."""
    torch.manual_seed(0)
    model = DigitsNet(hidden=16).double()
    data = digits(96, dtype=torch.float64)
    torch.manual_seed(3)
    schedule = MLRSNetSchedule(hidden_size=8, gamma=0.5).double()
    model_before, run_before = copy.deepcopy(model), copy.deepcopy(schedule).start()
    run_before.enter_stage(0)
    args = MLRSNetConfig(optim="sgd",
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=64, meta_batch_size=32,
        meta_train=True, meta_update_interval=1, weight_decay=5e-4, max_grad_norm=0.5, report_to="none",
        save_strategy="no", disable_tqdm=True, use_cpu=True, num_classes=10,
    )  # fmt: skip
    trainer = MLRSNetTrainer(
        model=model, args=args, train_dataset=data[:64], meta_dataset=data[64:], schedule=schedule
    )
    trainer.train()
    wd = {}
    for n, p in model.named_parameters():
        wd[n] = next(g["weight_decay"] for g in trainer.optimizer.param_groups if any(q is p for q in g["params"]))
    assert 0.0 in wd.values() and 5e-4 in wd.values()  # biases are not decayed by the Trainer
    train, meta = batch_of(data[:64]), batch_of(data[64:])
    loss_value = model_before(**train)["loss"].item()
    ref = reference_hypergradient(
        model_before, run_before, loss_value, train, meta, "sgd",
        {n: {"momentum": 0.0, "buf": None} for n in wd}, wd, clip=0.5,
    )  # fmt: skip
    for name, grad in ref.items():
        torch.testing.assert_close(trainer.last_hypergradient[name], grad, rtol=1e-7, atol=1e-13, msg=name)


def test_meta_training_changes_the_schedule_and_writes_a_repo(tmp_path):
    torch.manual_seed(0)
    data = digits()
    args = MLRSNetConfig(optim="sgd",
        output_dir=str(tmp_path / "out"), max_steps=20, per_device_train_batch_size=32, meta_train=True,
        meta_update_interval=2, meta_learning_rate=1e-2, logging_steps=5, report_to="none", save_strategy="no",
        disable_tqdm=True, use_cpu=True, num_classes=10, eval_strategy="steps", eval_steps=10,
    )  # fmt: skip
    trainer = MLRSNetTrainer(
        model=DigitsNet(), args=args, train_dataset=data[:1200], eval_dataset=data[1200:1500], meta_dataset=data[1500:]
    )
    initial = {k: v.clone() for k, v in trainer.schedule.weights().items()}
    trainer.train()
    changed = [k for k, v in trainer.schedule.weights().items() if not torch.equal(v, initial[k])]
    assert len(changed) == len(initial)  # every parameter of the schedule was updated
    assert trainer.lr_scheduler.meta.batches.index > 0
    logs = [h for h in trainer.state.log_history if "meta_loss" in h]
    assert len(logs) == 4 and all(h["meta_loss"] > 0 for h in logs)
    trainer.save_schedule(tmp_path / "final", trajectory=False)
    final = MLRSNetSchedule.from_pretrained(tmp_path / "final")
    assert final.num_stages == 1
    for key, value in trainer.schedule.weights().items():
        assert torch.equal(final.weights()[key], value)
    # By default: the trajectory, the networks after steps 1 (0.005 of 20, at least one step), 10 and 20.
    trainer.save_schedule(tmp_path / "learned", meta_training={"dataset": "sklearn/digits"})
    loaded = MLRSNetSchedule.from_pretrained(tmp_path / "learned")
    assert loaded.num_stages == 3 and loaded.stage_starts == [0.0, 1 / 3, 2 / 3]
    assert [s["step"] for s in trainer.snapshots] == [1, 10, 20]
    mid = {f"stages.1.{k}": v for k, v in trainer.snapshots[1]["weights"].items()}
    for key, value in trainer.schedule.weights().items():
        assert torch.equal(loaded.weights()[key.replace("stages.0.", "stages.2.")], value)  # the final network
        assert torch.equal(loaded.weights()[key], initial[key])  # no meta update before the first snapshot
        assert torch.equal(
            loaded.weights()[key.replace("stages.0.", "stages.1.")], mid[key.replace("stages.0.", "stages.1.")]
        )
        assert not torch.equal(mid[key.replace("stages.0.", "stages.1.")], value)
    record = loaded.meta_training
    assert record["snapshots"] == {"fractions": [0.005, 0.5, 1.0], "steps": [1, 10, 20]}
    card = (tmp_path / "learned" / "README.md").read_text()
    assert "| 1 | 0.333 | 0.667 | step 10 (0.5 of the run) |" in card and "*trajectory* schedule" in card
    assert (tmp_path / "learned" / "lr_response.png").is_file()
    assert record["dataset"] == "sklearn/digits" and record["optimizer"] == "SGD" and record["max_steps"] == 20
    assert "loss" in record["results"]
    assert (tmp_path / "learned" / "lr_used.png").is_file()
    assert "lr_used.png" in (tmp_path / "learned" / "README.md").read_text()


def test_meta_batches_are_sharded_and_resumable():
    data = list(range(103))
    a = MetaBatches(data, 10, list, seed=5, rank=0, world_size=2)
    b = MetaBatches(data, 10, list, seed=5, rank=1, world_size=2)
    first = [a.next() for _ in range(5)]
    second = [b.next() for _ in range(5)]
    assert not set(sum(first, [])) & set(sum(second, []))  # disjoint shards
    assert sorted(sum(first, []) + sum(second, [])) == sorted(set(sum(first, []) + sum(second, [])))
    assert len(set(sum(first, []) + sum(second, []))) == 100  # 100 usable examples: 5 full batches per process
    assert a.epoch == 0
    a.next()
    assert a.epoch == 1 and a.index == 10  # then a new permutation
    c = MetaBatches(data, 10, list, seed=5, rank=0, world_size=2)
    c.load_state_dict(a.state_dict())
    assert [c.next() for _ in range(3)] == [a.next() for _ in range(3)]
    with pytest.raises(ValueError, match="fewer than one batch"):
        MetaBatches(list(range(5)), 10, list)


def test_non_linear_optimizer_is_refused(tmp_path):
    args = MLRSNetConfig(
        output_dir=str(tmp_path), max_steps=2, meta_train=True, optim="adafactor", report_to="none",
        save_strategy="no", disable_tqdm=True, use_cpu=True, num_classes=10,
    )  # fmt: skip
    data = digits(64)
    trainer = MLRSNetTrainer(model=DigitsNet(), args=args, train_dataset=data, meta_dataset=data)
    with pytest.raises(ValueError, match="linear in the LR"):
        trainer.train()
