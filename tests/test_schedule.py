import io
import math

import pytest
import torch

from mlrsnet_hf import MLRSNetSchedule, auto_gamma
from mlrsnet_hf.mlrsnet.run import ScheduleRun


def make(seed: int = 0, **kwargs) -> MLRSNetSchedule:
    torch.manual_seed(seed)
    schedule = MLRSNetSchedule(hidden_size=16, **kwargs)
    with torch.no_grad():
        for p in schedule.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return schedule


def run(r: ScheduleRun, losses, total=None, averages=None) -> list[float]:
    """What the Trainer glue does each step; averages[k] is the average loss at stage k's start."""
    total = total or len(losses)
    lrs = []
    for step, loss in enumerate(losses):
        stage = r.stage_at(step, total)
        if stage != r.stage:
            r.enter_stage(stage, average_loss=(averages or {}).get(stage, loss))
        lrs.append(r.step(loss))
    return lrs


def test_auto_gamma_formula():
    for L, C in [(2.3, 10), (0.5, 100), (6.0, 10000), (0.01, 10)]:
        expected = abs(math.sqrt(L) * math.log(L * C) / C**0.25 / 4)
        assert auto_gamma(L, C) == pytest.approx(expected, rel=1e-12)
    assert auto_gamma(2.302585, 10) == pytest.approx(abs(math.sqrt(2.302585) * math.log(23.02585) / 10**0.25 / 4))
    with pytest.raises(ValueError, match="positive average"):
        auto_gamma(float("nan"), 10)
    with pytest.raises(ValueError, match="num_classes"):
        auto_gamma(1.0, 1)


