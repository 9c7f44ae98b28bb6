"""Cross-Domain Style Mixing (CDSM, Kim et al., arXiv 2205.12450).

A photo's W+ (``w_photo``, from the source encoder) and a character's mean W+
(``w_char``, from a look-up table) are both mapped to StyleSpace through the
affines of G_swap (the layer-swapped generator). Conv styles driven by a W+
index below ``m`` come from the photo (face shape and pose), every other conv
style and, with "tRGB replacement", every tRGB style come from the character
(its colours and drawing style). The mix is decoded by G_swap with fixed noise.

Which W+ index drives which style layer is read from the generator's traced
wiring (``style_layers``), never from a hand-written table.

The look-up table holds one averaged latent per character with the generator
fingerprint it belongs to. Building it across ranks is the caller's business:
this module only receives the latents.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from trainer.model_io.atomic import torch_save_atomic
from trainer.model_io.safe_pickle import torch_load
from trainer.networks.generator import Generator
from trainer.networks.stylespace import style_layers, synthesize, ws_to_styles

METHODS = ("encoder", "projection")
TABLE_FORMAT = "toonmix.cdsm.lookup_table"
TABLE_VERSION = 1


# ----------------------------------------------------------------------
# The style mix (G_swap itself is trainer.networks.swap.g_swap).

@dataclass
class MixConfig:
    """How CDSM mixes a photo's styles with a character's."""

    m: int = 6
    """Conv styles whose W+ index is below ``m`` come from the photo (0: none, n_latent: all)."""
    trgb_from_character: bool = True
    """"tRGB replacement": every tRGB style from the character. False: tRGB styles follow
    the W+ index rule of the conv styles (which makes the mix plain W+ style mixing)."""
    swap_resolution: int = 32
    """Resolution from which G_swap takes the target generator's layers (for callers that build G_swap)."""
    noise_seed: int = 0
    """Seed of the fixed per-layer noise every decode uses."""

    def __post_init__(self) -> None:
        if self.m < 0:
            raise ValueError(f"m must be >= 0, got {self.m}")
        r = self.swap_resolution
        if r < 4 or r & (r - 1):
            raise ValueError(f"swap_resolution must be a power of two >= 4, got {r}")

    def check(self, G: Generator) -> None:
        """The bound on ``m`` depends on the generator's number of W+ entries."""
        if not 0 <= self.m <= G.n_latent:
            raise ValueError(f"m must be in [0, {G.n_latent}] for a {G.size}px generator, got {self.m}")


def photo_mask(G: Generator, cfg: MixConfig) -> list[bool]:
    """Per style layer (``style_layers`` order): True when its style comes from the photo."""
    cfg.check(G)
    return [not (layer.kind == "trgb" and cfg.trgb_from_character) and layer.w_index < cfg.m
            for layer in style_layers(G)]


def _check_ws(G: Generator, ws: torch.Tensor, what: str) -> None:
    if ws.ndim != 3 or tuple(ws.shape[1:]) != (G.n_latent, G.style_dim):
        raise ValueError(f"{what} must be [N, {G.n_latent}, {G.style_dim}], got {tuple(ws.shape)}")


def _char_batch(G: Generator, w_photo: torch.Tensor, w_char: torch.Tensor) -> torch.Tensor:
    """``w_char`` as [1 or N, L, D] on the photo's device; a table entry [L, D] is accepted."""
    _check_ws(G, w_photo, "w_photo")
    w_char = w_char.to(w_photo)
    if w_char.ndim == 2:
        w_char = w_char[None]
    _check_ws(G, w_char, "w_char")
    if w_char.shape[0] not in (1, w_photo.shape[0]):
        raise ValueError(f"w_char must have batch 1 or {w_photo.shape[0]} (the photos'), got {w_char.shape[0]}")
    return w_char


def mix_styles(G: Generator, w_photo: torch.Tensor, w_char: torch.Tensor, cfg: MixConfig) -> list[torch.Tensor]:
    """Styles [N, C] per layer: from ``A(w_photo)`` where ``photo_mask``, else from ``A(w_char)``."""
    w_char = _char_batch(G, w_photo, w_char)
    n = w_photo.shape[0]
    s_f = ws_to_styles(G, w_photo)
    # One character latent is shared by the batch: its styles are computed once, then broadcast.
    s_c = [s.expand(n, -1) for s in ws_to_styles(G, w_char)]
    return [f if from_photo else c for f, c, from_photo in zip(s_f, s_c, photo_mask(G, cfg))]


