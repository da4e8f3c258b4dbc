"""The online LR scale (``online_scale="mechanic"``): Mechanic's updates, through the Trainer and the callback, exactly.

Mechanic (Cutkosky et al., 2023) learns a factor S of the LR during the run; ``mechanic_pytorch`` is the authors'
package, the reference here.
"""

import copy
import statistics

import pytest
import torch
from test_trainer import Recorder
from tiny import DigitsNet, digits
from transformers import Trainer, TrainingArguments

from mlrsnet_hf import MLRSNetCallback, MLRSNetConfig, MLRSNetSchedule, MLRSNetTrainer
from mlrsnet_hf.online_scale import MechanicScale

COMMON = dict(
    per_device_train_batch_size=32, logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True,
    use_cpu=True, seed=0, optim="sgd", weight_decay=0.0, max_grad_norm=1.0,
)  # fmt: skip


def constant_schedule() -> MLRSNetSchedule:
    """A schedule whose LSTM ignores the loss: its shape is 1 at every step."""
    schedule = MLRSNetSchedule(hidden_size=8, gamma=1.0)
    with torch.no_grad():
        for p in schedule.parameters():
            p.zero_()
    return schedule


def learned_schedule() -> MLRSNetSchedule:
    torch.manual_seed(1)
    schedule = MLRSNetSchedule(hidden_size=16, num_stages=3, gamma=1.0)
    with torch.no_grad():
        for p in schedule.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return schedule


@pytest.mark.parametrize(
    ("optimizer", "kwargs"),
    [(torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}), (torch.optim.AdamW, {"lr": 1e-2})],
)
def test_updates_equal_mechanic_pytorch(optimizer, kwargs):
    mechanic_pytorch = pytest.importorskip("mechanic_pytorch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    x, y = torch.randn(64, 5, dtype=torch.float64), torch.randn(64, 1, dtype=torch.float64)
    ours, theirs = copy.deepcopy(model), copy.deepcopy(model)
    reference = mechanic_pytorch.mechanize(optimizer, store_delta=True)(theirs.parameters(), **kwargs)
    wrapped = optimizer(ours.parameters(), **kwargs)
    scale = MechanicScale()
    scale.attach(wrapped)
    for _ in range(25):
        for m, opt in ((ours, wrapped), (theirs, reference)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            opt.step()
    # The tuner's scalars are float32 in both: agreement to float32 rounding, which the coin-betting tuner carries on.
    torch.testing.assert_close(scale.scale, reference.state["_mechanic"]["s"].sum(), rtol=1e-5, atol=0)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
    assert scale.scale > 1e-5  # S grew from ~1e-6


def train_online(out, schedule, steps=20, learning_rate=0.3, loss_scale=1.0, **kwargs):
    torch.manual_seed(0)
    model, recorder = DigitsNet(batchnorm=False), Recorder()
    if loss_scale != 1.0:
        forward = model.forward
        model.forward = lambda x, labels=None: {
            k: v * loss_scale if k == "loss" else v for k, v in forward(x, labels).items()
        }  # noqa: E501
    args = MLRSNetConfig(output_dir=str(out), max_steps=steps, learning_rate=learning_rate, **{**COMMON, **kwargs})
    trainer = MLRSNetTrainer(
        model=model, args=args, schedule=schedule, train_dataset=digits(1200), callbacks=[recorder]
    )
    trainer.train()
    return trainer, model


def test_a_constant_shape_trains_as_mechanized_sgd_and_logs_the_lr_applied(tmp_path):
    pytest.importorskip("mechanic_pytorch")
    from mechanic_pytorch import mechanize

    trainer, ours = train_online(tmp_path / "a", constant_schedule(), online_scale="mechanic")
    torch.manual_seed(0)
    theirs = DigitsNet(batchnorm=False)
    args = TrainingArguments(
        output_dir=str(tmp_path / "b"), max_steps=20, learning_rate=1.0, lr_scheduler_type="constant", **COMMON
    )  # noqa: E501
    reference = Trainer(
        model=theirs, args=args, train_dataset=digits(1200),
        optimizer_cls_and_kwargs=(mechanize(torch.optim.SGD, store_delta=True), {"lr": 1.0}),
    )  # fmt: skip
    reference.train()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    scale = trainer.lr_scheduler.online_scale.scale
    torch.testing.assert_close(scale, reference.optimizer.state["_mechanic"]["s"].sum(), rtol=1e-5, atol=0)
    # learning_rate=0.3 is not used: the shape's unit is 1, and the LR logged is S * 1, the LR the update got.
    logged = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert logged == trainer.lr_scheduler.lr_history and len(logged) == 20
    assert logged[-1] == pytest.approx(float(scale), rel=1e-6)
    assert logged[0] < 1e-5 < logged[-1]  # S starts near s_init and grows


def test_the_callback_sets_exactly_the_trainers_lrs_and_weights(tmp_path):
    trainer, model = train_online(tmp_path / "a", learned_schedule(), online_scale="mechanic")
    torch.manual_seed(0)
    other = DigitsNet(batchnorm=False)
    callback = MLRSNetCallback(learned_schedule(), online_scale="mechanic")
    args = TrainingArguments(output_dir=str(tmp_path / "b"), max_steps=20, learning_rate=0.3, **COMMON)
    plain = Trainer(
        model=other, args=args, train_dataset=digits(1200), callbacks=[callback],
        optimizers=(None, callback.lr_scheduler),
    )  # fmt: skip
    plain.train()
    assert callback.lr_scheduler.lr_history == trainer.lr_scheduler.lr_history
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters(), strict=True))


