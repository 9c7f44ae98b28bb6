"""StyleCLIP latent optimisation (Patashnik et al. 2021, section 4): edit W+ towards a text.

For start latents w0 it minimises, per latent,

    (1 - cos(CLIP(G(w)), CLIP(text)))  +  l2_lambda * ||w - w0||^2  +  id_lambda * (1 - cos(ID(G(w)), ID(G(w0))))

with Adam and stylegan2-ada's learning-rate schedule (StyleCLIP's ``get_lr``:
linear ramp-up over the first 5 %, cosine ramp-down over the last 25 %),
constant noise, in W+ (or in W: one vector per latent, broadcast). The edit is
the direction d = w* - w0; strength s renders w0 + s * d, so strength 0 is the
start image exactly and strength 1 the optimised one, and d can be applied to
other latents later without optimising again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from trainer.networks import Generator

from .clip import CLIPScorer
from .projection import learning_rate


@dataclass(frozen=True)
class StyleCLIPConfig:
    steps: int = 300
    """Adam steps (StyleCLIP's default)."""
    lr: float = 0.1
    """Peak learning rate (StyleCLIP's default)."""
    l2_lambda: float = 0.008
    """Weight of ||w - w0||^2, summed over W+ entries (StyleCLIP's edit-mode default)."""
    id_lambda: float = 0.0
    """Weight of the ArcFace identity term (StyleCLIP: 0.005 for faces; needs a face network)."""
    space: Literal["wplus", "w"] = "wplus"
    """Optimise every W+ entry, or one W vector per latent (its start entries must be equal)."""
    lr_rampup: float = 0.05
    """Fraction of the steps with a linear learning-rate ramp-up."""
    lr_rampdown: float = 0.25
    """Fraction of the steps with a cosine ramp-down to 0."""

    def __post_init__(self) -> None:
        if self.steps < 2:  # the schedule's learning rate is 0 at step 0: one step changes nothing
            raise ValueError(f"steps must be >= 2 (the learning rate is 0 at the first step), got {self.steps}")
        if self.lr <= 0 or self.l2_lambda < 0 or self.id_lambda < 0:
            raise ValueError("lr must be > 0, l2_lambda and id_lambda >= 0")
        if self.space not in ("wplus", "w"):
            raise ValueError(f"space must be 'wplus' or 'w', got {self.space!r}")


def render(G: Generator, ws: torch.Tensor) -> torch.Tensor:
    return G.synthesis(ws, noise_mode="const").img


def at_strength(w0: torch.Tensor, direction: torch.Tensor, strength: float) -> torch.Tensor:
    """w0 + strength * direction (strength 0: w0 itself, bit for bit)."""
    return w0 if strength == 0 else w0 + strength * direction


@dataclass
class Edit:
    direction: torch.Tensor
    """w* - w0 [N, L, D]."""
    losses: torch.Tensor
    """[steps, N]: each latent's objective at each step."""
    clip_losses: torch.Tensor
    """[steps, N]: its CLIP term."""


def optimise(G: Generator, clip: CLIPScorer, text: torch.Tensor, w0: torch.Tensor, cfg: StyleCLIPConfig,
             face_id: torch.nn.Module | None = None, progress: Callable[[int, float], None] | None = None) -> Edit:
    """The edit of every start latent ``w0`` [N, L, D] towards ``text`` [1, E] (latents are
    independent: the objective is summed over them)."""
    if cfg.id_lambda > 0 and face_id is None:
        raise ValueError("id_lambda > 0 needs the ArcFace network (--arcface)")
    w0 = w0.detach()
    if cfg.space == "w":
        if not torch.equal(w0, w0[:, :1].expand_as(w0)):
            raise ValueError("space 'w' needs start latents whose W+ entries are all equal (W latents, "
                             "seeds); use 'wplus' for projected or inverted W+")
        var = w0[:, 0].clone().requires_grad_(True)
    else:
        var = w0.clone().requires_grad_(True)
    id0 = None
    if cfg.id_lambda > 0:
        with torch.no_grad():
            id0 = face_id(render(G, w0))
    opt = torch.optim.Adam([var], lr=cfg.lr)
    losses, clip_losses = [], []
    trainable = [p for p in G.parameters() if p.requires_grad]
    for p in trainable:  # gradients flow to w only: no weight gradients accumulate in G
        p.requires_grad_(False)
    try:
        _steps(G, clip, text, w0, var, id0, face_id, opt, cfg, losses, clip_losses, progress)
    finally:
        for p in trainable:
            p.requires_grad_(True)
    w = var.detach()[:, None].expand_as(w0) if cfg.space == "w" else var.detach()
    return Edit(w - w0, torch.stack(losses).cpu(), torch.stack(clip_losses).cpu())


def _steps(G, clip, text, w0, var, id0, face_id, opt, cfg, losses, clip_losses, progress) -> None:
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg, step)
        w = var[:, None].expand_as(w0) if cfg.space == "w" else var
        img = render(G, w)
        c_loss = 1 - clip.similarity(img, text)
        loss = c_loss + cfg.l2_lambda * (w - w0).square().flatten(1).sum(1)
        if id0 is not None:
            loss = loss + cfg.id_lambda * (1 - (face_id(img) * id0).sum(-1))
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        losses.append(loss.detach())
        clip_losses.append(c_loss.detach())
        if progress is not None:
            progress(step, float(loss.mean()))


@torch.no_grad()
def measure(G: Generator, clip: CLIPScorer, text: torch.Tensor | None, w0: torch.Tensor, direction: torch.Tensor,
            face_id: torch.nn.Module | None = None) -> dict[str, list[float]]:
    """Per latent: CLIP similarity before and at strength 1, the W+ change (L2 norm of the
    direction) and, with ``face_id``, the ArcFace similarity of the edit to the start."""
    out = {"l2_change": direction.flatten(1).norm(dim=1).tolist()}
    if text is None and face_id is None:
        return out
    before, after = render(G, w0), render(G, at_strength(w0, direction, 1.0))
    if text is not None and clip is not None:
        out["clip_before"] = clip.similarity(before, text).tolist()
        out["clip_after"] = clip.similarity(after, text).tolist()
    if face_id is not None:
        out["id_similarity"] = (face_id(before) * face_id(after)).sum(-1).tolist()
    return out