def fixed_noise(G: Generator, seed: int, batch: int = 1) -> list[torch.Tensor]:
    """Per-layer noise, shaped like ``G``'s noise buffers and the same for every image of the batch.

    Drawn on the CPU from its own ``torch.Generator`` so the maps do not depend on
    the device or on the global random state."""
    gen = torch.Generator().manual_seed(seed)
    device = G.input.input.device
    maps = [torch.randn(getattr(G.noises, f"noise_{i}").shape, generator=gen) for i in range(G.num_layers)]
    return [x.to(device).expand(batch, -1, -1, -1) for x in maps]


@torch.no_grad()
def cartoonize(G_swap: Generator, w_photo: torch.Tensor, w_char: torch.Tensor, cfg: MixConfig) -> torch.Tensor:
    """CDSM images [N, 3, S, S] for photos ``w_photo`` [N, L, D] and a character ``w_char``."""
    styles = mix_styles(G_swap, w_photo, w_char, cfg)
    return synthesize(G_swap, styles, noise=fixed_noise(G_swap, cfg.noise_seed, w_photo.shape[0]))


@torch.no_grad()
def toonify(G_swap: Generator, w_photo: torch.Tensor, cfg: MixConfig) -> torch.Tensor:
    """Baseline: the photo's latent decoded by G_swap alone (layer-swap toonification)."""
    _check_ws(G_swap, w_photo, "w_photo")
    noise = fixed_noise(G_swap, cfg.noise_seed, w_photo.shape[0])
    return G_swap.synthesis(w_photo, noise=noise).img


@torch.no_grad()
def wplus_mix(G_swap: Generator, w_photo: torch.Tensor, w_char: torch.Tensor, cfg: MixConfig) -> torch.Tensor:
    """Baseline: plain W+ style mixing, entries below ``m`` from the photo, the rest from the character."""
    w_char = _char_batch(G_swap, w_photo, w_char).expand_as(w_photo)
    cfg.check(G_swap)
    ws = torch.cat([w_photo[:, :cfg.m], w_char[:, cfg.m:]], dim=1)
    return G_swap.synthesis(ws, noise=fixed_noise(G_swap, cfg.noise_seed, w_photo.shape[0])).img


# ----------------------------------------------------------------------
# The look-up table.