def test_resume_is_bit_exact(tmp_path):
    common = {k: v for k, v in COMMON.items() if k != "save_strategy"}

    def run(out, resume=None):
        torch.manual_seed(0)
        model, recorder = DigitsNet(batchnorm=False), Recorder()
        args = MLRSNetConfig(
            output_dir=str(out), max_steps=10, learning_rate=0.3, save_strategy="steps", save_steps=4,
            online_scale="mechanic", **common,
        )  # fmt: skip
        trainer = MLRSNetTrainer(
            model=model, args=args, schedule=learned_schedule(), train_dataset=digits(1200), callbacks=[recorder]
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer, model

    full, a = run(tmp_path / "a")
    saved = torch.load(tmp_path / "a" / "checkpoint-4" / "scheduler.pt", weights_only=True)
    assert saved["online_scale"]["steps"] == 4 and len(saved["online_scale"]["ref"]) == 4
    resumed, b = run(tmp_path / "b", resume=str(tmp_path / "a" / "checkpoint-4"))
    assert resumed.lr_scheduler.lr_history == full.lr_scheduler.lr_history[4:]
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert torch.equal(resumed.lr_scheduler.online_scale.scale, full.lr_scheduler.online_scale.scale)


def test_a_checkpoint_and_a_run_that_disagree_on_the_online_scale_are_refused(tmp_path):
    def run(out, resume=None, **kwargs):
        torch.manual_seed(0)
        args = MLRSNetConfig(
            output_dir=str(out), max_steps=4, learning_rate=0.3, save_strategy="steps", save_steps=2,
            **{k: v for k, v in COMMON.items() if k != "save_strategy"}, **kwargs,
        )  # fmt: skip
        trainer = MLRSNetTrainer(
            model=DigitsNet(batchnorm=False), args=args, schedule=learned_schedule(), train_dataset=digits(600)
        )
        trainer.train(resume_from_checkpoint=resume)

    run(tmp_path / "plain")
    with pytest.raises(ValueError, match="holds no online scale"):
        run(tmp_path / "x", resume=str(tmp_path / "plain" / "checkpoint-2"), online_scale="mechanic")
    run(tmp_path / "online", online_scale="mechanic")
    with pytest.raises(ValueError, match="resume with the same online_scale"):
        run(tmp_path / "y", resume=str(tmp_path / "online" / "checkpoint-2"))


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="online_scale must be one of 'mechanic'"):
        MLRSNetConfig(output_dir="o", online_scale="prodigy")
    with pytest.raises(ValueError, match="online_scale is for transfer"):
        MLRSNetCallback(MLRSNetSchedule(hidden_size=8), meta_train=True, meta_dataset=[1], online_scale="mechanic")
    scale = MechanicScale()
    scale.attach(torch.optim.SGD([torch.nn.Parameter(torch.ones(3))], lr=1.0))
    state = scale.state_dict()
    with pytest.raises(ValueError, match="'reward' must be >= 0"):
        scale.load_state_dict({**state, "reward": -torch.ones(6)})
    with pytest.raises(ValueError, match="'s' must be 6 finite numbers"):
        scale.load_state_dict({**state, "s": torch.full((6,), float("nan"))})
    with pytest.raises(ValueError, match="does not match the optimizer's parameters"):
        scale.load_state_dict({**state, "ref": [torch.ones(4)], "delta": [torch.zeros(4)]})


