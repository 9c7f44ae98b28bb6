"""One file that holds everything cartoonizing needs, and the ``Cartoonizer`` that uses it.

    from eval.bundle import Cartoonizer
    toon = Cartoonizer.load("toonify.bundle", device="cuda")
    cartoons = toon.cartoonize(photo, "hero")          # uint8 [N, H, W, 3]

The file (``launch.bundle`` writes it) is a torch file of plain containers,
strings, numbers and tensors, read with ``weights_only`` and the project's
allow-list (``safe_pickle.torch_load``), so a foreign pickle is refused without
running anything:

- ``format`` "toonmix.bundle", ``version`` 2 (version 1 files are read too)
- ``g_source``, ``g_target``: the two generators in the native checkpoint
  layout (``trainer.model_io.formats.native_dict``); ``swap_res``: G_swap's
  swap resolution
- ``encoder_source`` (photos), ``encoder_target`` (characters, or None): ReStyle
  dicts (``trainer.encoder.formats.restyle_dict``); when an encoder's decoder is
  the bundled source generator or G_swap, its ``decoder.*`` weights are left out
  and ``decoder_in_bundle`` says "g_source" or "g_swap"
- ``settings``: ``mix_index``, ``trgb_replace``, ``noise_seed``, ``iters``
- ``lut``: the look-up table of the chosen characters, in ``LookUpTable``'s
  own file layout (its fingerprint must be the bundled G_swap's)
- ``references``: character name -> uint8 thumbnails [n, t, t, 3] (may be empty)
- ``sources``: part -> the path it was packed from (provenance only)

Cartoons are computed by ``eval.cdsm`` exactly as ``launch.cartoonize`` does:
photos resized with PIL's LANCZOS to the source encoder's input size, inverted
in ``iters`` passes, mixed and decoded with the bundle's settings.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from datasets.imageio import to_uint8
from trainer.model_io import CheckpointError
from trainer.model_io.atomic import torch_save_atomic
from trainer.model_io.build import build_generator, generator_config
from trainer.model_io.formats import native_dict
from trainer.model_io.safe_pickle import torch_load
from trainer.networks import Generator, GeneratorConfig
from trainer.networks.encoders import Encoder, EncoderConfig
from trainer.networks.restyle import ReStyle
from trainer.networks.swap import g_swap
from trainer.networks.weights import load_into

from .cdsm import (
    LookUpTable,
    MixConfig,
    cartoonize,
    generator_fingerprint,
    toonify,
    wplus_mix,
)

BUNDLE_FORMAT = "toonmix.bundle"
BUNDLE_VERSION = 2
READS = (1, 2)
"""Versions this code reads: 1 kept each encoder's decoder weights, 2 may name a bundled generator instead."""
REQUIRED = ("g_source", "g_target", "swap_res", "encoder_source", "settings", "lut")
METHODS = ("cdsm", "toonify", "wplus")

Images = np.ndarray | Image.Image | torch.Tensor | Sequence[np.ndarray | Image.Image]


class BundleError(CheckpointError):
    """A bundle that cannot be read or used: names the file and the part at fault."""


@dataclass
class Bundle:
    """The networks, settings and characters of a bundle file, on the CPU."""

    g_source: Generator
    g_target: Generator
    mix: MixConfig
    """Mix index, tRGB replacement, swap resolution and noise seed."""
    encoder_source: ReStyle
    table: LookUpTable
    encoder_target: ReStyle | None = None
    iters: int = 5
    """Refinement passes of the source encoder."""
    references: dict[str, np.ndarray] = field(default_factory=dict)
    """Character -> uint8 thumbnails [n, t, t, 3]."""
    sources: dict[str, str] = field(default_factory=dict)
    G_swap: Generator | None = None
    """Built from the two generators when None."""

    def __post_init__(self) -> None:
        if self.G_swap is None:
            self.G_swap = g_swap(self.g_source, self.g_target, self.mix.swap_resolution)


# ----------------------------------------------------------------------
# Writing.

