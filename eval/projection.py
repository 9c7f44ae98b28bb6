"""Optimisation-based inversion ("projection") of images into W+ of a generator.

The CDSM paper inverts its target (cartoon) images into G_swap this way. The
schedule follows NVlabs stylegan2-ada-pytorch's ``projector.py``: start at the
mean W, Adam with a linear learning-rate ramp-up and a cosine ramp-down,
Gaussian noise on the latent that decays to zero, and the per-layer noise maps
optimised too, kept normalised and pushed towards spatially uncorrelated maps
by a multi-scale autocorrelation penalty. The distance is a weighted sum of
pixel L2 and (optionally) LPIPS, compared at the images' own size.

The generator is used as it is: its weights and noise buffers stay untouched
(the optimised noise maps are separate tensors passed to ``synthesis``) and
none of its parameters collects a gradient.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from trainer.networks.generator import Generator

SPACES = ("w+", "w")


@dataclass
class ProjectionConfig:
    """Optimisation settings (defaults: stylegan2-ada's projector)."""

    steps: int = 1000
    """Number of Adam steps."""
    lr: float = 0.1
    """Peak learning rate."""
    lr_rampup: float = 0.05
    """Fraction of the steps over which the learning rate rises linearly from 0."""
    lr_rampdown: float = 0.25
    """Fraction of the steps at the end over which it falls to 0 along a half cosine."""
    noise_scale: float = 0.05
    """Initial std of the Gaussian added to the latent each step, in units of the W std."""
    noise_ramp: float = 0.75
    """Fraction of the steps after which that latent noise has decayed (quadratically) to 0."""
    noise_regularize: float = 1e5
    """Weight of the noise maps' autocorrelation penalty."""
    optimize_noise: bool = True
    """Optimise the per-layer noise maps along with the latent (False: they stay at their start)."""
    l2: float = 1.0
    """Weight of the mean squared pixel error."""
    lpips: float = 1.0
    """Weight of LPIPS (ignored when no LPIPS module is given)."""
    space: str = "w+"
    """"w+": one vector per W+ entry; "w": a single W vector broadcast to every entry."""
    w_avg_samples: int = 10000
    """Mapped samples for the start point (their mean) and the W std."""
    seed: int = 0
    """Seed of the W statistics' samples, the start noise maps and the per-step latent noise."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.w_avg_samples < 2:
            raise ValueError(f"steps must be >= 1 and w_avg_samples >= 2, got {self.steps}, {self.w_avg_samples}")
        if self.space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {self.space!r}")
        for name in ("lr_rampup", "lr_rampdown", "noise_ramp"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a fraction in (0, 1], got {getattr(self, name)}")
        for name in ("lr", "noise_scale", "noise_regularize", "l2", "lpips"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


class ProjectionResult(NamedTuple):
    latents: torch.Tensor
    """W+ [N, n_latent, style_dim], detached."""
    images: torch.Tensor
    """The generator's output for ``latents`` and ``noise`` at the images' size [N, 3, S, S]."""
    losses: list[float]
    """The objective per step, mean over the batch."""
    noise: list[torch.Tensor]
    """The optimised noise maps [N, 1, r, r], one per noise layer."""


class Schedule(Protocol):
    steps: int
    lr: float
    lr_rampup: float
    lr_rampdown: float


def learning_rate(cfg: Schedule, step: int) -> float:
    """stylegan2-ada's schedule (StyleCLIP's ``get_lr`` too): linear ramp-up, cosine ramp-down,
    both as step fractions."""
    t = step / cfg.steps
    down = min(1.0, (1.0 - t) / cfg.lr_rampdown)
    down = 0.5 - 0.5 * math.cos(down * math.pi)
    return cfg.lr * down * min(1.0, t / cfg.lr_rampup)


def latent_noise_std(cfg: ProjectionConfig, step: int, w_std: float) -> float:
    """Std of the Gaussian added to the latent at ``step``: decays quadratically to 0."""
    t = step / cfg.steps
    return w_std * cfg.noise_scale * max(0.0, 1.0 - t / cfg.noise_ramp) ** 2


def noise_regularizer(noise: list[torch.Tensor]) -> torch.Tensor:
    """Per image [N]: squared autocorrelation of each map with its one-pixel shifts,
    over a pyramid of 2x average-pooled versions down to 8 px (stylegan2-ada)."""
    total = noise[0].new_zeros(noise[0].shape[0])
    for v in noise:
        while True:
            total = total + (v * torch.roll(v, shifts=1, dims=3)).mean(dim=(1, 2, 3)) ** 2
            total = total + (v * torch.roll(v, shifts=1, dims=2)).mean(dim=(1, 2, 3)) ** 2
            if v.shape[2] <= 8:
                break
            v = F.avg_pool2d(v, kernel_size=2)
    return total


@torch.no_grad()
def _normalize_(noise: list[torch.Tensor]) -> None:
    """Zero mean, unit variance per image and map (stylegan2-ada does this after every step)."""
    for v in noise:
        v -= v.mean(dim=(1, 2, 3), keepdim=True)
        v *= v.square().mean(dim=(1, 2, 3), keepdim=True).rsqrt()


@torch.no_grad()
def w_statistics(G: Generator, n: int, seed: int) -> tuple[torch.Tensor, float]:
    """Mean W [D] and the scalar std (root mean squared distance to it) of ``n`` mapped samples."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.cat([G.mapping(torch.randn(min(4096, n - i), G.style_dim, generator=gen).to(G.w_avg.device))
                   for i in range(0, n, 4096)])
    mean = w.double().mean(0)
    std = float(((w.double() - mean) ** 2).sum() / n) ** 0.5
    return mean.float(), std


