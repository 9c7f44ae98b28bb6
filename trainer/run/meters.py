"""Running statistics reduced across ranks once per tick.

Values stay detached tensors on the device between ticks (no host sync per
step); ``reduce`` sums (sum, count) pairs over ranks in a fixed key order and
returns plain means.
"""

from __future__ import annotations

import torch

from trainer.run.distributed import Dist


class Meters:
    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, name: str, value: torch.Tensor | float) -> None:
        """Adds every element of ``value`` (a scalar or a batch of per-sample values)."""
        v = torch.as_tensor(value, device=self.device).detach().float().reshape(-1)
        acc = self.sums.get(name)
        if acc is None:
            acc = self.sums[name] = torch.zeros(2, dtype=torch.float64, device=self.device)
        acc[0] += v.double().sum()
        acc[1] += v.numel()

    def add_all(self, values: dict[str, torch.Tensor]) -> None:
        for k, v in values.items():
            self.add(k, v)

    def reduce(self, dist: Dist) -> dict[str, float]:
        """Means over everything added on every rank since the last reduce; then clears."""
        keys = sorted(set().union(*dist.gather_objects(sorted(self.sums))))
        if not keys:
            return {}
        flat = torch.stack([self.sums.get(k, torch.zeros(2, dtype=torch.float64, device=self.device))
                            for k in keys])
        dist.all_reduce_sum(flat)
        self.sums.clear()
        return {k: float(s / n) for k, (s, n) in zip(keys, flat.tolist()) if n > 0}
