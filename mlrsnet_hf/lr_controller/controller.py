"""The PPO LR controller (Xu et al., 2019, "Learning an Adaptive Learning Rate Schedule", arXiv 1909.09712).

Every ``decision_interval`` optimizer steps the controller observes 7 features of the training state
(:data:`FEATURES`), normalises them with running statistics frozen at the end of its training, and acts
on the LR: ``discrete`` (decrease / keep / increase by ``max_change``) or ``continuous`` (a factor
``1 + max_change * a`` with ``a`` in [-1, 1]). The policy is the actor of a PPO actor-critic (two hidden
layers of 32, tanh), trained in :mod:`mlrsnet_hf.experiments.controller_env`; this module holds what a trained
controller needs at use time, and saves / loads / pushes as a Hub repo like an MLR-SNet schedule.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from torch import nn

from ..hub import ScheduleRepoMixin, card_from_template, significant
from ..version import __version__

FEATURES = (
    "train_loss",
    "val_loss",
    "prediction_variance",
    "prediction_change_variance",
    "output_weight_mean",
    "output_weight_variance",
    "previous_lr",
)
ACTION_SPACES = ("discrete", "continuous")


def output_layer(model: nn.Module) -> nn.Module:
    """The model's output layer: ``get_output_embeddings()`` when it has one, else its last ``nn.Linear``."""
    get_output = getattr(model, "get_output_embeddings", None)
    layer = get_output() if callable(get_output) else None
    if layer is None:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"{type(model).__name__} has no nn.Linear layer to observe as its output layer.")
        layer = linears[-1]
    return layer


def next_lr(
    lr: float,
    action: Any,
    action_space: str,
    max_change: float,
    noise: float = 0.0,
    min_lr: float = 0.0,
    max_lr: float = math.inf,
) -> float:
    """The LR after one decision, within ``[min_lr, max_lr]``.

    ``action``: 0 / 1 / 2 (decrease / keep / increase) or a number in [-1, 1].
    """
    if action_space == "discrete":
        factor = (1.0 / (1.0 + max_change), 1.0, 1.0 + max_change)[int(action)]
    else:
        a = float(torch.as_tensor(action, dtype=torch.float64).reshape(-1)[0].clamp(-1.0, 1.0))
        factor = 1.0 + max_change * a
    if noise:
        factor *= math.exp(noise * float(torch.randn(())))
    return min(max(lr * factor, min_lr), max_lr)


