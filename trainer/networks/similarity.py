"""Cosine-similarity losses on frozen feature networks (ReStyle's IDLoss and MocoLoss).

Both losses in ReStyle average ``1 - <f(y_hat), f(y)>`` over the batch with
the target's features detached; they differ only in the feature network.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def freeze(module: nn.Module) -> None:
    """No parameter of a loss network is trained, so none may collect gradients."""
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()


class FrozenNet(nn.Module):
    """A loss network that stays in eval mode: BatchNorm statistics and dropout of a
    pretrained network must never follow the training batches."""

    def train(self, mode: bool = True) -> FrozenNet:
        return super().train(False)


def similarity_loss(feat_net: Callable[[torch.Tensor], torch.Tensor], y_hat: torch.Tensor,
                    y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean over the batch of 1 - <f(y_hat), f(y)>, per-image similarity [N])``.

    ``feat_net`` returns unit-norm features [N, D]. The target side carries no
    gradient, as in ReStyle; the per-image similarity is detached, for logs.
    """
    if y_hat.shape[0] != y.shape[0]:
        raise ValueError(f"similarity_loss: batch sizes differ ({y_hat.shape[0]} vs {y.shape[0]})")
    with torch.no_grad():
        target = feat_net(y)
    sim = (feat_net(y_hat) * target).sum(dim=1)
    return (1 - sim).mean(), sim.detach()