def test_stage_boundaries_are_thirds():
    s = make(num_stages=3)
    assert s.stage_boundaries(300) == [0, 100, 200]
    assert s.stage_boundaries(10) == [0, 3, 6]
    assert [s.stage_at(t, 10) for t in range(10)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    custom = make(num_stages=2, stage_starts=[0.0, 0.9])
    assert custom.stage_boundaries(100) == [0, 90]


def test_fixed_gamma_is_gamma_times_p():
    s = make(gamma=0.5)
    losses = torch.linspace(2.0, 0.1, 25).tolist()
    lrs = run(s.start(), losses)
    p = s.unroll(losses)
    torch.testing.assert_close(torch.tensor(lrs), 0.5 * p, rtol=1e-6, atol=0)


def test_state_carries_across_stage_switches():
    s = make(num_stages=3, gamma=1.0)
    losses = torch.linspace(2.5, 0.05, 30).tolist()
    lrs = run(s.start(), losses)
    # By hand: each stage's network continues from the state the previous stage left.
    state = s.stages[0].initial_state()
    expected = []
    for step, loss in enumerate(losses):
        p, state = s.stages[s.stage_at(step, 30)](loss, state)
        expected.append(p.item())
    assert lrs == pytest.approx(expected, abs=1e-7)
    # And it is not the same as restarting from a zero state at the switch.
    restarted = s.unroll(losses[10:20], stage=1)[0].item()
    assert abs(restarted - lrs[10]) > 1e-6


def test_auto_gamma_per_stage():
    s = make(num_stages=3, gamma="auto").start(num_classes=10)
    losses = torch.linspace(2.3, 0.1, 30).tolist()
    averages = {0: 2.2, 1: 0.9, 2: 0.3}
    lrs = run(s, losses, averages=averages)
    assert s.gammas == pytest.approx([auto_gamma(averages[k], 10) for k in range(3)])
    unit = make(num_stages=3, gamma=1.0)  # same weights, gamma 1: the p sequence
    ps = run(unit.start(), losses)
    assert lrs == pytest.approx([s.gammas[s.stage_at(t, 30)] * p for t, p in enumerate(ps)], rel=1e-6)
    with pytest.raises(ValueError, match="num_classes"):
        make(gamma="auto").start().enter_stage(0, average_loss=2.0)
    with pytest.raises(ValueError, match="average training loss"):
        make(gamma="auto").start(num_classes=10).enter_stage(0)


@pytest.mark.parametrize("max_scale", [1.0, 2.5])
def test_relative_mode_bounds(max_scale):
    base_lr = 3e-4
    schedule = make(num_stages=3, gamma="relative", relative_max_scale=max_scale, seed=4)
    gen = torch.Generator().manual_seed(0)
    losses = (torch.linspace(3.0, 0.01, 300) * torch.exp(torch.randn(300, generator=gen))).tolist()
    s = schedule.start(base_lr=base_lr)
    lrs = run(s, losses)
    assert lrs[0] == pytest.approx(base_lr, rel=1e-6)  # the first step uses exactly learning_rate
    assert all(0.0 < lr <= max_scale * base_lr * (1 + 1e-6) for lr in lrs)
    assert len(set(lrs)) > 10  # the network shapes it
    assert s.gammas[0] == s.gammas[1] == s.gammas[2]  # gamma kept across stages
    with pytest.raises(ValueError, match="base learning rate"):
        make(gamma="relative").start().enter_stage(0)


def test_non_finite_loss_keeps_state_and_last_lr(caplog):
    s = make(gamma=1.0).start()
    s.enter_stage(0)
    lr1 = s.step(2.0)
    h_before = s.state.h.clone()
    with caplog.at_level("WARNING"):
        lr_nan = s.step(float("nan"))
        lr_inf = s.step(torch.tensor(float("inf")))
    assert lr_nan == lr_inf == lr1
    assert torch.equal(s.state.h, h_before)
    assert s.num_skipped == 2 and s.num_steps == 1
    assert "Non-finite training loss" in caplog.text
    # The sequence continues as if the bad steps had not happened.
    ref = make(gamma=1.0).start()
    ref.enter_stage(0)
    ref.step(2.0)
    assert s.step(1.5) == ref.step(1.5)

    first = make(gamma=1.0).start()
    first.enter_stage(0)
    with pytest.raises(ValueError, match="first step is nan"):
        first.step(float("nan"))


def test_state_dict_round_trip_continues_exactly():
    losses = torch.linspace(2.5, 0.05, 40).tolist()
    uninterrupted = run(make(num_stages=3, gamma="auto", seed=7).start(num_classes=10), losses)

    first = make(num_stages=3, gamma="auto", seed=7).start(num_classes=10)
    head = []
    for step, loss in enumerate(losses[:17]):
        stage = first.stage_at(step, 40)
        if stage != first.stage:
            first.enter_stage(stage, average_loss=loss)
        head.append(first.step(loss))
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)  # what the Trainer does with scheduler.pt

    resumed = make(num_stages=3, gamma="auto", seed=7).start(num_classes=10)
    resumed.load_state_dict(state)
    tail = []
    for step, loss in enumerate(losses[17:], start=17):
        stage = resumed.stage_at(step, 40)
        if stage != resumed.stage:
            resumed.enter_stage(stage, average_loss=loss)
        tail.append(resumed.step(loss))
    assert head + tail == uninterrupted  # bit-exact


def test_unroll_and_normalization():
    s = make(input_normalization="log_num_classes", gamma=1.0)
    losses = [9.2, 8.0, 6.5, 5.0]
    plain = make(input_normalization="none", gamma=1.0)
    expected = plain.unroll([x / math.log(10000) for x in losses])
    torch.testing.assert_close(s.unroll(losses, num_classes=10000), expected)
    with pytest.raises(ValueError, match="num_classes"):
        s.unroll(losses)
    # unroll and simulate leave a run of the schedule alone
    r = s.start(num_classes=10000)
    r.enter_stage(0)
    r.step(9.0)
    before = r.state_dict()
    s.unroll(losses, num_classes=10)
    s.simulate(losses, num_classes=10, base_lr=1.0)
    after = r.state_dict()
    assert torch.equal(before["h"], after["h"]) and before["num_steps"] == after["num_steps"]
    assert r.num_classes == 10000


