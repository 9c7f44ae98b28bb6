"""StyleSpace: the per-layer style vectors s = A(w) of a generator.

The table of style layers (kind, resolution, driving W+ index) is read off the
generator by tracing one synthesis pass: ``Generator.synthesis`` reports each
modulated layer and the W+ index it takes, and a forward hook records the
layer's output size. Nothing here restates the wiring by hand (a hand-written
table in a public reimplementation was off by one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .generator import Generator
from .layers import ToRGB


@dataclass(frozen=True)
class StyleLayer:
    """One modulated layer of the generator."""

    index: int
    """Position in synthesis order (the index into a styles list)."""
    name: str
    """Module path inside the generator, e.g. ``convs.3`` or ``to_rgb1``."""
    kind: str
    """"conv" (demodulated 3x3) or "trgb" (ToRGB)."""
    resolution: int
    """Output resolution of the layer."""
    w_index: int
    """The W+ entry whose A(w) drives this layer."""
    channels: int
    """Length of its style vector (the layer's input channels)."""


@torch.no_grad()
def _trace(G: Generator) -> list[StyleLayer]:
    names = {m: n for n, m in G.named_modules()}
    calls: list[tuple[nn.Module, int]] = []
    sizes: dict[nn.Module, int] = {}
    hooks = [m.register_forward_hook(lambda mod, _i, out: sizes.__setitem__(mod, out.shape[-1]))
             for m in names if hasattr(m, "conv") and hasattr(m.conv, "modulation")]
    try:
        ws = torch.zeros(1, G.n_latent, G.style_dim, device=G.input.input.device)
        G.synthesis(ws, noise_mode="none", trace=lambda layer, w_index: calls.append((layer, w_index)))
    finally:
        for h in hooks:
            h.remove()
    return [StyleLayer(k, names[m], "trgb" if isinstance(m, ToRGB) else "conv", sizes[m], wi,
                       m.conv.in_channel) for k, (m, wi) in enumerate(calls)]


def style_layers(G: Generator) -> list[StyleLayer]:
    """The style layers of ``G`` in synthesis order (traced once, then cached)."""
    cached = getattr(G, "_style_layers", None)
    if cached is None:
        cached = _trace(G)
        G._style_layers = cached  # architecture is fixed after construction
    return cached


def ws_to_styles(G: Generator, ws: torch.Tensor) -> list[torch.Tensor]:
    """W+ [N, n_latent, D] -> styles, one [N, channels] tensor per style layer."""
    modules = dict(G.named_modules())
    return [modules[layer.name].conv.modulation(ws[:, layer.w_index]) for layer in style_layers(G)]


def synthesize(G: Generator, styles: list[torch.Tensor], noise_mode: str = "const",
               noise: list | None = None) -> torch.Tensor:
    """Image from a full list of styles (see ``ws_to_styles``)."""
    layers = style_layers(G)
    if len(styles) != len(layers):
        raise ValueError(f"expected {len(layers)} styles, got {len(styles)}")
    for layer, s in zip(layers, styles):
        if s.ndim != 2 or s.shape[1] != layer.channels:
            raise ValueError(f"style {layer.index} ({layer.name}) must be [N, {layer.channels}], "
                             f"got {tuple(s.shape)}")
    return G.synthesis(styles=styles, noise_mode=noise_mode, noise=noise).img
