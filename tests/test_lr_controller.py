"""The PPO LR controller: its environment on a tiny real task, a short PPO run, export and Hub round trip."""

import math

import numpy as np
import pytest
import torch
from tiny import DigitsNet, digits

pytest.importorskip("stable_baselines3", reason="the [ppo] extra (stable-baselines3) is not installed")

from mlrsnet_hf.experiments.controller_env import LRControlEnv, train_controller  # noqa: E402
from mlrsnet_hf.lr_controller import FEATURES, LRController, next_lr, observe  # noqa: E402


def make_env(**kwargs):
    data = digits()
    train, val = data[:600], data[1500:1700]
    options = dict(batch_size=32, val_batch_size=100, episode_steps=40, decision_interval=10, initial_lrs=(1e-2,))
    return LRControlEnv(DigitsNet, train, val, **{**options, **kwargs})


def test_lr_rule():
    assert next_lr(0.1, 2, "discrete", 0.05) == pytest.approx(0.105)
    assert next_lr(0.1, 0, "discrete", 0.05) == pytest.approx(0.1 / 1.05)
    assert next_lr(0.1, 1, "discrete", 0.05) == 0.1
    assert next_lr(0.1, np.array([1.0]), "continuous", 0.05) == pytest.approx(0.105)
    assert next_lr(0.1, np.array([-7.0]), "continuous", 0.05) == pytest.approx(0.095)  # clipped to [-1, 1]


def test_environment_observations_and_rewards():
    env = make_env()
    obs, info = env.reset(seed=0)
    assert obs.shape == (len(FEATURES),) and info["lr"] == 1e-2
    assert obs[FEATURES.index("previous_lr")] == pytest.approx(1e-2)
    assert obs[FEATURES.index("prediction_change_variance")] == 0.0
    rewards, lrs = [], []
    for t in range(4):
        obs, reward, terminated, truncated, info = env.step(2)  # increase
        rewards.append(reward)
        lrs.append(info["lr"])
        # the reward is minus the validation loss on the probe batch, recomputed here independently
        env.model.eval()
        with torch.no_grad():
            val_loss = float(env.model(**env.probe)["loss"])
        env.model.train()
        assert reward == pytest.approx(-val_loss, rel=1e-6)
        assert obs[FEATURES.index("val_loss")] == pytest.approx(val_loss, rel=1e-6)
        weight = env.model.head.weight.detach()
        assert obs[FEATURES.index("output_weight_mean")] == pytest.approx(float(weight.mean()), rel=1e-5)
        assert obs[FEATURES.index("output_weight_variance")] == pytest.approx(float(weight.var()), rel=1e-5)
        assert obs[FEATURES.index("prediction_change_variance")] > 0
        assert terminated == (t == 3) and not truncated
    assert lrs == pytest.approx([1e-2 * 1.05 ** (k + 1) for k in range(4)])
    assert rewards[-1] > rewards[0]  # the child learns: validation loss falls
    assert env.step_count == 40
    # Same seed, same episode.
    again = make_env()
    first, _ = again.reset(seed=0)
    env.reset(seed=0)
    np.testing.assert_array_equal(first, env.reset(seed=0)[0])


def test_observe_is_side_effect_free():
    model = DigitsNet()
    probe = torch.utils.data.default_collate(digits()[1500:1532])
    model.train()
    features, probs = observe(model, probe, 1.5, 0.1, None)
    assert model.training and features[0] == 1.5 and features[-1] == 0.1
    model.eval()
    with torch.no_grad():
        softmax = torch.softmax(model(**probe)["logits"], dim=-1)
    torch.testing.assert_close(probs, softmax[torch.arange(32), probe["labels"]])  # P(true label)
    assert features[2] == pytest.approx(float(probs.var()))
    assert math.isfinite(float(features[1]))


