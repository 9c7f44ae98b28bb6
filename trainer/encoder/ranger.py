"""Ranger: RAdam + Lookahead + gradient centralization, as the encoder
reference trainings (pSp/ReStyle ``training/ranger.py``, Ranger version
20.4.11) use it.

Per parameter and step:

1. gradient centralization: for gradients with ``dim() > 1`` (``> 3`` with
   ``gc_conv_only``) subtract the mean over all dims but 0;
2. RAdam: Adam moments, then either the rectified adaptive step
   ``p -= lr * r_t / (1 - beta1^t) * m / (sqrt(v) + eps)`` when the SMA
   length ``N_sma > n_sma_threshold``, or the un-rectified momentum step
   ``p -= lr / (1 - beta1^t) * m`` before that (steps 1-5 with beta2 0.999);
3. Lookahead: every ``k`` steps ``slow += alpha * (fast - slow); fast = slow``.

Differences from the reference file, none of which changes an update made
with the defaults: its 10-entry ``radam_buffer`` memo lives on the optimizer
object (so it is not saved) and is keyed by the step alone; here the step size
is recomputed from (step, betas) with the same float operations, which gives
identical numbers, keeps every resumable quantity in ``self.state[p]``, and
stays right for param groups with different betas. The reference ignores its
``use_gc`` flag (always centralizes); here ``use_gc=False`` turns it off. The
reference centralizes ``p.grad`` in place; here ``p.grad`` is left untouched.
pSp's copy defaults ``eps`` to 6.1e-5 (the upstream Ranger to 1e-5): pass
``eps=6.1e-5`` to reproduce pSp exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim.optimizer import Optimizer


def radam_step_size(step: int, betas: tuple[float, float], n_sma_threshold: float) -> tuple[float, bool]:
    """(step size before lr, whether the rectified adaptive step applies) at 1-based ``step``.

    The float operations are in the reference's order so results match it bit for bit.
    """
    beta1, beta2 = betas
    beta2_t = beta2**step
    n_sma_max = 2 / (1 - beta2) - 1
    n_sma = n_sma_max - 2 * step * beta2_t / (1 - beta2_t)
    if n_sma > n_sma_threshold:
        rect = (1 - beta2_t) * (n_sma - 4) / (n_sma_max - 4) * (n_sma - 2) / n_sma * n_sma_max / (n_sma_max - 2)
        return math.sqrt(rect) / (1 - beta1**step), True
    return 1.0 / (1 - beta1**step), False


def centralize(grad: torch.Tensor, min_dim: int) -> torch.Tensor:
    """Gradient minus its mean over all dims but 0, for tensors with more than ``min_dim`` dims."""
    if grad.dim() <= min_dim:
        return grad
    return grad - grad.mean(dim=tuple(range(1, grad.dim())), keepdim=True)


class Ranger(Optimizer):
    def __init__(self, params: Iterable[Any], lr: float = 1e-3, alpha: float = 0.5, k: int = 6,
                 n_sma_threshold: float = 5, betas: tuple[float, float] = (0.95, 0.999),
                 eps: float = 1e-5, weight_decay: float = 0.0, use_gc: bool = True,
                 gc_conv_only: bool = False):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"invalid lookahead alpha: {alpha}")
        if not k >= 1:
            raise ValueError(f"invalid lookahead steps: {k}")
        if not lr > 0:
            raise ValueError(f"invalid learning rate: {lr}")
        if not eps > 0:
            raise ValueError(f"invalid eps: {eps}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid betas: {betas}")
        # Everything lives in the groups so state_dict() carries it and groups can differ.
        defaults = dict(lr=lr, alpha=alpha, k=k, n_sma_threshold=n_sma_threshold, betas=tuple(betas),
                        eps=eps, weight_decay=weight_decay, use_gc=use_gc, gc_conv_only=gc_conv_only)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Ranger does not support sparse gradients")
                self._update(p, group)
        return loss

    def _init_state(self, p: torch.Tensor) -> dict[str, Any]:
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
            state["slow_buffer"] = p.detach().clone(memory_format=torch.preserve_format)
        else:
            # load_state_dict casts moments to the parameter dtype; the math runs in float32.
            state["exp_avg"] = state["exp_avg"].float()
            state["exp_avg_sq"] = state["exp_avg_sq"].float()
        return state

    def _update(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        state = self._init_state(p)
        # Half-precision parameters are updated through a float32 copy, as the reference does.
        p32 = p.float()
        grad = p.grad.float()
        if group["use_gc"]:
            grad = centralize(grad, 3 if group["gc_conv_only"] else 1)

        state["step"] += 1
        beta1, beta2 = group["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)

        step_size, rectified = radam_step_size(state["step"], group["betas"], group["n_sma_threshold"])
        if group["weight_decay"] != 0:
            p32.add_(p32, alpha=-group["weight_decay"] * group["lr"])
        if rectified:
            denom = exp_avg_sq.sqrt().add_(group["eps"])
            p32.addcdiv_(exp_avg, denom, value=-step_size * group["lr"])
        else:
            p32.add_(exp_avg, alpha=-step_size * group["lr"])
        if p32 is not p:
            p.copy_(p32)

        if state["step"] % group["k"] == 0:
            slow = state["slow_buffer"]
            slow.add_(p - slow, alpha=group["alpha"])
            p.copy_(slow)
