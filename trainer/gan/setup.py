"""Building the GAN trainer's parts: networks, frozen sets, optimizers, EMA, exports.

Freezing is decided once here, by parameter name: a frozen parameter gets
``requires_grad=False`` and is left out of the optimizer and of the gradient
all-reduce (the trainer averages exactly ``trainable_G`` / ``trainable_D``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trainer.gan.config import GANConfig
from trainer.model_io import CheckpointError, load_checkpoint, save_checkpoint
from trainer.model_io.build import rebuilt
from trainer.networks import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig
from trainer.networks.swap import param_resolution
from trainer.run.config import ConfigError


@dataclass
class Networks:
    G: Generator
    D: Discriminator
    G_ema: Generator
    G_src: Generator | None
    pretrained: bool
    """True when G came from a checkpoint (ADA then adapts at ada.kimg_pretrained)."""


def _precision(cfg: GANConfig) -> dict:
    if cfg.model.mixed_precision == "no":
        return {"num_fp16_res": 0, "conv_clamp": None}
    dtype = "bfloat16" if cfg.model.mixed_precision == "bf16" else "float16"
    return {"num_fp16_res": cfg.model.num_fp16_res, "precision": dtype, "conv_clamp": cfg.model.conv_clamp}


def _with_precision(net: nn.Module, cfg: GANConfig) -> nn.Module:
    """The same weights in a network whose config carries the run's precision."""
    return rebuilt(net, **_precision(cfg))


def build_networks(cfg: GANConfig, image_size: int, g_config: dict | None = None,
                   d_config: dict | None = None, src_config: dict | None = None) -> Networks:
    """G, D, G_ema (and the frozen source G) on the CPU.

    ``g_config``/``d_config`` (from a checkpoint's meta) give the architecture
    when resuming; otherwise it comes from ``model.init`` or the random-init fields.
    """
    m = cfg.model
    ema = None
    if g_config is not None:
        G = Generator(GeneratorConfig(**g_config))
        D = Discriminator(DiscriminatorConfig(**d_config))
        pretrained = m.init is not None
    elif m.init is not None:
        ck = load_checkpoint(m.init)
        G = copy.deepcopy(ck.g if ck.g is not None else ck.generator())
        ema = ck.g_ema  # a full training checkpoint carries its own EMA
        D = ck.d if ck.d is not None else Discriminator(
            DiscriminatorConfig(size=G.size, channel_multiplier=G.cfg.channel_multiplier,
                                channel_max=G.cfg.channel_max))
        pretrained = True
    else:
        G = Generator(GeneratorConfig(size=image_size, style_dim=m.style_dim, n_mlp=m.n_mlp,
                                      channel_multiplier=m.channel_multiplier, channel_max=m.channel_max))
        D = Discriminator(DiscriminatorConfig(size=image_size, channel_multiplier=m.channel_multiplier,
                                              channel_max=m.channel_max))
        pretrained = False
    if G.size != image_size or D.cfg.size != image_size:
        raise CheckpointError(f"the networks are for {G.size}px (D {D.cfg.size}px) but the shards hold "
                              f"{image_size}px images: use shards made at {G.size}px or another checkpoint")
    G, D = _with_precision(G, cfg), _with_precision(D, cfg)
    if torch.isnan(G.w_avg).any():
        G.update_w_avg()
    G_ema = (_with_precision(ema, cfg) if ema is not None else copy.deepcopy(G)).eval().requires_grad_(False)
    G_src = None
    if cfg.needs_source and g_config is not None:  # resuming: its weights are in the checkpoint
        G_src = Generator(GeneratorConfig(**(src_config or g_config))).eval().requires_grad_(False)
    elif cfg.needs_source:
        src = cfg.freeze.source or m.init
        if src is None:
            raise CheckpointError("FreezeSG / structure loss need a source generator: set model.init or freeze.source")
        G_src = _with_precision(load_checkpoint(src).generator(), cfg).eval().requires_grad_(False)
        if G_src.n_latent != G.n_latent or G_src.size != G.size:
            raise CheckpointError(f"source generator ({G_src.size}px) does not match G ({G.size}px)")
    return Networks(G, D, G_ema, G_src, pretrained)