@torch.no_grad()
def observe(
    model: nn.Module, probe: dict[str, torch.Tensor], train_loss: float, lr: float, previous_probs: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 7 raw features (:data:`FEATURES`) and the probe batch's predictions.

    The model runs in eval mode on ``probe`` (a fixed validation batch with labels): its loss is the
    validation loss. Its predictions are the probabilities it gives the true labels (one per example, or
    per token for a language model; ignored positions, label -100, count as 0): their variance is the
    prediction variance, and the variance of their change since ``previous_probs`` (the last decision's)
    the prediction-change variance (0 at the first decision). Keeping one number per label (not the whole
    softmax) keeps the state small enough to checkpoint. ``train_loss`` is the mean training loss since
    the last decision.
    """
    was_training = model.training
    model.eval()
    try:
        out = model(**probe)
    finally:
        model.train(was_training)
    labels = probe["labels"]
    log_probs = torch.log_softmax(out["logits"].detach().float(), dim=-1)  # dicts and ModelOutputs alike
    probs = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1).exp() * (labels != -100)
    val_loss = out["loss"]
    change = 0.0 if previous_probs is None else float((probs - previous_probs.to(probs.device)).var())
    weight = output_layer(model).weight.detach().float()
    features = torch.tensor(
        [train_loss, float(val_loss), float(probs.var()), change, float(weight.mean()), float(weight.var()), lr],
        dtype=torch.float64,
    )
    return features, probs


class LRController(
    nn.Module,
    ScheduleRepoMixin,
    PyTorchModelHubMixin,
    library_name="mlrsnet_hf",
    license="apache-2.0",
    tags=["learning-rate-schedule", "lr-controller", "ppo", "reinforcement-learning"],
    paper_url="https://arxiv.org/abs/1909.09712",
):
    """A trained LR controller: observation normalisation and the PPO actor (deterministic at use time).

    Args:
        action_space: ``"discrete"`` (decrease / keep / increase) or ``"continuous"`` (a factor).
        max_change: the largest relative LR change of one decision.
        decision_interval: optimizer steps between decisions (K).
        hidden_sizes: the actor's hidden layers (tanh).
        probe_size: how many held-out examples the validation features are measured on.
        obs_clip, obs_epsilon: observations are standardised with the running statistics frozen at the end
            of training (``obs_mean``/``obs_var`` buffers, saved with the weights) and clipped to
            ``[-obs_clip, obs_clip]``.
        min_lr, max_lr: bounds on the LR.
        training_run: how it was trained (task, PPO settings, episodes, wall time); for the card.
    """

    model_type = "lr_controller"
    # The largest sizes a config.json may ask for (checked before anything is built from it: repo_checks.py).
    config_limits = {"hidden_sizes": 512}

    def __init__(
        self,
        action_space: str = "discrete",
        max_change: float = 0.05,
        decision_interval: int = 10,
        hidden_sizes: Sequence[int] = (32, 32),
        probe_size: int = 256,
        obs_clip: float = 10.0,
        obs_epsilon: float = 1e-8,
        min_lr: float = 1e-7,
        max_lr: float = 10.0,
        training_run: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if action_space not in ACTION_SPACES:
            raise ValueError(f"action_space must be one of {ACTION_SPACES}, got {action_space!r}.")
        for name, value in (("max_change", max_change), ("obs_clip", obs_clip), ("obs_epsilon", obs_epsilon),
                            ("min_lr", min_lr), ("max_lr", max_lr)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}.")
        if not 0 < max_change < 1:
            raise ValueError(f"max_change must be in (0, 1), got {max_change}.")
        for name, value in (("decision_interval", decision_interval), ("probe_size", probe_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        if not hidden_sizes or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden_sizes):
            raise ValueError(f"hidden_sizes must be integers >= 1, got {hidden_sizes!r}.")
        for name, value in (("obs_clip", obs_clip), ("obs_epsilon", obs_epsilon)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}.")
        if not 0 < min_lr < max_lr:
            raise ValueError(f"Need 0 < min_lr < max_lr, got {min_lr}, {max_lr}.")
        self.action_space = action_space
        self.max_change = float(max_change)
        self.decision_interval = int(decision_interval)
        self.hidden_sizes = [int(h) for h in hidden_sizes]
        self.probe_size = int(probe_size)
        self.obs_clip = float(obs_clip)
        self.obs_epsilon = float(obs_epsilon)
        self.min_lr, self.max_lr = float(min_lr), float(max_lr)
        self.training_run = dict(training_run or {})
        self.name_or_path: str | None = None
        n = len(FEATURES)
        self.register_buffer("obs_mean", torch.zeros(n, dtype=torch.float64))
        self.register_buffer("obs_var", torch.ones(n, dtype=torch.float64))
        layers: list[nn.Module] = []
        width = n
        for h in self.hidden_sizes:
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        self.policy_net = nn.Sequential(*layers)  # the names of stable-baselines3's actor
        self.action_net = nn.Linear(width, 3 if action_space == "discrete" else 1)

    @property
    def config(self) -> dict[str, Any]:
        """What ``config.json`` holds (the statistics and the actor are in ``model.safetensors``)."""
        return {
            "model_type": self.model_type,
            "library_name": "mlrsnet_hf",
            "library_version": __version__,
            "action_space": self.action_space,
            "max_change": self.max_change,
            "decision_interval": self.decision_interval,
            "hidden_sizes": list(self.hidden_sizes),
            "probe_size": self.probe_size,
            "obs_clip": self.obs_clip,
            "obs_epsilon": self.obs_epsilon,
            "min_lr": self.min_lr,
            "max_lr": self.max_lr,
            "training_run": copy.deepcopy(self.training_run),
        }

    def extra_repr(self) -> str:
        return f"action_space={self.action_space!r}, decision_interval={self.decision_interval}, hidden_sizes={self.hidden_sizes}"

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous() for k, v in self.state_dict().items()}

    def normalize(self, features: torch.Tensor) -> torch.Tensor:
        features = torch.as_tensor(features, dtype=torch.float64)
        z = (features - self.obs_mean) / torch.sqrt(self.obs_var + self.obs_epsilon)
        return z.clamp(-self.obs_clip, self.obs_clip)

    @torch.no_grad()
    def act(self, features: torch.Tensor) -> int | float:
        """The deterministic action for raw (unnormalised) features: the argmax, or the clipped Gaussian mean."""
        dtype = self.action_net.weight.dtype
        out = self.action_net(self.policy_net(self.normalize(features).to(dtype)))
        return int(out.argmax()) if self.action_space == "discrete" else float(out.reshape(-1)[0].clamp(-1, 1))

    def decide(self, features: torch.Tensor, lr: float) -> float:
        """The LR for the next ``decision_interval`` steps, bounded to ``[min_lr, max_lr]``."""
        return next_lr(
            lr, self.act(features), self.action_space, self.max_change, min_lr=self.min_lr, max_lr=self.max_lr
        )

    def simulate(self, train_losses: Sequence[float], base_lr: float) -> list[float]:
        """The LR at every step for a given training-loss curve, the other features held at their training means.

        A preview only (a real run observes the model): the validation loss follows the training loss.
        """
        lrs, lr = [], float(base_lr)
        for step, loss in enumerate(train_losses):
            if step % self.decision_interval == 0:
                features = self.obs_mean.clone()
                features[FEATURES.index("train_loss")] = loss
                features[FEATURES.index("val_loss")] = loss
                features[FEATURES.index("previous_lr")] = lr
                lr = self.decide(features, lr)
            lrs.append(lr)
        return lrs

    def validate_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """The frozen observation variance must be >= 0 (a negative one makes the policy act constantly)."""
        if (weights["obs_var"] < 0).any():
            raise ValueError(f"obs_var (the observation variance) must be >= 0, got {weights['obs_var'].tolist()}.")

    # ----------------------------------------------------------------- Hub I/O
    def plot_preview(self, path: str | Path) -> None:
        """The repo's picture: the LR it sets along a typical decreasing loss, from its training LRs."""
        from .plotting import plot_controller_response

        plot_controller_response(self, path)

    def plot_lr_history(self, lrs: list[float], path: str | Path) -> None:
        """The LR of every optimizer step of a run (``lr_used.png``)."""
        from ..plotting import plot_lr_curve

        plot_lr_curve(lrs, path)

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The repo's ``README.md``, rendered from ``hub_cards/lr_controller.md``."""
        return render_controller_card(self, **kwargs)


def render_controller_card(controller: LRController, **template_kwargs: Any) -> ModelCard:
    """The model card of an LR controller: the class's Hub metadata (tags, license, paper), datasets, the template.

    The training record's floats are shown to 4 significant digits.
    """
    run = controller.training_run
    card_data = {
        "datasets": [run["dataset"]] if run.get("dataset") else None,
        "model_name": template_kwargs.pop("model_name", None) or run.get("name") or "lr-controller",
    }
    return card_from_template(
        controller,
        "lr_controller.md",
        card_data,
        config=controller.config,
        training_run=significant(run),
        **template_kwargs,
    )