def write_bundle(path: str | os.PathLike, bundle: Bundle, encoder_dicts: dict[str, dict | None]) -> Path:
    """Writes ``bundle`` atomically. ``encoder_dicts``: "source" (and "target", or None) as
    ``restyle_dict`` makes them (the encoders' file layout lives with the training code)."""
    fp = generator_fingerprint(bundle.G_swap)
    if bundle.table.fingerprint != fp:
        raise BundleError(f"{path}: the look-up table was built for another generator (fingerprint "
                          f"{bundle.table.fingerprint}) than this bundle's G_swap ({fp}, swap resolution "
                          f"{bundle.mix.swap_resolution}); rebuild the table with these generators")
    bundle.mix.check(bundle.G_swap)
    if encoder_dicts.get("source") is None:
        raise BundleError(f"{path}: no source (photo) encoder to pack")
    refs = {n: torch.from_numpy(np.ascontiguousarray(a, dtype=np.uint8)) for n, a in bundle.references.items()}
    enc_s, enc_t = encoder_dicts["source"], encoder_dicts.get("target")
    enc_s = _shared_decoder(enc_s, bundle.g_source, "g_source")
    enc_t = None if enc_t is None else _shared_decoder(enc_t, bundle.G_swap, "g_swap")
    shared = any(e is not None and "decoder_in_bundle" in e for e in (enc_s, enc_t))
    payload = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION if shared else 1,  # 1: older readers read it
               "g_source": native_dict(g_ema=bundle.g_source), "g_target": native_dict(g_ema=bundle.g_target),
               "swap_res": int(bundle.mix.swap_resolution),
               "encoder_source": enc_s, "encoder_target": enc_t,
               "settings": {"mix_index": int(bundle.mix.m), "trgb_replace": bool(bundle.mix.trgb_from_character),
                            "noise_seed": int(bundle.mix.noise_seed), "iters": int(bundle.iters)},
               "lut": bundle.table.payload(), "references": refs,
               "sources": {k: str(v) for k, v in bundle.sources.items()}}
    return torch_save_atomic(payload, path)


def _shared_decoder(obj: dict, G: Generator, name: str) -> dict:
    """``obj`` without its decoder weights when they are ``G``'s, which the bundle holds already
    (``decoder_in_bundle`` names it): at 1024 px that saves two copies of a generator."""
    dec = {k[len("decoder."):]: v for k, v in obj["state_dict"].items() if k.startswith("decoder.")}
    own = {k: v for k, v in G.state_dict().items() if k != "w_avg"}
    cfg, mine = dict(obj["opts"].get("toonmix_decoder") or {}), G.cfg.to_dict()
    for k in ("channel_multiplier", "channel_max"):  # two spellings of the channel counts the shapes fix
        cfg.pop(k, None), mine.pop(k, None)
    same = (cfg == mine and dec.keys() == own.keys()
            and all(dec[k].shape == own[k].shape and torch.equal(dec[k].cpu(), own[k].cpu()) for k in own))
    if not same:
        return obj
    sd = {k: v for k, v in obj["state_dict"].items() if not k.startswith("decoder.")}
    return {**obj, "state_dict": sd, "decoder_in_bundle": name}


# ----------------------------------------------------------------------
# Reading.

def _generator(obj: dict, where: str) -> Generator:
    return build_generator(obj["g_ema"], GeneratorConfig(**obj["g_config"]), where)


