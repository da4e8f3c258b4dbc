"""Training the PPO LR controller: a ``gymnasium`` environment around a child training run, and PPO.

One episode trains a fresh child network for ``episode_steps`` optimizer steps (Adam by default, from
an initial LR drawn from ``initial_lrs``). Every ``decision_interval`` steps the agent sees the 7
features of :func:`~mlrsnet_hf.lr_controller.observe`, sets the LR for the next interval, and is
rewarded with minus the validation loss after it. PPO, the running normalisation of observations and
rewards, and the actor-critic come from ``stable-baselines3`` (``pip install mlrsnet_hf[ppo]``); the
trained actor and the frozen observation statistics are exported as an :class:`LRController`.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from ..lr_controller import FEATURES, LRController, next_lr, observe
from ..lr_controller.driver import probe_batch

try:
    import gymnasium as gym
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("Training an LR controller needs the [ppo] extra: pip install 'mlrsnet_hf[ppo]'.") from e

logger = logging.getLogger(__name__)


class LRControlEnv(gym.Env):
    """Each step of the environment = one controller decision = ``decision_interval`` child optimizer steps."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        make_model: Callable[[], nn.Module],
        train_dataset: Dataset,
        val_dataset: Dataset,
        batch_size: int = 64,
        val_batch_size: int = 256,
        episode_steps: int = 1000,
        decision_interval: int = 10,
        initial_lrs: Sequence[float] = (1e-2, 1e-3, 1e-4),
        action_space: str = "discrete",
        max_change: float = 0.05,
        noise: float = 0.0,
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
        collate_fn: Callable = default_collate,
        min_lr: float = 1e-7,
        max_lr: float = 10.0,
        max_grad_norm: float | None = None,
    ) -> None:
        super().__init__()
        if episode_steps < decision_interval:
            raise ValueError(f"episode_steps ({episode_steps}) must be >= decision_interval ({decision_interval}).")
        self.make_model = make_model
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.episode_steps, self.decision_interval = episode_steps, decision_interval
        self.initial_lrs = tuple(float(lr) for lr in initial_lrs)
        self.kind, self.max_change, self.noise = action_space, max_change, noise
        self.make_optimizer, self.collate_fn = optimizer, collate_fn
        self.min_lr, self.max_lr = min_lr, max_lr
        self.max_grad_norm = max_grad_norm
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(len(FEATURES),), dtype=np.float32)
        self.action_space = (
            gym.spaces.Discrete(3) if action_space == "discrete" else gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        )
        self.model: nn.Module | None = None
        # (first, last) training loss (means over a decision interval) of the last episode that ran to its end
        self.completed_loss_range: tuple[float, float] | None = None

    # ------------------------------------------------------------------ episode
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        torch_seed = int(self.np_random.integers(2**31))
        torch.manual_seed(torch_seed)
        self.model = self.make_model()
        self.model.train()
        self.lr = float(self.np_random.choice(self.initial_lrs))
        self.optimizer = self.make_optimizer(self.model.parameters(), lr=self.lr)
        generator = torch.Generator().manual_seed(torch_seed)
        loader = DataLoader(
            self.train_dataset,
            self.batch_size,
            shuffle=True,
            drop_last=True,
            generator=generator,
            collate_fn=self.collate_fn,
        )
        self.batches: Iterator[dict[str, torch.Tensor]] = itertools.chain.from_iterable(itertools.repeat(loader))
        self.probe = probe_batch(self.val_dataset, self.val_batch_size, self.collate_fn)  # as in the Trainer
        self.step_count = 0
        self.episode_losses: list[float] = []
        first = next(self.batches)
        self.batches = itertools.chain([first], self.batches)
        with torch.no_grad():  # the first step's training loss, as the Trainer glue observes at step 0
            start_loss = float(self.model(**first)["loss"])
        self.features, self.probs = observe(self.model, self.probe, start_loss, self.lr, None)
        return self.features.numpy().astype(np.float32), {"lr": self.lr, "val_loss": float(self.features[1])}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self.model is None:
            raise RuntimeError("Call reset() before step().")
        self.lr = next_lr(self.lr, action, self.kind, self.max_change, self.noise, self.min_lr, self.max_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        losses = []
        for _ in range(self.decision_interval):
            batch = next(self.batches)
            loss = self.model(**batch)["loss"]
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
            self.optimizer.step()
            losses.append(float(loss.detach()))
            self.step_count += 1
        train_loss = float(np.mean(losses))
        self.episode_losses.append(train_loss)
        self.features, self.probs = observe(self.model, self.probe, train_loss, self.lr, self.probs)
        val_loss = float(self.features[1])
        diverged = not (math.isfinite(train_loss) and math.isfinite(val_loss))
        # A diverged child ends the episode with a large, finite penalty (PPO needs finite rewards).
        reward = -val_loss if not diverged else -100.0
        observation = np.nan_to_num(self.features.numpy(), nan=0.0, posinf=1e6, neginf=-1e6).astype(np.float32)
        terminated = diverged or self.step_count >= self.episode_steps
        if terminated and not diverged:
            self.completed_loss_range = (self.episode_losses[0], self.episode_losses[-1])
        return observation, reward, terminated, False, {"lr": self.lr, "val_loss": val_loss, "train_loss": train_loss}


def train_controller(
    make_env: Callable[[], LRControlEnv],
    total_timesteps: int,
    seed: int = 0,
    n_steps: int = 100,
    batch_size: int = 50,
    learning_rate: float = 3e-4,
    n_envs: int = 1,
    progress: bool = True,
    **ppo_kwargs: Any,
) -> tuple[LRController, Any]:
    """Train a controller with PPO on ``make_env()`` environments; returns ``(controller, sb3_model)``.

    Observations and rewards are normalised by running means (``VecNormalize``); the actor and the critic
    are MLPs with two hidden layers of 32 (tanh). The exported controller carries the actor's weights and
    the final observation statistics, and records the training loss range of the last complete episode
    (``train_loss_range``: what its card's picture feeds it). ``progress``: a tqdm bar over the decisions
    (one per ``decision_interval`` child steps) and one INFO log line per finished episode.
    """
    try:
        from stable_baselines3 import PPO
        from stable_baselines3.common.env_util import make_vec_env
        from stable_baselines3.common.logger import Logger
        from stable_baselines3.common.vec_env import VecNormalize
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("Training an LR controller needs the [ppo] extra: pip install 'mlrsnet_hf[ppo]'.") from e

    env = VecNormalize(make_vec_env(make_env, n_envs=n_envs, seed=seed), norm_obs=True, norm_reward=True)
    probe = make_env()
    policy_kwargs = {"net_arch": {"pi": [32, 32], "vf": [32, 32]}, "activation_fn": nn.Tanh}
    agent = PPO(
        "MlpPolicy",
        env,
        n_steps=n_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        policy_kwargs=policy_kwargs,
        device="cpu",
        verbose=0,
        **ppo_kwargs,
    )
    if ppo_kwargs.get("tensorboard_log") is None:  # sb3's own logger leaves an empty SB3-<date> folder in /tmp
        agent.set_logger(Logger(folder=None, output_formats=[]))
    agent.learn(total_timesteps=total_timesteps, callback=progress_callback(total_timesteps, disable=not progress))
    training_run: dict[str, Any] = {"total_timesteps": total_timesteps, "seed": seed, "algorithm": "PPO"}
    ranges = [r for r in env.get_attr("completed_loss_range") if r is not None]
    if ranges:
        training_run["train_loss_range"] = [round(float(v), 4) for v in ranges[0]]
    controller = export_controller(agent, env, probe, training_run=training_run)
    return controller, agent


def progress_callback(total_timesteps: int, disable: bool = False) -> Any:
    """A stable-baselines3 callback: a tqdm bar over the decisions, and an INFO line per finished episode."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Progress(BaseCallback):
        def _on_training_start(self) -> None:
            self.bar = tqdm(total=total_timesteps, desc="PPO decisions", unit="decision", disable=disable)
            self.episodes = 0

        def _on_step(self) -> bool:
            self.bar.update(min(self.training_env.num_envs, max(total_timesteps - self.bar.n, 0)))
            for info in self.locals.get("infos", []):
                if "episode" in info:  # the Monitor wrapper's summary, at the end of an episode
                    self.episodes += 1
                    if not disable:
                        logger.info(
                            "episode %d finished after %d decisions: return %.4g, final LR %.3g, validation loss %.4g",
                            self.episodes,
                            info["episode"]["l"],
                            info["episode"]["r"],
                            info["lr"],
                            info["val_loss"],
                        )
            return True

        def _on_training_end(self) -> None:
            self.bar.close()

    return Progress()


def export_controller(agent: Any, env: Any, probe: LRControlEnv, training_run: dict[str, Any]) -> LRController:
    """An :class:`LRController` with the PPO actor's weights and the ``VecNormalize`` observation statistics."""
    controller = LRController(
        action_space=probe.kind,
        max_change=probe.max_change,
        decision_interval=probe.decision_interval,
        hidden_sizes=[32, 32],
        probe_size=probe.val_batch_size,
        obs_clip=float(env.clip_obs),
        obs_epsilon=float(env.epsilon),
        min_lr=probe.min_lr,
        max_lr=probe.max_lr,
        training_run={**training_run, "episode_steps": probe.episode_steps, "initial_lrs": list(probe.initial_lrs)},
    )
    controller.obs_mean.copy_(torch.as_tensor(env.obs_rms.mean, dtype=torch.float64))
    controller.obs_var.copy_(torch.as_tensor(env.obs_rms.var, dtype=torch.float64))
    policy = agent.policy
    controller.policy_net.load_state_dict(policy.mlp_extractor.policy_net.state_dict())
    controller.action_net.load_state_dict(policy.action_net.state_dict())
    return controller
