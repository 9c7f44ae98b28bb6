"""FID and KID between two image sources, on every rank, with cached reference statistics.

Protocols (NVIDIA's names): ``fid50k_full`` compares every real image with
50k generated ones; ``fid10k`` 10k with 10k; ``custom`` takes the counts given.
Reference statistics are cached under a key of the dataset's identity, the
detector's SHA-256, the preprocessing and the covariance normalisation, as
``.npz`` files with ``mu`` and ``sigma`` that pytorch-fid and clean-fid read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .features import Source, extract
from .frechet import FeatureStats, feature_stats, frechet_distance, kid, kid_spread_undefined, load_npz

PROTOCOLS: dict[str, tuple[int | None, int | None]] = {
    "fid50k_full": (50_000, None),
    "fid10k": (10_000, 10_000),
}
"""name -> (generated images, real images: None for all)."""


@dataclass
class MetricConfig:
    """How FID/KID are computed."""

    preprocess: str = "tf"
    """Resize before the detector: tf (TF1 bilinear: NVIDIA, TF, torch-fidelity), clean (PIL bicubic:
    clean-fid), torch-bilinear (pytorch-fid)."""
    ddof: int = 0
    """Covariance 1/(N - ddof): 0 as NVIDIA's fid50k_full, 1 as pytorch-fid, clean-fid and torch-fidelity."""
    batch: int = 64
    """Images per detector batch on each rank."""
    kid: bool = False
    """Also compute KID (needs the features of both sides, not just statistics)."""
    kid_subsets: int = 100
    """KID subsets."""
    kid_subset_size: int = 1000
    """Images per KID subset (capped at the smaller side; covering both sides leaves no spread)."""
    kid_seed: int = 0
    """Seeds the KID subsets."""


@dataclass
class Side:
    """One side of a comparison: its statistics, and its features when KID needs them."""

    stats: FeatureStats
    features: np.ndarray | None
    origin: str
    """"extracted", "cache" or "npz"."""


def cache_key(identity: dict, detector_sha256: str, cfg: MetricConfig) -> str:
    blob = json.dumps({"data": identity, "detector": detector_sha256, "preprocess": cfg.preprocess,
                       "ddof": cfg.ddof}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _load_cached(path: Path, need_features: bool) -> Side | None:
    try:
        stats, _ = load_npz(path)
        feats = np.load(path.with_suffix(".features.npy")) if need_features else None
    except (ValueError, OSError):
        return None  # absent or damaged: recomputed and rewritten
    return Side(stats, feats, "cache")


def _save_cached(path: Path, side: Side, identity: dict, detector_sha256: str, cfg: MetricConfig) -> None:
    if side.features is not None:
        tmp = path.with_name(f".{path.name}.features.tmp.npy")
        np.save(tmp, side.features)
        tmp.replace(path.with_suffix(".features.npy"))
    side.stats.save_npz(path, identity=json.dumps(identity, sort_keys=True), detector_sha256=detector_sha256,
                        preprocess=cfg.preprocess)


def measure(source: Source, detector, dist, cfg: MetricConfig, detector_sha256: str,
            cache_dir: str | Path | None = None, desc: str = "features") -> Side | None:
    """Statistics (and features for KID) of ``source`` on the main process; None on the others.

    With ``cache_dir``, the main process looks the source up first; the answer is
    broadcast so that either every rank extracts or none does.
    """
    identity = source.identity()
    path = Path(cache_dir) / f"{identity['kind']}-{cache_key(identity, detector_sha256, cfg)}.npz" \
        if cache_dir else None
    hit = _load_cached(path, cfg.kid) if (path and dist.is_main) else None
    if dist.broadcast_object(hit is not None):
        return hit
    feats = extract(source, detector, dist, cfg.batch, desc=desc)
    if not dist.is_main:
        return None
    side = Side(feature_stats(feats, cfg.ddof), feats if cfg.kid else None, "extracted")
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        _save_cached(path, side, identity, detector_sha256, cfg)
    return side


def from_npz(path: str | Path, cfg: MetricConfig) -> Side:
    """A side given as precomputed statistics (no features, so no KID)."""
    stats, _ = load_npz(path)
    if cfg.kid:
        raise ValueError(f"{path}: precomputed statistics have no features; KID needs images")
    return Side(stats, None, "npz")


def compare(real: Side, fake: Side, cfg: MetricConfig) -> dict[str, float | int | str | None]:
    """FID (and KID mean/std) of ``fake`` against ``real``.

    ``kid_std`` is None where the spread over subsets is undefined (every subset held all
    images, or there is one subset); ``kid_std_note`` then says why.
    """
    if real.stats.ddof != fake.stats.ddof and real.origin != "npz" and fake.origin != "npz":
        raise ValueError("both sides must use the same covariance normalisation")
    out = {"fid": frechet_distance(real.stats, fake.stats), "n_real": real.stats.n, "n_fake": fake.stats.n}
    if cfg.kid:
        out["kid"], out["kid_std"] = kid(real.features, fake.features, cfg.kid_subsets, cfg.kid_subset_size,
                                         cfg.kid_seed)
        if out["kid_std"] is None:
            out["kid_std_note"] = kid_spread_undefined(len(real.features), len(fake.features), cfg.kid_subsets,
                                                       cfg.kid_subset_size)
    return out
