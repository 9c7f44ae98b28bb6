"""A dynamic loss scale for fp16 training with gradients averaged by the trainer.

torch's GradScaler finds overflows per rank and per optimizer; here the
gradients are averaged first, so the finite check is one answer shared by
every rank and the scale stays identical everywhere. Penalties that take an
inner ``autograd.grad`` multiply by ``scale`` before it and divide after it
(see ``gan_loss``). With ``enabled=False`` the scale is 1 and never changes.
"""

from __future__ import annotations

import torch


class DynamicLossScale:
    def __init__(self, enabled: bool, init: float = 2.0 ** 14, growth_interval: int = 1000,
                 backoff: float = 0.5, growth: float = 2.0):
        self.enabled = enabled
        self.scale = float(init) if enabled else 1.0
        self.growth_interval, self.backoff, self.growth = growth_interval, backoff, growth
        self.good_steps = 0

    def unscale_and_check(self, params: list[torch.nn.Parameter], finite: bool) -> bool:
        """Divides gradients by the scale when ``finite``; adapts the scale. Returns
        whether the optimizer should step."""
        if self.enabled and finite:
            inv = 1.0 / self.scale
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(inv)
        return self.update(finite)

    def update(self, finite: bool) -> bool:
        """Adapts the scale to whether this step's gradients were finite (for an optimizer that
        unscaled them itself, as DeepSpeed's ZeRO does); returns ``finite``."""
        if not self.enabled:
            return finite
        if not finite:
            self.scale = max(self.scale * self.backoff, 1.0)
            self.good_steps = 0
            return False
        self.good_steps += 1
        if self.good_steps % self.growth_interval == 0:
            self.scale *= self.growth
        return True

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"scale": torch.tensor(self.scale, dtype=torch.float64),
                "good_steps": torch.tensor(self.good_steps, dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.scale, self.good_steps = float(state["scale"]), int(state["good_steps"])