def _restyle(obj: dict, where: str, generators: dict[str, Generator]) -> ReStyle:
    """A ReStyle net from ``restyle_dict``'s layout, built as ``load_restyle`` builds a file's
    (that reader takes a path and belongs to a layer this one may not import); the decoder's
    weights come from ``generators[obj["decoder_in_bundle"]]`` when the file left them out."""
    opts, sd, latent_avg = dict(obj["opts"]), obj["state_dict"], obj["latent_avg"]
    enc_sd = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    shared = obj.get("decoder_in_bundle")
    if shared is not None and shared not in generators:
        raise BundleError(f"{where}: its decoder is {shared!r}, which is not a part of this bundle")
    dec_sd = ({k: v for k, v in generators[shared].state_dict().items() if k != "w_avg"} if shared is not None
              else {k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")})
    enc = Encoder(EncoderConfig(**opts["toonmix_encoder"]))
    load_into(enc, enc_sd, "the encoder", where)
    G = build_generator(dec_sd, generator_config(dec_sd, **(opts.get("toonmix_decoder") or {})),
                        f"{where} [decoder]", latent_avg.reshape(-1, latent_avg.shape[-1])[0])
    return ReStyle(enc, G, latent_avg.float()).eval()


def _part(path, name: str, build):
    try:
        return build()
    except BundleError:
        raise
    except (CheckpointError, KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise BundleError(f"{path}: part {name!r} does not build: {type(e).__name__}: {e}") from e


def read_bundle(path: str | os.PathLike) -> Bundle:
    """Reads and checks a bundle; every refusal is a ``BundleError`` naming the file and the part."""
    if not Path(path).is_file():
        raise BundleError(f"{path}: no such bundle file (write one with `python -m launch.bundle`; "
                          "`make demo` writes runs/demo/demo.bundle)")
    obj = torch_load(path)  # a foreign pickle: UnsafeCheckpointError, nothing run
    if not isinstance(obj, dict) or obj.get("format") != BUNDLE_FORMAT:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise BundleError(f"{path} is not a toonmix bundle (format {found!r}, expected {BUNDLE_FORMAT!r})")
    version = obj.get("version")
    if isinstance(version, int) and version > BUNDLE_VERSION:
        raise BundleError(f"{path}: bundle version {version} is newer than this code reads (version "
                          f"{BUNDLE_VERSION}): update toonmix")
    if version not in READS:
        raise BundleError(f"{path}: unknown bundle version {version!r} (this code reads versions {READS})")
    missing = [k for k in REQUIRED if obj.get(k) is None]
    if missing:
        raise BundleError(f"{path}: missing part(s): {', '.join(missing)}")
    s = obj["settings"]
    mix = _part(path, "settings", lambda: MixConfig(int(s["mix_index"]), bool(s["trgb_replace"]),
                                                    int(obj["swap_res"]), int(s["noise_seed"])))
    g_s = _part(path, "g_source", lambda: _generator(obj["g_source"], f"{path} [g_source]"))
    g_t = _part(path, "g_target", lambda: _generator(obj["g_target"], f"{path} [g_target]"))
    gens = {"g_source": g_s, "g_swap": _part(path, "G_swap", lambda: g_swap(g_s, g_t, mix.swap_resolution))}
    enc_s = _part(path, "encoder_source",
                  lambda: _restyle(obj["encoder_source"], f"{path} [encoder_source]", gens))
    enc_t = None if obj.get("encoder_target") is None else _part(
        path, "encoder_target", lambda: _restyle(obj["encoder_target"], f"{path} [encoder_target]", gens))
    table = _part(path, "lut", lambda: LookUpTable.from_payload(obj["lut"], f"{path} [lut]"))
    refs = _part(path, "references", lambda: _references(obj.get("references") or {}, table))
    iters = _part(path, "settings", lambda: int(s["iters"]))
    sources = _part(path, "sources", lambda: {str(k): str(v) for k, v in (obj.get("sources") or {}).items()})
    b = Bundle(g_s, g_t, mix, enc_s, table, enc_t, iters, refs, sources, gens["g_swap"])
    fp = generator_fingerprint(b.G_swap)
    if table.fingerprint != fp:
        raise BundleError(f"{path}: the look-up table's generator fingerprint {table.fingerprint} does not match "
                          f"the bundled G_swap ({fp}): the table belongs to other generators or swap resolution")
    _part(path, "settings", lambda: mix.check(b.G_swap))
    if enc_s.decoder.n_latent != b.G_swap.n_latent:
        raise BundleError(f"{path}: the source encoder predicts {enc_s.decoder.n_latent} W+ entries, "
                          f"G_swap takes {b.G_swap.n_latent}")
    return b


def _references(refs: dict, table: LookUpTable) -> dict[str, np.ndarray]:
    out = {}
    for name, t in refs.items():
        if name not in table:
            raise ValueError(f"thumbnails of {name!r}, a character the table does not hold")
        if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
            raise ValueError(f"thumbnails of {name!r} must be uint8 [n, H, W, 3]")
        out[name] = t.numpy()
    return out


# ----------------------------------------------------------------------
# The Python API.

def _pil_to_tensor(im: Image.Image, size: int) -> torch.Tensor:
    """[3, size, size] in [-1, 1], the resize and scaling of ``eval.cdsm_run.load_face``."""
    arr = np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.LANCZOS), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1


def photos_tensor(images: Images, size: int) -> torch.Tensor:
    """Photos as [N, 3, size, size] in [-1, 1].

    A float tensor [N, 3, H, W] (or [3, H, W]) in [-1, 1] at ``size`` is used as it is; at
    another size it goes through the uint8 LANCZOS resize a photo file gets."""
    if isinstance(images, torch.Tensor):
        x = images[None] if images.ndim == 3 else images
        if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(f"a tensor of photos must be float [N, 3, H, W] in [-1, 1], got "
                             f"{x.dtype} {tuple(images.shape)}")
        if tuple(x.shape[-2:]) == (size, size):
            return x.float()
        images = list(to_uint8(x))
    elif isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    elif isinstance(images, (np.ndarray, Image.Image)):
        images = [images]
    out = []
    for i, im in enumerate(images):
        if isinstance(im, np.ndarray):
            if im.dtype != np.uint8 or im.ndim != 3 or im.shape[-1] not in (3, 4):
                raise ValueError(f"photo {i}: expected a uint8 [H, W, 3] array, got {im.dtype} {im.shape}")
            im = Image.fromarray(im)
        if not isinstance(im, Image.Image):
            raise TypeError(f"photo {i}: a {type(im).__name__}, not a numpy array, PIL image or tensor")
        out.append(_pil_to_tensor(im, size))
    if not out:
        raise ValueError("no photos given")
    return torch.stack(out)


class Cartoonizer:
    """Cartoonizes photos with a bundle's networks on one device (no distributed machinery)."""

    def __init__(self, bundle: Bundle, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.bundle = bundle
        self.G = bundle.G_swap.to(self.device).eval()
        self.encoder = bundle.encoder_source.to(self.device).eval()

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> Cartoonizer:
        return cls(read_bundle(path), device)

    @property
    def characters(self) -> list[str]:
        return self.bundle.table.names()

    @property
    def size(self) -> int:
        """The photo size the source encoder takes (inputs are resized to it)."""
        return self.encoder.size

    def references(self, name: str) -> np.ndarray:
        """The character's bundled thumbnails, uint8 [n, t, t, 3] (n = 0 when none were packed)."""
        self.bundle.table.get(name)  # an unknown name: KeyError listing the known ones
        return self.bundle.references.get(name, np.zeros((0, 0, 0, 3), np.uint8))

    def _iters(self, iters: int | None) -> int:
        n = self.bundle.iters if iters is None else iters
        if n < 1:
            raise ValueError(f"iters must be >= 1, got {n}")
        return n

    def invert(self, images: Images, iters: int | None = None, batch_size: int = 8) -> torch.Tensor:
        """The photos' W+ [N, L, D] from the source encoder, on the CPU."""
        with torch.no_grad():
            return torch.cat([w.cpu() for w, _ in self._passes(images, iters, batch_size)])

    def _passes(self, images: Images, iters: int | None, batch_size: int):
        """Per batch of photos: (the last pass's W+, its reconstruction at the encoder's size)."""
        x = photos_tensor(images, self.size)
        n = self._iters(iters)
        for i in range(0, len(x), batch_size):
            last = self.encoder.invert(x[i:i + batch_size].to(self.device), n)[-1]
            yield last.latent, last.image

    def _mix(self, method: str, w: torch.Tensor, w_char: torch.Tensor) -> torch.Tensor:
        cfg = self.bundle.mix
        return (cartoonize(self.G, w, w_char, cfg) if method == "cdsm" else toonify(self.G, w, cfg)
                if method == "toonify" else wplus_mix(self.G, w, w_char, cfg))

    def cartoonize(self, images: Images, character: str, method: str = "cdsm", return_latents: bool = False,
                   iters: int | None = None, batch_size: int = 8) -> np.ndarray | tuple[np.ndarray, torch.Tensor]:
        """Cartoons uint8 [N, S, S, 3] of ``images`` as ``character`` (and the photos' W+ [N, L, D]).

        ``method``: "cdsm", "toonify" (the photo's latent in G_swap) or "wplus" (W+ style mixing);
        ``iters`` overrides the bundle's encoder passes; ``batch_size`` photos per forward."""
        out = self.compare(images, character, (method,), iters, batch_size)
        return (out[method], out["latents"]) if return_latents else out[method]

    def compare(self, images: Images, character: str, methods: Sequence[str] = METHODS,
                iters: int | None = None, batch_size: int = 8) -> dict[str, np.ndarray | torch.Tensor]:
        """Every method's cartoons from one inversion, as the sheets of ``launch.cartoonize`` show them.

        Returns uint8 [N, S, S, 3] arrays under each method's name and "reconstruction" (the
        source encoder's last pass, at its input size), and the photos' W+ under "latents"."""
        bad = [m for m in methods if m not in METHODS]
        if bad or not methods:
            raise ValueError(f"method must be one of {METHODS}, got {bad or list(methods)}")
        w_char = self.bundle.table.get(character).latent[None].to(self.device)
        parts: dict[str, list] = {k: [] for k in ("latents", "reconstruction", *methods)}
        with torch.no_grad():
            for w, rec in self._passes(images, iters, batch_size):
                parts["latents"].append(w.cpu())
                parts["reconstruction"].append(to_uint8(rec))
                for m in methods:
                    parts[m].append(to_uint8(self._mix(m, w, w_char)))
        return {k: torch.cat(v) if k == "latents" else np.concatenate(v) for k, v in parts.items()}