def sample_references(names: list[str], k: int, seed: int) -> list[str]:
    """``k`` distinct names drawn without replacement, returned sorted.

    Draws with ``numpy.random.default_rng(seed)`` from the sorted, de-duplicated
    list, so the choice depends only on the set of names and the seed. When fewer
    than ``k`` names exist all of them are returned: the caller sees the shortfall
    as ``len(result) < k`` (``CharacterEntry.complete`` records it in the table).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    pool = sorted(set(names))
    if len(pool) <= k:
        return pool
    idx = np.random.default_rng(seed).choice(len(pool), size=k, replace=False)
    return sorted(pool[i] for i in idx)


def generator_fingerprint(G: Generator) -> str:
    """First 16 hex digits of a SHA-256 over the state dict (names, shapes, dtypes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(G.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        # Through uint8 so dtypes numpy lacks (bfloat16) hash the same way.
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def average_latent(latents: torch.Tensor) -> torch.Tensor:
    """Mean W+ [L, D] of ``latents`` [k, L, D], summed in float64 (k is small, but exact is cheap)."""
    if latents.ndim != 3 or latents.shape[0] < 1:
        raise ValueError(f"latents must be [k >= 1, L, D], got {tuple(latents.shape)}")
    return latents.double().mean(dim=0).to(latents.dtype)


@dataclass
class CharacterEntry:
    """One character of the look-up table."""

    name: str
    """The character's label."""
    latent: torch.Tensor
    """Mean W+ [L, D] of the inverted reference images."""
    images: list[str] = field(default_factory=list)
    """Names of the reference images that were inverted and averaged."""
    k: int = 50
    """Number of references requested (``len(images)`` is fewer when the character has fewer)."""
    method: str = "encoder"
    """How the references were inverted: "encoder" or "projection"."""

    def __post_init__(self) -> None:
        if self.latent.ndim != 2:
            raise ValueError(f"{self.name}: latent must be [L, D], got {tuple(self.latent.shape)}")
        if self.method not in METHODS:
            raise ValueError(f"{self.name}: method must be one of {METHODS}, got {self.method!r}")
        if self.k < 1:
            raise ValueError(f"{self.name}: k must be >= 1, got {self.k}")
        self.images = [str(s) for s in self.images]

    @property
    def complete(self) -> bool:
        """False when fewer than ``k`` references were available."""
        return len(self.images) >= self.k

    def to_dict(self) -> dict:
        # clone: a view would drag its whole base storage into the file.
        return {"latent": self.latent.detach().cpu().clone(), "images": list(self.images),
                "k": int(self.k), "method": self.method}


class TableMismatch(ValueError):
    """The table's latents belong to another generator than the one in use."""


def _check_plain(value: object, where: str) -> None:
    """``meta`` must survive ``torch.load(weights_only=True)``: plain Python values only."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: keys must be str, got {type(k).__name__}")
            _check_plain(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise TypeError(f"{where}: {type(value).__name__} is not a plain value (str, number, bool, "
                        "None, list, dict)")


class LookUpTable:
    """Character name -> ``CharacterEntry``, tied to the generator its latents belong to."""

    def __init__(self, fingerprint: str, meta: dict | None = None):
        self.fingerprint = fingerprint
        """``generator_fingerprint`` of the generator the latents were inverted into."""
        self.meta: dict = dict(meta or {})
        """How the table was built: swap resolution, seed, k, method, ..."""
        self.entries: dict[str, CharacterEntry] = {}

    def add(self, entry: CharacterEntry) -> None:
        """Adds or replaces a character; every latent must have one shape."""
        other = next(iter(self.entries.values()), None)
        if other is not None and other.latent.shape != entry.latent.shape:
            raise ValueError(f"{entry.name}: latent {tuple(entry.latent.shape)} differs from the "
                             f"table's {tuple(other.latent.shape)}")
        self.entries[entry.name] = entry

    def get(self, name: str) -> CharacterEntry:
        if name not in self.entries:
            raise KeyError(f"no character {name!r} in the look-up table; known: {', '.join(self.names()) or '(none)'}")
        return self.entries[name]

    def names(self) -> list[str]:
        return sorted(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def payload(self) -> dict:
        """The table as its file holds it (plain values and tensors), also embedded in bundles."""
        _check_plain(self.meta, "meta")
        return {"format": TABLE_FORMAT, "version": TABLE_VERSION, "fingerprint": self.fingerprint,
                "meta": dict(self.meta), "entries": {n: e.to_dict() for n, e in self.entries.items()}}

    def save(self, path: str | os.PathLike) -> None:
        """Writes atomically: a temporary file beside ``path``, then ``os.replace``."""
        torch_save_atomic(self.payload(), path)

    @classmethod
    def load(cls, path: str | os.PathLike, expect_fingerprint: str | None = None) -> LookUpTable:
        """Reads a table; ``expect_fingerprint`` (the generator in use) must match the table's."""
        try:
            payload = torch_load(path)
        except OSError:  # missing file, permissions: not a question of the file's content
            raise
        except Exception as e:  # truncated zip, not a torch file, unsafe pickle, ...
            raise ValueError(f"{path} is not a readable look-up table (truncated or not a torch file): "
                             f"{type(e).__name__}: {e}") from e
        table = cls.from_payload(payload, path)
        if expect_fingerprint is not None and expect_fingerprint != table.fingerprint:
            raise TableMismatch(f"{path} was built for another generator (fingerprint {table.fingerprint}) "
                                f"than the one in use ({expect_fingerprint}); rebuild the table for it")
        return table

    @classmethod
    def from_payload(cls, payload: object, path: str | os.PathLike) -> LookUpTable:
        """A table from ``payload()``'s layout; ValueError naming ``path`` when it is not one."""
        if not isinstance(payload, dict) or payload.get("format") != TABLE_FORMAT:
            raise ValueError(f"{path} is not a CDSM look-up table (no {TABLE_FORMAT!r} format tag)")
        if payload.get("version") != TABLE_VERSION:
            raise ValueError(f"{path}: look-up table version {payload.get('version')!r}, "
                             f"this code reads version {TABLE_VERSION}")
        try:
            table = cls(str(payload["fingerprint"]), payload["meta"])
            for name, e in payload["entries"].items():
                table.add(CharacterEntry(name, e["latent"], e["images"], e["k"], e["method"]))
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"{path}: malformed look-up table: {e}") from e
        return table

    def stack(self, names: list[str]) -> torch.Tensor:
        """Latents [len(names), L, D] of the named characters, in order."""
        return torch.stack([self.get(n).latent for n in names])
