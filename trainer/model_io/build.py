"""Architecture inference from state dicts (rosinality names) and strict building.

A model is built and filled only after every key and shape has been checked,
so a bad checkpoint never leaves a half-loaded network behind.
"""

from __future__ import annotations

import re
from dataclasses import replace

import torch
from torch import nn

from trainer.networks import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig

from .errors import ArchitectureMismatch, CheckpointError


def channel_settings(ch_by_res: dict[int, int], default_multiplier: float = 2.0) -> tuple[float, int]:
    """(channel_multiplier, channel_max) reproducing channels per resolution."""
    cmax = max(ch_by_res.values())
    below = sorted(r for r, c in ch_by_res.items() if c < cmax)
    if below:
        r = below[0]
        return ch_by_res[r] * r / 16384, cmax
    # Every layer at the cap: any multiplier that keeps the top resolution capped fits.
    return max(default_multiplier, cmax * max(ch_by_res) / 16384), cmax


def _count(sd: dict, pattern: str) -> int:
    return len({m.group(1) for k in sd if (m := re.match(pattern, k))})


def generator_config(sd: dict[str, torch.Tensor], **known) -> GeneratorConfig:
    """GeneratorConfig from a rosinality-named generator state dict; ``known``
    fields (e.g. lr_mlp, from a training checkpoint's args) take precedence."""
    try:
        style_dim = sd["style.1.weight"].shape[1]
        n_mlp = _count(sd, r"style\.(\d+)\.weight$")
        n_blocks = _count(sd, r"to_rgbs\.(\d+)\.")
        ch = {4: sd["input.input"].shape[1]}
        for k in range(n_blocks):
            ch[8 << k] = sd[f"convs.{2 * k}.conv.weight"].shape[1]
    except (KeyError, IndexError, AttributeError) as e:
        raise CheckpointError(f"not a StyleGAN2 generator state dict (missing {e})") from e
    cm, cmax = channel_settings(ch)
    fields = dict(size=4 << n_blocks, style_dim=style_dim, n_mlp=n_mlp,
                  channel_multiplier=cm, channel_max=cmax)
    fields.update({k: v for k, v in known.items() if v is not None})
    return GeneratorConfig(**fields)


def discriminator_config(sd: dict[str, torch.Tensor], **known) -> DiscriminatorConfig:
    """DiscriminatorConfig from a rosinality-named discriminator state dict."""
    try:
        n_blocks = _count(sd, r"convs\.(\d+)\.conv1\.")
        size = 4 << n_blocks
        ch = {size: sd["convs.0.0.weight"].shape[0]}
        for j in range(1, n_blocks + 1):
            ch[size >> j] = sd[f"convs.{j}.conv2.1.weight"].shape[0]
        feat = sd["final_conv.0.weight"].shape[1] - ch[4]
    except (KeyError, IndexError, AttributeError) as e:
        raise CheckpointError(f"not a StyleGAN2 discriminator state dict (missing {e})") from e
    cm, cmax = channel_settings(ch)
    fields = dict(size=size, channel_multiplier=cm, channel_max=cmax, stddev_feat=max(feat, 1))
    fields.update({k: v for k, v in known.items() if v is not None})
    return DiscriminatorConfig(**fields)


def check_state(what: str, model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Raises ArchitectureMismatch listing missing, unexpected and mismatched keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in own
                  if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        raise ArchitectureMismatch(what, missing, unexpected, mismatched)


def _fill_filters(model: nn.Module, sd: dict) -> dict:
    """Adds the fixed blur-filter buffers (``*.kernel``) a format does not store."""
    return {**{k: v for k, v in model.state_dict().items() if k.endswith(".kernel")}, **sd}


def build_generator(sd: dict[str, torch.Tensor], cfg: GeneratorConfig, what: str = "generator",
                    latent_avg: torch.Tensor | None = None, fill_filters: bool = False) -> Generator:
    """A new Generator filled from ``sd`` (``w_avg`` from ``latent_avg``, else from
    sd, else computed from 4096 samples)."""
    sd = dict(sd)
    if latent_avg is not None:
        sd["w_avg"] = latent_avg.reshape(-1)
    G = Generator(cfg)
    if fill_filters:
        sd = _fill_filters(G, sd)
    computed = "w_avg" not in sd
    if computed:
        sd["w_avg"] = G.w_avg
    check_state(what, G, sd)
    G.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()})
    if computed or torch.isnan(G.w_avg).any():
        G.update_w_avg()
    return G.eval()


def build_discriminator(sd: dict[str, torch.Tensor], cfg: DiscriminatorConfig,
                        what: str = "discriminator", fill_filters: bool = False) -> Discriminator:
    D = Discriminator(cfg)
    if fill_filters:
        sd = _fill_filters(D, sd)
    check_state(what, D, sd)
    D.load_state_dict({k: v.float() for k, v in sd.items()})
    return D


def rebuilt(net: nn.Module, **fields) -> nn.Module:
    """The same weights, on the CPU, in a network whose config has ``fields`` replaced (precision,
    clamp). The global RNG is left as it was: building a network draws initial weights."""
    with torch.random.fork_rng(devices=[]):
        fresh = type(net)(replace(net.cfg, **fields))
    fresh.load_state_dict({k: v.detach().cpu() for k, v in net.state_dict().items()})
    return fresh
