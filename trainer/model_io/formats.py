"""Reading and writing the three checkpoint formats.

- rosinality ``.pt``: ``{"g_ema", "g", "d", "latent_avg", "args", "g_optim",
  "d_optim", "ada_aug_p"}`` (converted FFHQ files hold ``g_ema`` and
  ``latent_avg`` only). Our networks use its key names, so the state dicts go
  through unchanged; ``w_avg`` travels as ``latent_avg``. The format has no
  place for ``conv_clamp`` or a minibatch-stddev group other than 4: writing a
  D with another group is refused unless allowed, a dropped clamp warns
  (``FormatChangeWarning``). ``args`` is written only when the source had it
  (it is an ``argparse.Namespace``, which ``torch.load``'s default
  ``weights_only=True`` refuses).
- NVlabs stylegan2-ada-pytorch / stylegan3 (StyleGAN2 config) pickles: read
  as data (``safe_pickle``), renamed by ``nvlabs.py``. Read-only: writing one
  would mean shipping NVlabs' source inside the pickle.
- ours: ``{"format": "toonmix.stylegan2", "version": 1, "g_config",
  "d_config", "g_ema", "g", "d", "extra"}`` saved with torch and read with
  ``weights_only=True``.
"""

from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainer.networks import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig

from . import nvlabs
from .atomic import torch_save_atomic
from .build import build_discriminator, build_generator, discriminator_config, generator_config, rebuilt
from .errors import CheckpointError, FormatChangeWarning, MbstdChangeError
from .safe_pickle import PersistentRecord, file_kind, load_nvlabs_pickle, torch_load

NATIVE_FORMAT = "toonmix.stylegan2"
NATIVE_VERSION = 1
FORMATS = ("rosinality", "nvlabs", "toonmix")
ROSINALITY_STDDEV_GROUP = 4
"""rosinality's Discriminator fixes its minibatch-stddev group; its files cannot name another."""


@dataclass
class LoadedCheckpoint:
    """Networks and training state read from any supported checkpoint."""

    format: str
    """"rosinality", "nvlabs" or "toonmix"."""
    g_ema: Generator | None = None
    g: Generator | None = None
    d: Discriminator | None = None
    extra: dict = field(default_factory=dict)
    """Everything else the file holds (args as a dict, optimizer states, ada_aug_p...)."""

    def generator(self, float32: bool = True) -> Generator:
        """The generator to sample from: g_ema, else g. In float32 unless ``float32=False``: every
        command samples in float32 on every device, so an NVlabs file's fp16 blocks are rebuilt
        (its activation clamp stays: it is part of what the network computes)."""
        G = self.g_ema if self.g_ema is not None else self.g
        if G is None:
            raise CheckpointError(f"{self.format} checkpoint holds no generator")
        return rebuilt(G, num_fp16_res=0) if float32 and G.cfg.num_fp16_res else G


MISSING_HINT = ("a generator file: a run's network.pt / network-rosinality.pt, rosinality's .pt or NVlabs' .pkl "
                "(the public FFHQ weights and where to put them: docs/weights.md)")


def detect_format(path: str | Path) -> str:
    """Which of FORMATS a file is, from its container and top-level keys."""
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; expected {MISSING_HINT}")
    if file_kind(path) == "pickle":
        return "nvlabs"
    return _format_of(torch_load(path), path)


def _format_of(obj: object, path) -> str:
    if isinstance(obj, dict) and obj.get("format") == NATIVE_FORMAT:
        return "toonmix"
    if isinstance(obj, dict) and any(k in obj for k in ("g_ema", "g", "d")):
        return "rosinality"
    keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(f"{path}: unknown checkpoint layout (top level: {keys})")


