"""StyleGAN2 losses per phase: Gmain (+ structure loss), Gpl, Dmain, Dr1.

Single-device code: each method runs forward and backward for one micro-batch
and returns detached statistics. Cross-rank averaging of gradients is the
trainer's job; the one quantity that must agree across ranks inside a phase
(the running path-length mean) is averaged through ``reduce_mean``, which the
trainer supplies (identity on one process).

Loss scaling (fp16): ``scale`` multiplies every backward, and the inner
``autograd.grad`` of R1 and path length is taken of the scaled output and
divided by ``scale`` again, so the penalties see true gradients while the
backward through them stays in the scaled range. bf16 and fp32 use scale 1.
``backward`` runs the backward of the scaled loss: ``Tensor.backward``, or a
DeepSpeed engine's (``trainer.run.zero``), which reduces partitioned gradients.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from trainer.gan.config import FreezeConfig, LossConfig
from trainer.networks import Discriminator, Generator, GeneratorOutput
from trainer.run.config import ConfigError

Stats = dict[str, torch.Tensor]
Backward = Callable[[torch.Tensor], None]
"""Runs the backward of a scaled loss."""
W_AVG_BETA = 0.995


class GANLoss:
    def __init__(self, G: Generator, D: Discriminator, augment: torch.nn.Module | None, loss: LossConfig,
                 freeze: FreezeConfig, G_src: Generator | None = None,
                 reduce_mean: Callable[[torch.Tensor], torch.Tensor] = lambda t: t):
        if (freeze.style or freeze.structure_layers) and G_src is None:
            raise ConfigError("FreezeSG and the structure loss need a source generator")
        if freeze.style > G.n_latent or freeze.structure_layers > G.log_size - 1:
            raise ConfigError(f"freeze.style <= {G.n_latent} and freeze.structure_layers <= {G.log_size - 1} "
                             f"for a {G.size}px generator")
        self.G, self.D, self.augment, self.G_src = G, D, augment, G_src
        self.cfg, self.freeze, self.reduce_mean = loss, freeze, reduce_mean
        self.pl_mean = torch.zeros([], device=G.w_avg.device)

    # ------------------------------------------------------------------
    # Sampling: one latent draw feeds both generators (same z, mixing, noise).

    def _mix(self, G: Generator, w: torch.Tensor, z2: torch.Tensor, cross: int) -> torch.Tensor:
        ws = G.broadcast(w)
        if cross < G.n_latent:
            ws = torch.cat([ws[:, :cross], G.broadcast(G.mapping(z2))[:, cross:]], dim=1)
        return ws

    def generate(self, z: torch.Tensor, features: bool = False,
                 track_w_avg: bool = False) -> tuple[GeneratorOutput, GeneratorOutput | None]:
        """Trained G's output and, when the structure loss needs it, the source G's, from
        the same z, mixing crossover and noise. Random draws do not depend on the branch taken."""
        G = self.G
        z2 = torch.randn_like(z)
        cross = int(torch.randint(1, G.n_latent, ()))
        if not float(torch.rand(())) < self.cfg.style_mixing:
            cross = G.n_latent
        noise = G.make_noise(z.shape[0], "random", z.device)
        w = G.mapping(z)
        if track_w_avg:
            self._track_w_avg(w)
        ws = self._mix(G, w, z2, cross)
        src = None
        if self.G_src is not None and (self.freeze.style or features):
            with torch.no_grad():
                ws_src = self._mix(self.G_src, self.G_src.mapping(z), z2, cross)
            if self.freeze.style:
                ws = torch.cat([ws_src[:, :self.freeze.style], ws[:, self.freeze.style:]], dim=1)
            if features:
                with torch.no_grad():
                    src = self.G_src.synthesis(ws_src, noise=noise)
        if not ws.requires_grad and torch.is_grad_enabled():
            ws = ws.detach().requires_grad_(True)  # frozen mapping: path length still needs d img / d ws
        return G.synthesis(ws, noise=noise), src

    @torch.no_grad()
    def _track_w_avg(self, w: torch.Tensor) -> None:
        """w_avg follows the mapping as it trains (NVlabs, beta 0.995), averaged over ranks so
        every rank keeps the same value; truncation of the exported G uses it."""
        mean = self.reduce_mean(w.detach().float().mean(0).clone())
        new = mean.lerp(self.G.w_avg, W_AVG_BETA)
        self.G.w_avg.copy_(torch.where(torch.isfinite(new).all(), new, self.G.w_avg))

    def run_D(self, img: torch.Tensor) -> torch.Tensor:
        if self.augment is not None:
            img = self.augment(img)
        return self.D(img)

    def structure_loss(self, out: GeneratorOutput, src: GeneratorOutput) -> torch.Tensor:
        """MSE between source and trained G at the lowest ``structure_layers`` blocks."""
        a, b = (out.features, src.features) if self.freeze.structure_target == "features" else (out.rgbs, src.rgbs)
        n = self.freeze.structure_layers
        return sum(F.mse_loss(x.float(), y.float()) for x, y in zip(a[:n], b[:n])) * self.freeze.structure_weight

    # ------------------------------------------------------------------
    # Phases.

    def g_main(self, z: torch.Tensor, gain: float, scale: float,
               backward: Backward = torch.Tensor.backward) -> Stats:
        """Non-saturating loss softplus(-D(G(z))), plus the structure loss."""
        out, src = self.generate(z, features=self.freeze.structure_layers > 0)
        logits = self.run_D(out.img)
        loss = F.softplus(-logits).mean()
        stats = {"Loss/G/loss": loss.detach(), "Loss/scores/fake": logits.detach()}
        if src is not None:
            struct = self.structure_loss(out, src)
            loss = loss + struct
            stats["Loss/G/structure"] = struct.detach()
        backward(loss * (gain * scale))
        return stats

    def g_pl(self, z: torch.Tensor, gain: float, scale: float,
             backward: Backward = torch.Tensor.backward) -> Stats:
        """Path-length regularisation on batch / pl_batch_shrink samples."""
        n = max(1, z.shape[0] // self.cfg.pl_batch_shrink)
        out, _ = self.generate(z[:n])
        img = out.img
        pl_noise = torch.randn_like(img) / (img.shape[2] * img.shape[3]) ** 0.5
        grads, = torch.autograd.grad((img * pl_noise).sum() * scale, out.ws, create_graph=True)
        lengths = (grads / scale).square().sum(2).mean(1).sqrt()
        # The penalty sees this batch's contribution to the mean with its gradient (NVlabs);
        # the stored mean moves by the mean over ranks, so it stays identical everywhere.
        pl_mean = self.pl_mean.lerp(lengths.mean(), self.cfg.pl_decay)
        stored = self.pl_mean.lerp(self.reduce_mean(lengths.mean().detach().clone()), self.cfg.pl_decay)
        # A non-finite batch (an fp16 overflow) must not poison the running mean for good.
        self.pl_mean.copy_(torch.where(torch.isfinite(stored), stored, self.pl_mean))
        penalty = (lengths - pl_mean).square()
        loss = penalty.mean() * self.cfg.pl_weight
        # The zero-weighted image term keeps every synthesis parameter in the graph.
        backward(((img[:, 0, 0, 0] * 0).mean() + loss).mul(gain * scale))
        return {"Loss/pl_penalty": penalty.detach(), "Loss/pl_mean": self.pl_mean.detach().clone()}

    def d_main(self, real: torch.Tensor, z: torch.Tensor, gain: float, scale: float,
               backward: Backward = torch.Tensor.backward) -> Stats:
        """softplus(D(G(z))) + softplus(-D(x)); the signs of D(x) drive ADA."""
        with torch.no_grad():
            fake = self.generate(z, track_w_avg=True)[0].img
        fake_logits = self.run_D(fake)
        real_logits = self.run_D(real.detach())
        loss = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
        backward(loss * (gain * scale))
        return {"Loss/D/loss": loss.detach(), "Loss/scores/real": real_logits.detach(),
                "Loss/signs/real": real_logits.detach().sign()}

    def d_r1(self, real: torch.Tensor, gain: float, scale: float,
             backward: Backward = torch.Tensor.backward) -> Stats:
        """R1: gamma/2 * |d D(aug(x)) / d x|^2, through the augmentation (double backward)."""
        x = real.detach().requires_grad_(True)
        logits = self.run_D(x)
        grads, = torch.autograd.grad(logits.sum() * scale, x, create_graph=True)
        penalty = (grads / scale).square().sum([1, 2, 3])
        loss = penalty.mean() * (self.cfg.r1_gamma / 2)
        backward(((logits * 0).mean() + loss).mul(gain * scale))
        return {"Loss/r1_penalty": penalty.detach(), "Loss/D/reg": loss.detach()}