def test_simulate_equals_a_run():
    s = make(num_stages=3, gamma="auto")
    losses = torch.linspace(2.0, 0.1, 33).tolist()
    sim = s.simulate(losses, num_classes=10)
    assert run(s.start(num_classes=10), losses) == sim


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gamma": "cosine"}, "gamma must be"),
        ({"gamma": -1.0}, "gamma must be"),
        ({"gamma": float("nan")}, "gamma must be"),
        ({"num_stages": 2, "stage_starts": [0.0]}, "stage_starts has 1"),
        ({"num_stages": 2, "stage_starts": [0.1, 0.5]}, "start at 0.0"),
        ({"num_stages": 2, "stage_starts": [0.0, 1.0]}, "below 1.0"),
        ({"input_normalization": "log"}, "input_normalization"),
        ({"gate_layout": "gifo"}, "Unknown gate_layout"),
        ({"num_stages": 0}, "num_stages"),
    ],
)
def test_bad_config_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MLRSNetSchedule(**kwargs)


def test_a_run_leaves_the_schedule_as_it_was():
    """The artifact holds weights and recipe: a run with its own gamma, stages and steps changes neither."""
    schedule = make(num_stages=2, gamma="auto")
    config, weights = schedule.config, {k: v.clone() for k, v in schedule.state_dict().items()}
    r = schedule.start(num_classes=10, base_lr=0.1, gamma="relative", relative_max_scale=2.0)
    run(r, torch.linspace(2.0, 0.1, 12).tolist())
    assert r.gamma == "relative" and r.num_steps == 12 and r.stage == 1
    assert schedule.config == config and schedule.gamma == "auto"
    assert all(torch.equal(v, weights[k]) for k, v in schedule.state_dict().items())
    assert set(schedule.state_dict()) == set(weights)  # no runtime state in the artifact's state dict
    with pytest.raises(AttributeError, match=r"the run's now: run = schedule.start\(.*\); run.step"):
        schedule.step(2.0)
    with pytest.raises(AttributeError, match=r"run.last_lr"):
        schedule.last_lr  # noqa: B018


def test_a_run_refuses_a_checkpoint_of_another_recipe():
    r = make(gamma=1.0).start()
    state = r.state_dict()
    with pytest.raises(ValueError, match="The checkpoint's run used gamma=1.0, this run gamma=0.5"):
        make(gamma=0.5).start().load_state_dict(state)


def test_gamma_auto_keeps_the_previous_stages_gamma_when_the_average_loss_is_not_finite(caplog):
    """A model gone NaN at a stage switch: the stage keeps the last gamma (as a NaN loss's step is skipped); with
    no earlier stage there is nothing to stand in, and the error says so. An LR of 0 or NaN is never used."""
    schedule = MLRSNetSchedule(hidden_size=4, num_stages=3, gamma="auto")
    run = schedule.start(num_classes=10)
    run.enter_stage(0, average_loss=2.3)
    with caplog.at_level("WARNING"):
        run.enter_stage(1, average_loss=float("nan"))
        run.enter_stage(2, average_loss=0.1)  # L * C == 1: the rule gives 0
    assert run.gammas[1] == run.gammas[2] == run.gammas[0] > 0
    assert "keeping the previous stage's gamma" in caplog.text
    with pytest.raises(ValueError, match='gamma="auto" cannot start stage 0: the average training loss is nan'):
        schedule.start(num_classes=10).enter_stage(0, average_loss=float("nan"))


def test_a_missing_num_classes_says_where_to_pass_it():
    schedule = MLRSNetSchedule(hidden_size=4, gamma=1.0, input_normalization="log_num_classes")
    with pytest.raises(
        ValueError, match=r"needs num_classes \(C\): pass num_classes=\.\.\. to schedule.start, unroll"
    ):
        schedule.unroll([5.0, 4.0])
    assert len(schedule.unroll([5.0, 4.0], num_classes=10)) == 2
    with pytest.raises(ValueError, match=r'gamma="auto" needs num_classes \(C\)'):
        MLRSNetSchedule(hidden_size=4, gamma="auto").simulate([2.0, 1.0])