def generator_frozen_names(G: Generator, below_res: int, mapping: bool, noise: bool = False) -> list[str]:
    """FreezeG: parameters of layers whose output resolution is below ``below_res``
    (and of the mapping network when ``mapping``, and every noise strength when ``noise``)."""
    if below_res and (below_res < 4 or below_res > G.size or below_res & (below_res - 1)):
        raise ConfigError(f"freeze.g_res must be 0 or a power of two in 4..{G.size}, got {below_res}")
    out = []
    for name, _ in G.named_parameters():
        res = param_resolution(G, name)
        if ((res is None and mapping) or (res is not None and below_res and res < below_res)
                or (noise and name.endswith("noise.weight"))):
            out.append(name)
    return out


def apply_freeze(module: nn.Module, frozen: list[str]) -> list[nn.Parameter]:
    """Marks ``frozen`` as not trainable; returns the trainable parameters in order."""
    frozen_set = set(frozen)
    unknown = frozen_set - {n for n, _ in module.named_parameters()}
    if unknown:
        raise ValueError(f"cannot freeze unknown parameters {sorted(unknown)[:5]}")
    params = []
    for name, p in module.named_parameters():
        p.requires_grad_(name not in frozen_set)
        if name not in frozen_set:
            params.append(p)
    return params


def lazy_scaled(lr: float, betas: list[float], reg_interval: int) -> tuple[float, tuple[float, ...]]:
    """Lazy-regularisation scaling: with a penalty every r steps, lr * r/(r+1) and
    betas ** (r/(r+1)) keep the effective step what it would be with the penalty every step."""
    ratio = reg_interval / (reg_interval + 1) if reg_interval > 0 else 1.0
    return lr * ratio, tuple(b ** ratio for b in betas)


def make_adam(params: list[nn.Parameter], lr: float, betas: list[float], eps: float,
              reg_interval: int) -> torch.optim.Adam:
    lr, betas = lazy_scaled(lr, betas, reg_interval)
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps)


def apply_hyperparameters(opt_G: torch.optim.Optimizer, opt_D: torch.optim.Optimizer, cfg: GANConfig) -> None:
    """Sets lr, betas and eps from ``cfg`` (with the lazy-regularisation scaling) on both optimizers."""
    for opt, lr, interval in ((opt_G, cfg.optim.g_lr, cfg.loss.pl_interval), (opt_D, cfg.optim.d_lr, cfg.loss.r1_interval)):
        lr, betas = lazy_scaled(lr, cfg.optim.betas, interval)
        for group in opt.param_groups:
            group.update(lr=lr, betas=betas, eps=cfg.optim.eps)


def ema_beta(batch: int, ema_kimg: float, cur_nimg: int, rampup: float | None) -> float:
    """Per-step EMA decay for a half-life of ``ema_kimg`` kimg at global ``batch``."""
    ema_nimg = ema_kimg * 1000
    if rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * rampup)
    return 0.5 ** (batch / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(G_ema: Generator, G: Generator, beta: float) -> None:
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def export_networks(out: str | Path, fmt: str, G_ema: Generator, G: Generator | None = None,
                    D: Discriminator | None = None, extra: dict | None = None) -> Path:
    """Writes G_ema (and G, D when given) in float32 on the CPU to a rosinality .pt or our format.

    The fp16 blocks become float32, so the exports run anywhere; the activation clamp is part of
    what the network computes and stays in our format. Rosinality's format holds neither the clamp
    nor a minibatch-stddev group other than 4: such exports are written anyway (they are the
    courtesy copy for rosinality's scripts) with a warning naming each change."""
    full = lambda m: None if m is None else rebuilt(m, num_fp16_res=0)  # noqa: E731
    return save_checkpoint(out, fmt, g_ema=full(G_ema), g=full(G), d=full(D), extra=extra,
                           allow_mbstd_change=fmt == "rosinality")


def describe_freeze(G: Generator, D: Discriminator, g_frozen: list[str], d_frozen: list[str]) -> str:
    count = lambda m, names: sum(p.numel() for n, p in m.named_parameters() if n in set(names))  # noqa: E731
    total = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return (f"G: {len(g_frozen)} tensors frozen ({count(G, g_frozen) / max(total(G), 1):.1%} of weights); "
            f"D: {len(d_frozen)} tensors frozen ({count(D, d_frozen) / max(total(D), 1):.1%})")


def grid_latents(n: int, style_dim: int, seed: int = 0) -> torch.Tensor:
    """Fixed z for the progress grid, drawn from a private generator (the training RNG is untouched)."""
    return torch.randn(n, style_dim, generator=torch.Generator().manual_seed(seed))