@contextlib.contextmanager
def _frozen(*modules: nn.Module | None) -> Iterator[None]:
    """Parameters without gradients and modules in eval mode, restored afterwards."""
    mods = [m for m in modules if m is not None]
    grads = [(p, p.requires_grad) for m in mods for p in m.parameters()]
    modes = [(m, m.training) for m in mods]
    try:
        for p, _ in grads:
            p.requires_grad_(False)
        for m in mods:
            m.eval()
        yield
    finally:
        for p, flag in grads:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.train(mode)


def _check_images(G: Generator, images: torch.Tensor) -> int:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [N, 3, S, S], got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if h != w:
        raise ValueError(f"images must be square, got {h}x{w}")
    if h > G.size:
        raise ValueError(f"images of {h} px are larger than the {G.size}px generator; resize them to at most "
                         f"{G.size} px (the generator's output is only ever downsampled)")
    return h


class _Projector:
    """State of one projection run: the optimised latent and noise maps, and the target."""

    def __init__(self, G: Generator, images: torch.Tensor, lpips: nn.Module | None, cfg: ProjectionConfig):
        self.G, self.target, self.lpips, self.cfg = G, images, lpips, cfg
        self.size = images.shape[-1]
        self.gen = torch.Generator().manual_seed(cfg.seed)
        device, n = G.input.input.device, images.shape[0]
        w_mean, self.w_std = w_statistics(G, cfg.w_avg_samples, cfg.seed)
        entries = G.n_latent if cfg.space == "w+" else 1
        self.w = w_mean.to(device)[None, None].repeat(n, entries, 1).requires_grad_(True)
        self.noise = [torch.randn((n, *getattr(G.noises, f"noise_{i}").shape[1:]), generator=self.gen)
                      .to(device).requires_grad_(cfg.optimize_noise) for i in range(G.num_layers)]
        params = [self.w] + (self.noise if cfg.optimize_noise else [])
        self.opt = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.999))

    def render(self, w: torch.Tensor) -> torch.Tensor:
        ws = w.expand(-1, self.G.n_latent, -1)
        img = self.G.synthesis(ws, noise=self.noise).img
        # Area downsampling, as ReStyle's face_pool: every generator pixel counts once.
        return img if img.shape[-1] == self.size else F.adaptive_avg_pool2d(img, self.size)

    def loss(self, img: torch.Tensor) -> torch.Tensor:
        """Objective per image [N]."""
        total = self.cfg.l2 * (img - self.target).square().mean(dim=(1, 2, 3))
        if self.lpips is not None and self.cfg.lpips > 0:
            total = total + self.cfg.lpips * self.lpips(img, self.target)
        if self.cfg.optimize_noise and self.cfg.noise_regularize > 0:
            total = total + self.cfg.noise_regularize * noise_regularizer(self.noise)
        return total

    def step(self, step: int) -> float:
        for group in self.opt.param_groups:
            group["lr"] = learning_rate(self.cfg, step)
        sigma = latent_noise_std(self.cfg, step, self.w_std)
        jitter = torch.randn(self.w.shape, generator=self.gen).to(self.w.device) * sigma
        loss = self.loss(self.render(self.w + jitter))
        self.opt.zero_grad(set_to_none=True)
        # Summed over images: each image's gradient is what it would get projected alone.
        loss.sum().backward()
        self.opt.step()
        if self.cfg.optimize_noise:
            _normalize_(self.noise)
        return float(loss.detach().mean())

    @torch.no_grad()
    def preview(self) -> torch.Tensor:
        """The current projection without the latent jitter [N, 3, S, S]."""
        return self.render(self.w.detach())

    @torch.no_grad()
    def result(self, losses: list[float]) -> ProjectionResult:
        w = self.w.detach()
        return ProjectionResult(w.expand(-1, self.G.n_latent, -1).clone(), self.render(w), losses,
                                [v.detach().clone() for v in self.noise])


def project(G: Generator, images: torch.Tensor, lpips: nn.Module | None, cfg: ProjectionConfig,
            progress: Callable[[int, float], None] | None = None,
            snapshot: Callable[[int, torch.Tensor], None] | None = None, snapshot_every: int = 0) -> ProjectionResult:
    """Projects ``images`` [N, 3, S, S] in [-1, 1] (S <= G.size) into W+ of ``G``.

    Each image is optimised independently (the batch only shares the forward
    passes). ``progress(step, loss)`` is called after every step with the batch
    mean of the objective; ``snapshot(step, images)`` before step 0, after every
    ``snapshot_every`` steps and after the last, with the current projection (an
    extra forward each: for videos of the optimisation). Deterministic for
    ``cfg.seed`` on the CPU.
    """
    _check_images(G, images)
    with _frozen(G, lpips):
        target = images.to(G.input.input.device, torch.float32)
        proj = _Projector(G, target, lpips, cfg)
        losses: list[float] = []
        if snapshot is not None:
            snapshot(0, proj.preview())
        for step in range(cfg.steps):
            losses.append(proj.step(step))
            if progress is not None:
                progress(step, losses[-1])
            done = step + 1
            if snapshot is not None and snapshot_every > 0 and (done % snapshot_every == 0 or done == cfg.steps):
                snapshot(done, proj.preview())
        return proj.result(losses)