def load_checkpoint(path: str | Path, fmt: str | None = None) -> LoadedCheckpoint:
    """Reads any supported checkpoint; ``fmt`` forces a format instead of detecting it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file; expected {MISSING_HINT}")
    if fmt not in (None,) + FORMATS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; choose from {FORMATS}")
    if (fmt or ("nvlabs" if file_kind(path) == "pickle" else None)) == "nvlabs":
        return _load_nvlabs(path)
    obj = torch_load(path)
    fmt = fmt or _format_of(obj, path)
    return _load_native(obj, path) if fmt == "toonmix" else _load_rosinality(obj, path)


# ----------------------------------------------------------------------------
# rosinality

def _load_rosinality(obj: dict, path) -> LoadedCheckpoint:
    args = obj.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    g_known = dict(channel_multiplier=args.get("channel_multiplier"), n_mlp=args.get("n_mlp"),
                   style_dim=args.get("latent"))
    latent_avg = obj.get("latent_avg")
    out = LoadedCheckpoint("rosinality")
    for key in ("g_ema", "g"):
        if key in obj:
            cfg = generator_config(obj[key], **g_known)
            setattr(out, key, build_generator(obj[key], cfg, f"{path} [{key}]", latent_avg))
    if "d" in obj:
        cfg = discriminator_config(obj["d"], channel_multiplier=args.get("channel_multiplier"))
        out.d = build_discriminator(obj["d"], cfg, f"{path} [d]")
    out.extra = {k: v for k, v in obj.items() if k not in ("g_ema", "g", "d", "latent_avg", "args")}
    if obj.get("args") is not None:  # absent stays absent: a written Namespace breaks weights_only loads
        out.extra["args"] = args
    return out


def rosinality_dict(g_ema: Generator | None = None, g: Generator | None = None,
                    d: Discriminator | None = None, extra: dict | None = None) -> dict:
    """The dict rosinality's tools read (``g_ema``/``g``/``d`` and ``latent_avg``); ``args``
    only when ``extra`` holds non-empty ones."""
    out: dict = {}
    for key, G in (("g_ema", g_ema), ("g", g)):
        if G is not None:
            out[key] = {k: v for k, v in G.state_dict().items() if k != "w_avg"}
    if d is not None:
        out["d"] = d.state_dict()
    G = g_ema if g_ema is not None else g
    if G is not None and not torch.isnan(G.w_avg).any():
        out["latent_avg"] = G.w_avg.detach().clone()
    for k, v in (extra or {}).items():
        if k == "args" and not v:
            # An empty Namespace says nothing, yet makes torch.load(weights_only=True) fail.
            continue
        if k == "args" and isinstance(v, dict):
            v = argparse.Namespace(**v)
        out.setdefault(k, v)
    return out


def check_rosinality(g_ema: Generator | None = None, g: Generator | None = None,
                     d: Discriminator | None = None, allow_mbstd_change: bool = False,
                     where: str = "the rosinality file") -> list[str]:
    """What writing these networks as rosinality would change, as warning lines.

    Raises ``MbstdChangeError`` for a discriminator whose minibatch-stddev group
    is not rosinality's 4 unless ``allow_mbstd_change``: its logits would differ
    without any sign in the file. A ``conv_clamp`` is dropped with a warning
    only: outputs differ just where an activation exceeds it.
    """
    notes = []
    if d is not None and d.cfg.stddev_group != ROSINALITY_STDDEV_GROUP:
        group, fixed = d.cfg.stddev_group, ROSINALITY_STDDEV_GROUP
        if not allow_mbstd_change:
            raise MbstdChangeError(group, fixed, (
                f"the discriminator's minibatch-stddev group size is {group}; the rosinality format cannot "
                f"store it (its Discriminator always uses {fixed}), so {where} would compute other logits: "
                f"write our format (toonmix) instead, or allow the change (allow_mbstd_change=True)"))
        notes.append(f"minibatch-stddev group size changed from {group} to {fixed} in {where} "
                     f"(rosinality's format cannot store {group}): D's logits differ from the source's")
    clamps = sorted({m.cfg.conv_clamp for m in (g_ema, g, d) if m is not None and m.cfg.conv_clamp is not None})
    if clamps:
        notes.append(f"conv_clamp {', '.join(f'{c:g}' for c in clamps)} dropped in {where} (rosinality's "
                     "networks do not clamp): outputs differ wherever an activation exceeds it")
    return notes


# ----------------------------------------------------------------------------
# NVlabs

def _load_nvlabs(path) -> LoadedCheckpoint:
    data = load_nvlabs_pickle(path)
    out = LoadedCheckpoint("nvlabs")
    for key in ("G_ema", "G", "D"):
        if data.get(key) is not None and not isinstance(data[key], PersistentRecord):
            raise CheckpointError(f"{path} [{key}]: a {type(data[key]).__name__}, not an NVlabs network")
    try:
        for src, dst in (("G_ema", "g_ema"), ("G", "g")):
            if data.get(src) is not None:
                sd, cfg = nvlabs.import_generator(data[src], f"{path} [{src}]")
                setattr(out, dst, build_generator(sd, cfg, f"{path} [{src}]", fill_filters=True))
        if data.get("D") is not None:
            sd, cfg = nvlabs.import_discriminator(data["D"], f"{path} [D]")
            out.d = build_discriminator(sd, cfg, f"{path} [D]", fill_filters=True)
    except CheckpointError:
        raise
    except (AttributeError, IndexError, KeyError, RuntimeError, TypeError, ValueError) as e:  # odd tensors
        raise CheckpointError(f"{path}: malformed NVlabs network ({type(e).__name__}: {e})") from e
    if out.g_ema is None and out.g is None and out.d is None:
        raise CheckpointError(f"{path}: pickle holds none of G, G_ema, D (keys: {list(data)})")
    return out


# ----------------------------------------------------------------------------
# ours

def _load_native(obj: dict, path) -> LoadedCheckpoint:
    if obj.get("version") != NATIVE_VERSION:
        raise CheckpointError(f"{path}: format version {obj.get('version')} is not {NATIVE_VERSION}")
    out = LoadedCheckpoint("toonmix", extra=dict(obj.get("extra") or {}))
    try:
        for key in ("g_ema", "g"):
            if obj.get(key) is not None:
                cfg = GeneratorConfig(**obj["g_config"])
                setattr(out, key, build_generator(obj[key], cfg, f"{path} [{key}]"))
        if obj.get("d") is not None:
            out.d = build_discriminator(obj["d"], DiscriminatorConfig(**obj["d_config"]), f"{path} [d]")
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: malformed configuration ({e})") from e
    return out


def native_dict(g_ema: Generator | None = None, g: Generator | None = None,
                d: Discriminator | None = None, extra: dict | None = None) -> dict:
    G = g_ema if g_ema is not None else g
    return {"format": NATIVE_FORMAT, "version": NATIVE_VERSION,
            "g_config": G.cfg.to_dict() if G is not None else None,
            "d_config": d.cfg.to_dict() if d is not None else None,
            "g_ema": None if g_ema is None else g_ema.state_dict(),
            "g": None if g is None else g.state_dict(),
            "d": None if d is None else d.state_dict(),
            "extra": dict(extra or {})}


def save_checkpoint(path: str | Path, fmt: str, g_ema: Generator | None = None,
                    g: Generator | None = None, d: Discriminator | None = None,
                    extra: dict | None = None, allow_mbstd_change: bool = False) -> Path:
    """Writes ``fmt`` ("rosinality" or "toonmix") atomically: a temporary file in the
    same folder, then a rename, so an interrupted write leaves the old file intact.

    rosinality: a D whose minibatch-stddev group is not 4 raises
    ``MbstdChangeError`` unless ``allow_mbstd_change``; every allowed change
    (that group, a dropped ``conv_clamp``) is a ``FormatChangeWarning``.
    """
    if fmt == "rosinality":
        for note in check_rosinality(g_ema, g, d, allow_mbstd_change, where=str(path)):
            warnings.warn(note, FormatChangeWarning, stacklevel=2)
        obj = rosinality_dict(g_ema, g, d, extra)
    elif fmt == "toonmix":
        obj = native_dict(g_ema, g, d, extra)
    else:
        raise CheckpointError(f"cannot write format {fmt!r}: choose rosinality or toonmix "
                              "(NVlabs pickles carry NVlabs' source code and are read-only here)")
    if g_ema is None and g is None and d is None:
        raise CheckpointError("nothing to save: give at least one network")
    return torch_save_atomic(obj, path)
