"""An LR scale learned during the run: Mechanic (Cutkosky, Defazio and Mehta, 2023) over any optimizer.

The learned schedule gives the *shape* of the LR (``lr_t``, what the driver writes into the optimizer); the
online scale learns one scalar ``S`` from the training signal alone (no held-out data, no LR from the user) and
the weights become

    x_t = x_ref + S_t * Delta_t,    Delta_t = sum of the base optimizer's updates u_1 .. u_{t-1},

where ``u_k`` is what the wrapped optimizer (SGD, AdamW, ... at ``lr_k``) would have moved the weights at step
``k``. So the newest update is applied with ``S_{t+1} * lr_t`` (the LR the driver logs), and every earlier one is
rescaled with it: ``S`` can go down as well as up. ``S`` comes from Mechanic's tuner, a few coin-betting
scalars fed with ``h_t = <Delta_t, g_t + lambda * S_t * |g_t| / |x| * x>``, one number per step.

:class:`MechanicScale` wraps an optimizer through its step hooks (``register_step_pre_hook`` /
``register_step_post_hook``): every ``torch.optim.Optimizer`` works unchanged, the Trainer's included, and a
step skipped by the grad scaler is skipped by the scale too. It reads nothing on the host: ``S`` and the tuner
stay 0-d tensors on the parameters' device. It keeps two parameter-sized buffers, ``x_ref`` and ``Delta``
(``mechanic-pytorch``'s default keeps ``x_ref`` alone and recomputes ``Delta = (x - x_ref) / S``, which loses
the update while ``S`` is tiny, and clones the weights and gradients at every step). Its updates equal
``mechanic_pytorch.mechanize(...)(store_delta=True)``'s to rounding (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .optimizers import unwrap

# The package's defaults (the paper's): six betas, lambda = 0.01, s_init = 1e-8.
BETAS = (0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999)
ONLINE_SCALES = ("mechanic",)


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(a, b, strict=True)]).sum()


def _norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(tensors))))


class MechanicScale:
    """Mechanic's scale tuner over an optimizer's updates (see the module docstring).

    Args:
        betas: the tuner's discount factors (one coin-betting scalar each; ``S`` is their sum).
        s_decay: lambda, the pull of ``S`` towards 0 in proportion to the weights' norm.
        s_init: the initial wealth, relative to the first ``|h|``: ``S`` starts near ``s_init`` and grows.
        eps: added to denominators.
    """

    def __init__(
        self, betas: Sequence[float] = BETAS, s_decay: float = 0.01, s_init: float = 1e-8, eps: float = 1e-8
    ) -> None:
        self.betas_values = tuple(float(b) for b in betas)
        self.s_decay, self.s_init, self.eps = float(s_decay), float(s_init), float(eps)
        self.params: list[torch.Tensor] = []
        self.ref: list[torch.Tensor] = []
        self.delta: list[torch.Tensor] = []
        self._handles: list[Any] = []
        self._live: list[int] = []  # indices of the parameters with a gradient at this step
        self._grad_terms: tuple[torch.Tensor, torch.Tensor] | None = None
        self.steps = 0

    # ------------------------------------------------------------------ wiring
    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Wrap ``optimizer`` (or the optimizer an ``accelerate`` wrapper holds): its next steps are scaled."""
        inner = unwrap(optimizer)
        self.detach()
        self.optimizer = inner  # the torch optimizer whose steps are hooked
        self.params = [p for group in inner.param_groups for p in group["params"]]
        if not self.params:
            raise ValueError("The online scale needs an optimizer with parameters.")
        device = self.params[0].device
        n = len(self.betas_values)
        self.betas = torch.tensor(self.betas_values, device=device)
        self.s = torch.zeros(n, device=device)
        self.sum_squared_products = torch.zeros(n, device=device)  # v in the paper
        self.reward = torch.zeros(n, device=device)  # r
        self.max_product = torch.full((n,), 1e-6, device=device)  # m
        self.ref, self.delta, self.steps = [], [], 0
        self._handles = [inner.register_step_pre_hook(self._before), inner.register_step_post_hook(self._after)]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def scale(self) -> torch.Tensor:
        """``S``, the factor of the base optimizer's LR (a 0-d tensor on the parameters' device)."""
        return self.s.sum().clamp_min(0) if self.params else torch.zeros(())

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def _before(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not self.ref:  # x_ref: the weights of the first step
            self.ref = [p.detach().clone() for p in self.params]
            self.delta = [torch.zeros_like(p) for p in self.params]
        self._live = [i for i, p in enumerate(self.params) if p.grad is not None]
        grads = [self.params[i].grad for i in self._live]
        # The gradient's terms of h, before the base step (which may use the gradient's storage).
        self._grad_terms = (_dot([self.delta[i] for i in self._live], grads), _norm(grads)) if grads else None

    @torch.no_grad()
    def _after(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._grad_terms is None:
            return
        live = self._live
        params = [self.params[i] for i in live]
        ref = [self.ref[i] for i in live]
        delta = [self.delta[i] for i in live]
        delta_dot_grad, grad_norm = self._grad_terms
        self._grad_terms = None
        old_scale = self.s.sum()
        # h = <Delta_t, g + lambda * S_t * |g| / |x| * x>, x the base step's weights (as mechanic-pytorch)
        weight_norm = _norm(params)
        h = delta_dot_grad + self.s_decay * old_scale * grad_norm / (weight_norm + self.eps) * _dot(delta, params)
        # the tuner: m, v, r, then each beta's s = wealth / sqrt(v)
        self.max_product.copy_(torch.maximum(self.betas * self.max_product, h.abs()))
        self.sum_squared_products.mul_(self.betas**2).add_(h.square())
        self.reward.mul_(self.betas).sub_(self.s * h).clamp_(min=0)
        wealth = self.max_product * self.s_init / len(self.betas_values) + self.reward
        self.s.copy_(wealth / (self.sum_squared_products.sqrt() + self.eps))
        # Delta += u, u = x_base - (x_ref + S_t * Delta): Delta * (1 - S_t) + (x_base - x_ref); then x = x_ref + S * Delta
        torch._foreach_sub_(params, ref)
        torch._foreach_mul_(delta, 1 - old_scale.clamp_min(0))
        torch._foreach_add_(delta, params)
        torch._foreach_copy_(params, delta)
        torch._foreach_mul_(params, self.scale)
        torch._foreach_add_(params, ref)
        self.steps += 1

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain data (``scheduler.pt`` is loaded with ``weights_only``); copies, not views."""
        return {
            "method": "mechanic",
            "steps": self.steps,
            "s": self.s.clone(),
            "sum_squared_products": self.sum_squared_products.clone(),
            "reward": self.reward.clone(),
            "max_product": self.max_product.clone(),
            "ref": [t.clone() for t in self.ref],
            "delta": [t.clone() for t in self.delta],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore after :meth:`attach`; refuses a state of another method, size or model, naming what differs."""
        if state.get("method") != "mechanic":
            raise ValueError(f"The online scale's state is of method {state.get('method')!r}, not 'mechanic'.")
        n = len(self.betas_values)
        for key in ("s", "sum_squared_products", "reward", "max_product"):
            value = state[key]
            if not (isinstance(value, torch.Tensor) and value.shape == (n,) and torch.isfinite(value).all()):
                raise ValueError(f"The online scale's {key!r} must be {n} finite numbers.")
        for key in ("s", "sum_squared_products", "reward"):
            if (state[key] < 0).any():
                raise ValueError(f"The online scale's {key!r} must be >= 0.")
        ref, delta = list(state["ref"]), list(state["delta"])
        if ref or delta:
            shapes = [tuple(p.shape) for p in self.params]
            for key, tensors in (("ref", ref), ("delta", delta)):
                if [tuple(t.shape) for t in tensors] != shapes:
                    raise ValueError(
                        f"The online scale's {key!r} does not match the optimizer's parameters "
                        f"({len(tensors)} tensors vs {len(shapes)}): was the checkpoint written for another model?"
                    )
                if not all(torch.isfinite(t).all() for t in tensors):
                    raise ValueError(f"The online scale's {key!r} holds non-finite values.")
        steps = state["steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"The online scale's 'steps' must be an integer >= 0, got {steps!r}.")
        for key in ("s", "sum_squared_products", "reward", "max_product"):
            getattr(self, key).copy_(state[key])
        self.ref = [t.to(p.device, p.dtype).clone() for t, p in zip(ref, self.params, strict=False)]
        self.delta = [t.to(p.device, p.dtype).clone() for t, p in zip(delta, self.params, strict=False)]
        self.steps = steps