def test_the_lr_scale_the_user_gives_does_not_matter_and_without_the_online_scale_it_does(tmp_path):
    """Item 3 of issue 32: learning_rate x 1e-3 .. 1e3 (relative mode: the shape's scale) and a fixed gamma."""
    steps = 150
    online = [
        train_online(tmp_path / f"o{k}", learned_schedule(), steps, learning_rate=k, online_scale="mechanic")[0]
        for k in (1e-3, 1.0, 1e3)
    ]
    losses = [t.state.log_history[-2]["loss"] for t in online]
    assert losses[0] == losses[1] == losses[2]  # the unit of the shape is 1 whatever the user's LR
    fixed = [
        train_online(tmp_path / f"f{k}", learned_schedule(), steps, gamma=k)[0].state.log_history[-2]["loss"]
        for k in (1e-3, 1.0, 1e3)
    ]
    # (a diverged run logs nan: not within any tolerance either)
    assert not all(abs(v - fixed[1]) <= 0.05 * fixed[1] for v in fixed)


def test_the_loss_scale_moves_the_final_loss_little_with_the_online_scale_and_much_without(tmp_path):
    """The loss x 0.1 .. 10: with SGD this multiplies every update, as an LR 10x smaller or larger would.

    Without clipping: a clipping threshold is an absolute gradient norm, which a scaled loss crosses at other steps
    (with max_grad_norm=1 the loss x 10 ends at 0.38 against 0.17-0.19).
    """
    steps = 300

    def final_loss(loss_scale, **kwargs):
        out = tmp_path / f"{loss_scale}-{len(kwargs)}"
        trainer, model = train_online(
            out, learned_schedule(), steps, loss_scale=loss_scale, max_grad_norm=0.0, **kwargs
        )
        data = digits()
        with torch.no_grad():
            model.eval()
            x = torch.stack([d["x"] for d in data])
            y = torch.stack([d["labels"] for d in data])
            return float(torch.nn.functional.cross_entropy(model.head(model.body(x)), y))

    online = [final_loss(k, online_scale="mechanic") for k in (0.1, 1.0, 10.0)]
    fixed = [final_loss(k, gamma=1.0) for k in (0.1, 1.0, 10.0)]
    assert max(online) <= 1.1 * min(online), online  # measured: 0.166-0.177 over 0.1, 0.3, 1, 3, 10
    assert not max(fixed) <= 1.1 * min(fixed), fixed


def test_a_quadratic_of_any_curvature_is_minimised_with_no_lr():
    """f(x) = L/2 |x|^2 for L from 0.01 to 100, SGD at LR 1 (2/L is the stability limit): the same relative loss.

    The step taken along the gradient, <x_t - x_{t+1}, g_t> / |g_t|^2 (median over the 50 steps after it first
    exceeds 0.1 / L), is 0.32 / L, 0.41 / L and 0.58 / L here; S itself is not a per-step LR (it rescales every
    past update) and settles at 0.02-0.05 / L.
    """
    reached = []
    for curvature in (0.01, 1.0, 100.0):
        torch.manual_seed(0)
        x = torch.nn.Parameter(torch.randn(50) * 10)
        optimizer = torch.optim.SGD([x], lr=1.0)
        scale = MechanicScale()
        scale.attach(optimizer)
        start = 0.5 * curvature * float(x.detach().square().sum())
        steps = []
        for _ in range(300):
            optimizer.zero_grad()
            loss = 0.5 * curvature * x.square().sum()
            loss.backward()
            grad, before = x.grad.clone(), x.detach().clone()
            optimizer.step()
            steps.append(float((before - x.detach()) @ grad / (grad @ grad)))
        reached.append(float(loss.detach()) / start)
        first = next(i for i, step in enumerate(steps) if step * curvature > 0.1)
        effective = statistics.median(steps[first : first + 50]) * curvature
        assert 0.25 < effective < 1.0, (curvature, effective)
        assert 0.005 / curvature < float(scale.scale) < 0.2 / curvature
    assert max(reached) < 1e-6, reached
