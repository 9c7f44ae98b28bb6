"""ReStyle's reconstruction losses: L2, LPIPS, identity (ArcFace or MoCo) and w-norm.

Each is a mean over the batch, so the per-rank losses average to the loss of
the global batch when the gradients are averaged across processes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.encoder.config import EncoderLossConfig
from trainer.networks.similarity import similarity_loss


class EncoderLoss(nn.Module):
    def __init__(self, cfg: EncoderLossConfig, lpips: nn.Module | None = None, idnet: nn.Module | None = None):
        super().__init__()
        if cfg.lpips > 0 and lpips is None:
            raise ValueError("loss.lpips > 0 needs an LPIPS network")
        if cfg.id > 0 and idnet is None:
            raise ValueError("loss.id > 0 needs an identity feature network")
        self.cfg, self.lpips, self.idnet = cfg, lpips, idnet

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor, latent: torch.Tensor,
                latent_avg: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted total and each term (detached) for reconstruction ``y_hat`` of ``y``."""
        c = self.cfg
        terms: dict[str, tuple[float, torch.Tensor]] = {}
        if c.l2 > 0:
            terms["l2"] = (c.l2, F.mse_loss(y_hat.float(), y.float()))
        if c.lpips > 0:
            terms["lpips"] = (c.lpips, self.lpips(y_hat, y).float().mean())
        if c.id > 0:
            loss, sim = similarity_loss(self.idnet, y_hat, y)
            terms["id"] = (c.id, loss)
            terms["id_similarity"] = (0.0, sim.mean())
        if c.w_norm > 0:
            terms["w_norm"] = (c.w_norm, (latent - latent_avg).norm(2, dim=(1, 2)).mean())
        total = sum(w * t for w, t in terms.values() if w)
        stats = {k: t.detach() for k, (_, t) in terms.items()}
        stats["total"] = total.detach()
        return total, stats