@pytest.mark.parametrize("action_space", ["discrete", "continuous"])
def test_short_ppo_run_changes_the_policy_and_exports_it(action_space, tmp_path):
    torch.manual_seed(0)
    untrained = LRController(action_space=action_space)
    controller, agent = train_controller(
        lambda: make_env(action_space=action_space, episode_steps=30), total_timesteps=40, n_steps=20, batch_size=10,
        n_epochs=2, seed=0,
    )  # fmt: skip
    # PPO moved the actor away from its initialisation (sb3 initialises it orthogonally with this seed).
    from stable_baselines3 import PPO

    def fresh_init():
        return PPO("MlpPolicy", agent.env, seed=0, policy_kwargs=agent.policy_kwargs, device="cpu").policy

    fresh, twin = fresh_init(), fresh_init()
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), twin.parameters(), strict=True))
    moved = [
        (a - b).abs().max().item()
        for a, b in zip(agent.policy.action_net.parameters(), fresh.action_net.parameters(), strict=True)
    ]
    assert max(moved) > 0
    assert controller.obs_var.ne(1).any() and untrained.obs_var.eq(1).all()  # running statistics exported
    # The exported controller acts exactly as the agent does on normalised observations.
    rng = np.random.default_rng(0)
    for _ in range(20):
        raw = rng.normal(size=len(FEATURES)) * np.array([1, 1, 1e-3, 1e-4, 1e-2, 1e-2, 1e-2]) + np.array(
            [2, 2, 0.01, 0, 0, 0.01, 0.01]
        )
        normalised = agent.env.normalize_obs(raw.astype(np.float32))
        expected, _ = agent.predict(normalised, deterministic=True)
        got = controller.act(torch.tensor(raw))
        if action_space == "discrete":
            assert got == int(expected)
        else:
            assert got == pytest.approx(float(np.clip(expected, -1, 1)[0]), abs=1e-5)
    # Hub round trip: config, weights and statistics, card and picture.
    controller.save_pretrained(tmp_path / "controller")
    files = {p.name for p in (tmp_path / "controller").iterdir()}
    assert files == {"config.json", "model.safetensors", "README.md", "lr_response.png"}
    card = (tmp_path / "controller" / "README.md").read_text()
    assert "library_name: mlrsnet_hf" in card and "](lr_response.png)" in card and "PPO" in card
    loaded = LRController.from_pretrained(tmp_path / "controller")
    assert loaded.action_space == action_space and loaded.training_run["algorithm"] == "PPO"
    for name, tensor in controller.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0)
    features = torch.tensor([2.0, 2.1, 0.01, 1e-4, 0.0, 0.01, 0.01], dtype=torch.float64)
    assert loaded.decide(features, 0.01) == controller.decide(features, 0.01)


def test_training_shows_progress_and_records_the_loss_range(caplog, capsys, tmp_path, monkeypatch):
    """A tqdm bar over the decisions and one INFO line per finished episode; the card's loss range recorded; no
    folder left in the temporary directory (sb3's default logger made an empty one per run)."""
    import logging
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    with caplog.at_level(logging.INFO, logger="mlrsnet_hf.experiments.controller_env"):
        controller, _ = train_controller(
            lambda: make_env(episode_steps=20), total_timesteps=6, n_steps=6, batch_size=3, n_epochs=1, seed=0
        )
    episodes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("episode ")]
    assert len(episodes) == 3 and episodes[0].startswith("episode 1 finished after 2 decisions: return ")
    assert "6/6" in capsys.readouterr().err  # the bar reached its end
    first, last = controller.training_run["train_loss_range"]
    assert 1.0 < first < 2.5 and 0 < last < first  # digits: from about ln 10 down
    quiet_controller, _ = train_controller(
        lambda: make_env(episode_steps=20), total_timesteps=2, n_steps=2, batch_size=2, n_epochs=1, progress=False
    )
    assert "decision" not in capsys.readouterr().err
    assert not list(tmp_path.glob("SB3-*"))
