"""Layer swapping and soft blending of two generators (toonify, CDSM's G_swap).

``layer_swap(base, target, 32)``: the mapping network, ``w_avg`` and every layer
whose output resolution is below 32 come from ``base`` (the FFHQ generator);
layers at 32 and above come from ``target`` (the fine-tuned one). ``blend``
replaces the step by a logistic ramp in log2(resolution). Both return a new
ordinary ``Generator``, which saves and loads like any other.
"""

from __future__ import annotations

import copy
import math
import re

import torch

from .generator import Generator


def param_resolution(G: Generator, name: str) -> int | None:
    """Output resolution of the layer a state-dict entry belongs to; None for the
    mapping network and ``w_avg`` (resolution-free)."""
    if name.startswith(("style.", "w_avg")):
        return None
    if name.startswith(("input.", "conv1.", "to_rgb1.")):
        return 4
    m = re.match(r"(convs|to_rgbs)\.(\d+)\.", name)
    if m:
        return getattr(G, m.group(1))[int(m.group(2))].resolution
    m = re.match(r"noises\.noise_(\d+)$", name)
    if m:
        return 2 ** ((int(m.group(1)) + 5) // 2)
    raise KeyError(f"no resolution known for generator entry {name!r}")


def _check_compatible(a: Generator, b: Generator) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    bad = [k for k in sa if k not in sb or sa[k].shape != sb[k].shape]
    if bad or len(sa) != len(sb):
        raise ValueError(f"generators differ in architecture (first mismatches: {bad[:5]})")


def _target_weight(res: int | None, resolution: int, width: float | None) -> float:
    """Share of ``target`` in the mix: 0 below ``resolution``, 1 at and above it."""
    if res is None:
        return 0.0
    if width is None:
        return 1.0 if res >= resolution else 0.0
    x = (math.log2(res) - (math.log2(resolution) - 0.5)) / width
    return 1.0 / (1.0 + math.exp(-x))


@torch.no_grad()
def blend(base: Generator, target: Generator, resolution: int = 32,
          width: float | None = None) -> Generator:
    """Interpolates ``base`` and ``target`` per layer by resolution.

    ``width`` None gives the hard swap; a positive width (in octaves) a soft
    ramp centred between ``resolution / 2`` and ``resolution``.
    """
    _check_compatible(base, target)
    if resolution < 4 or resolution & (resolution - 1):
        raise ValueError(f"swap resolution must be a power of two >= 4, got {resolution}")
    if width is not None and width <= 0:
        raise ValueError(f"blend width must be positive, got {width}")
    out = copy.deepcopy(target)
    sb, st = base.state_dict(), target.state_dict()
    mixed = {}
    for name, t in st.items():
        a = _target_weight(param_resolution(target, name), resolution, width)
        mixed[name] = t if a == 1.0 else sb[name].clone() if a == 0.0 else torch.lerp(sb[name], t, a)
    out.load_state_dict(mixed)
    return out


def layer_swap(base: Generator, target: Generator, resolution: int = 32) -> Generator:
    """Mapping and layers below ``resolution`` from ``base``, the rest from ``target``."""
    return blend(base, target, resolution, None)


def g_swap(g_source: Generator, g_target: Generator, resolution: int = 32) -> Generator:
    """G_swap: mapping, ``w_avg`` and layers below ``resolution`` from the source
    (FFHQ) generator, the rest from the fine-tuned target; frozen, in eval mode."""
    G = layer_swap(g_source, g_target, resolution)
    G.eval()
    G.requires_grad_(False)
    return G
