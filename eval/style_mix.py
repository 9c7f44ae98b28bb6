"""Style-mixing grids (StyleGAN's figure, NVlabs' ``style_mixing.py``) for any generator or G_swap.

A cell takes its row's W+ and replaces the chosen W+ entries with its column's.
Which entries a named range means is read from the generator's traced style
layers (``style_layers``), as CDSM does, never from a table per resolution:

- ``coarse``: the entries whose lowest layer is at 4-8 px, ``middle``: 16-32 px,
  ``fine``: 64 px and up (StyleGAN's paper, section 3.1: 0-3, 4-7 and 8-17 at
  1024 px, no overlap; at a small size a range with no entries is an error);
- ``r16`` or ``r8-32``: the entries that drive the layers of those resolutions;
- ``0-6`` or ``0,2,4``: W+ indices themselves.

An entry drives the conv (and tRGB) layers its traced ``w_index`` names, so
"the 16 px entries" are those of the 16 px layers in this very generator. One
entry can reach two resolutions (in rosinality's wiring a tRGB shares its entry
with the next block's first conv), so mixing r16 also changes the 8 px tRGB;
``launch.style_mix``'s report lists every resolution the entries reach.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from datasets.imageio import to_uint8
from trainer.networks import Generator
from trainer.networks.stylespace import style_layers

NAMED = {"coarse": (4, 8), "middle": (16, 32), "fine": (64, 1 << 30)}
"""Resolution ranges of StyleGAN's coarse, middle and fine styles (inclusive)."""


def entries_at(G: Generator, low: int, high: int) -> list[int]:
    """W+ indices that drive a layer whose output resolution is in [low, high]."""
    return sorted({layer.w_index for layer in style_layers(G) if low <= layer.resolution <= high})


def entries_from(G: Generator, low: int, high: int) -> list[int]:
    """W+ indices whose lowest driven resolution is in [low, high]: the named ranges, which
    then do not overlap (0-3, 4-7, 8-17 at 1024 px, StyleGAN's coarse, middle and fine)."""
    lowest: dict[int, int] = {}
    for layer in style_layers(G):
        lowest[layer.w_index] = min(layer.resolution, lowest.get(layer.w_index, layer.resolution))
    return sorted(i for i, r in lowest.items() if low <= r <= high)


def _int_range(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return out


def parse_entries(spec: str, G: Generator) -> list[int]:
    """The W+ indices ``spec`` names (see the module docstring); ValueError says what is wrong."""
    spec = spec.strip().lower()
    if spec in NAMED:
        found = entries_from(G, *NAMED[spec])
        what = f"{spec} ({NAMED[spec][0]}-{min(NAMED[spec][1], G.size)} px)"
    elif re.fullmatch(r"r\d+(-\d+)?", spec):
        lo, _, hi = spec[1:].partition("-")
        found, what = entries_at(G, int(lo), int(hi or lo)), f"resolutions {spec[1:]} px"
    elif re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", spec):
        found, what = sorted(set(_int_range(spec))), f"W+ entries {spec}"
        bad = [i for i in found if i >= G.n_latent]
        if bad:
            raise ValueError(f"W+ entries {bad} are outside this {G.size} px generator's 0-{G.n_latent - 1}")
    else:
        raise ValueError(f"unknown layer range {spec!r}: coarse, middle, fine, r<res> or r<lo>-<hi> "
                         f"(e.g. r8-32), or W+ indices (e.g. 0-6 or 0,2,4)")
    if not found:
        sizes = sorted({layer.resolution for layer in style_layers(G)})
        raise ValueError(f"{what}: no layer of this generator is there (its layers are at {sizes} px)")
    return found


def mixed(w_rows: torch.Tensor, w_cols: torch.Tensor, entries: list[int]) -> torch.Tensor:
    """W+ [R, C, L, D]: row r's W+ with ``entries`` taken from column c's."""
    R, C = len(w_rows), len(w_cols)
    out = w_rows[:, None].expand(R, C, *w_rows.shape[1:]).clone()
    out[:, :, entries] = w_cols[None, :, entries].expand(R, C, len(entries), w_rows.shape[-1])
    return out


@torch.no_grad()
def render(G: Generator, ws: torch.Tensor, batch: int = 16) -> np.ndarray:
    """uint8 [N, S, S, 3] images of W+ [N, L, D], constant noise (as NVlabs' grid)."""
    return np.concatenate([to_uint8(G.synthesis(ws[i:i + batch], noise_mode="const").img)
                           for i in range(0, len(ws), batch)])


def grid(G: Generator, w_rows: torch.Tensor, w_cols: torch.Tensor, entries: list[int],
         batch: int = 16) -> np.ndarray:
    """NVlabs' layout as one uint8 image: a blank corner, the column images along the top,
    the row images down the left, and each cell row x column mixed at ``entries``."""
    S, R, C = G.size, len(w_rows), len(w_cols)
    cells = render(G, mixed(w_rows, w_cols, entries).flatten(0, 1), batch).reshape(R, C, S, S, 3)
    tops, lefts = render(G, w_cols, batch), render(G, w_rows, batch)
    out = np.full(((R + 1) * S, (C + 1) * S, 3), 255, np.uint8)
    for c in range(C):
        out[:S, (c + 1) * S:(c + 2) * S] = tops[c]
    for r in range(R):
        out[(r + 1) * S:(r + 2) * S, :S] = lefts[r]
        for c in range(C):
            out[(r + 1) * S:(r + 2) * S, (c + 1) * S:(c + 2) * S] = cells[r, c]
    return out
