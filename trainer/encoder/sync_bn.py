"""Batch normalisation over the global batch of all ranks (SyncBN), on any backend.

pSp/ReStyle encoders use BatchNorm; with a per-rank batch of 1-4 images the
local statistics are noise, so training on many processes normalises with
the statistics of the whole global batch. ``torch.nn.SyncBatchNorm`` refuses
CPU tensors (gloo), which would leave the multi-process path untestable off
a GPU; this version all-reduces per-channel sums through a differentiable
all-reduce (the gradient of a sum over ranks is the sum of the gradients) and
works on NCCL and gloo alike. With one process it is exactly ``nn.BatchNorm2d``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, differentiable."""
    return _AllReduceSum.apply(x)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics cover every rank's batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        count = xf.new_tensor([x.numel() / c])
        # One all-reduce per layer: sums, sums of squares and the element count.
        packed = all_reduce(torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), count]))
        n = packed[-1]
        mean = packed[:c] / n
        var = (packed[c:2 * c] / n - mean * mean).clamp(min=0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                unbiased = var.detach() * n / (n - 1).clamp(min=1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replaces every ``nn.BatchNorm2d`` in ``module`` (in place) by ``GlobalBatchNorm2d``,
    keeping parameters, buffers and state-dict keys."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats).to(next(child.buffers(), torch.empty(0)).device)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_batchnorm(child)
    return module
