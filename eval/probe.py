"""Probes that measure the demo's stages with what its drawn data knows about every image.

The demo's data (``datasets/synthetic.py``) is drawn by code, so each file's
character and face geometry are known (``labels.json``). Two small probes,
trained in seconds on those images at ``PROBE_SIZE`` px, turn that into
measurements of generated images:

- ``CharacterProbe``: which character (or "photo") an image shows, by the mean
  distance to its k nearest training images of each class over coarse colour
  and layout features; "none" when even the nearest class is farther than
  ``RADIUS_SCALE`` times that class's calibration radius (the 99th percentile of
  held-out same-class distances), or when its colours are spread like noise.
  "Photo" means nearer the photos than any character, not "a face": smooth
  colour blobs land there too, so it separates characters from the rest only.
- ``GeometryProbe``: ridge regression from an 8 px grey image and 16 px
  foreground profiles to the face centre and width (fractions of the side).

Images are uint8 [N, H, W, 3] (PNG files, or ``datasets.imageio.to_uint8`` of a
generator's output); any other side is resized to ``PROBE_SIZE`` first.
``THRESHOLDS`` says what a working demo scores; ``judge`` applies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from datasets.imageio import open_image

PROBE_SIZE = 32
"""The demo's resolution: every image is measured at this side."""
NEIGHBOURS = 5
RADIUS_SCALE = 2.0
"""Generated images are softer than drawn ones: accept up to twice the farthest real distance."""
ENTROPY_MARGIN = 0.5
"""Nats of colour entropy above any training image's that mark an image as noise."""
PHOTO = "photo"
NONE = -1
GEOMETRY = ("cx", "cy", "width")

# Every check the demo's report marks pass or fail: dotted key in probe.json -> (relation, bound, what).
# Bounds were set on the drawn images and on degraded copies of them (blur, noise); see docs/demo.md.
THRESHOLDS: dict[str, tuple[str, float, str]] = {
    "probe.character_accuracy": (">=", 0.95, "probe recognises held-out drawn characters"),
    "probe.photos_as_character": ("<=", 0.05, "probe takes drawn photos for a character"),
    "probe.noise_as_character": ("<=", 0.0, "probe takes noise or blobs for a character"),
    "probe.geometry.character.centre_mae_px": ("<=", 1.0, "probe's face-centre error on held-out characters"),
    "target_g.character_share": (">=", 0.8, "fine-tuned G samples recognised as a character"),
    "target_g.coverage": (">=", 0.5, "rarest character's share / fair share (mode coverage)"),
    "source_g.character_share": ("<=", 0.2, "source G samples recognised as a character"),
    "cartoons.cdsm.requested_share": (">=", 0.8, "CDSM cartoons recognised as the requested character"),
    "cartoons.cdsm_minus_wplus_requested_share": (">=", 0.0, "CDSM at least as recognisable as W+ mixing"),
    "cartoons.cdsm.centre_mae_px": ("<=", 1.5, "CDSM face centre vs the photo's, px at 32 px"),
    "cartoons.cdsm.centre_gain": (">=", 2.0, "CDSM: centre error of shuffled pairs / of true pairs"),
}


def load_images(files: list[Path], size: int = PROBE_SIZE) -> np.ndarray:
    """uint8 [N, size, size, 3], resized as launch.make_shards resizes (LANCZOS)."""
    out = []
    for f in files:
        with open_image(f) as im:  # a header declaring too many pixels is refused before decoding
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
            out.append(np.asarray(im))
    return np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)


def _unit(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 [N, PROBE_SIZE, PROBE_SIZE, 3] in [0, 1]."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 [N, H, W, 3] images, got {images.dtype} {images.shape}")
    if images.shape[1:3] != (PROBE_SIZE, PROBE_SIZE):
        images = np.stack([np.asarray(Image.fromarray(im).resize((PROBE_SIZE, PROBE_SIZE), Image.Resampling.LANCZOS))
                           for im in images])
    return images.astype(np.float32) / 255


def _pool(x: np.ndarray, side: int) -> np.ndarray:
    n, s = x.shape[0], x.shape[1]
    return x.reshape(n, side, s // side, side, s // side, -1).mean((2, 4))


def _histogram(x: np.ndarray, bins: int = 4) -> np.ndarray:
    """Joint RGB histogram with trilinear votes (a shade near a bin edge does not flip bins), [N, bins^3]."""
    n = len(x)
    v = x.reshape(n, -1, 3) * (bins - 1)
    lo = np.clip(np.floor(v), 0, bins - 2).astype(np.int64)
    frac = v - lo
    weights = [(1 - frac[..., ch], frac[..., ch]) for ch in range(3)]
    base = lo @ np.array([bins * bins, bins, 1]) + np.arange(n)[:, None] * bins ** 3
    hist = np.zeros(n * bins ** 3)
    for r, g, b in np.ndindex(2, 2, 2):
        w = weights[0][r] * weights[1][g] * weights[2][b]
        hist += np.bincount((base + (r * bins * bins + g * bins + b)).ravel(), w.ravel(), minlength=len(hist))
    return hist.reshape(n, -1) / v.shape[1]


def _entropy(hist: np.ndarray) -> np.ndarray:
    return -(hist * np.log(hist + 1e-12)).sum(1)


def _character_groups(x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """(feature groups, colour entropy). Groups: colours (position-free: hair, eyes, skin,
    background) and an 8 px thumbnail (where they are)."""
    hist = _histogram(x)
    return [np.sqrt(hist), _pool(x, 8).reshape(len(x), -1)], _entropy(hist)


@dataclass
class CharacterProbe:
    """k-nearest-neighbour classifier over characters (and photos) with a rejection rule."""

    classes: list[str]
    centre: list[np.ndarray]
    scale: list[np.ndarray]
    refs: np.ndarray
    ref_labels: np.ndarray
    radius: np.ndarray
    entropy_max: float

    def embed(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(embedding [N, F], colour entropy [N])."""
        groups, entropy = _character_groups(_unit(images))
        # Each group standardised and weighted alike, however many features it has.
        z = [(g - c) / s / np.sqrt(g.shape[1]) for g, c, s in zip(groups, self.centre, self.scale)]
        return np.concatenate(z, 1), entropy

    def distances(self, q: np.ndarray) -> np.ndarray:
        """[N, classes]: mean distance of embeddings ``q`` to each class's k nearest training images."""
        d2 = (q ** 2).sum(1)[:, None] + (self.refs ** 2).sum(1)[None] - 2 * q @ self.refs.T
        d = np.sqrt(np.maximum(d2, 0))
        return np.stack([np.sort(d[:, self.ref_labels == c], axis=1)[:, :NEIGHBOURS].mean(1)
                         for c in range(len(self.classes))], 1)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class index per image, or NONE."""
        if len(images) == 0:
            return np.zeros(0, np.int64)
        q, entropy = self.embed(images)
        d = self.distances(q)
        best = d.argmin(1)
        far = d[np.arange(len(d)), best] > RADIUS_SCALE * self.radius[best]
        noisy = entropy > self.entropy_max + ENTROPY_MARGIN
        return np.where(far | noisy, NONE, best)


def _split(labels: np.ndarray, classes: list[str], holdout: float,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices, ``holdout`` of each class held out, at least one of each."""
    train, held = [], []
    for c, name in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < 2:
            raise ValueError(f"{name}: the probe needs at least 2 images (one held out), got {len(idx)}")
        k = min(len(idx) - 1, max(1, round(len(idx) * holdout)))
        train.append(idx[k:])
        held.append(idx[:k])
    return np.concatenate(train), np.concatenate(held)


def fit_character_probe(images: np.ndarray, labels: np.ndarray, names: list[str], photos: np.ndarray | None = None,
                        seed: int = 0, holdout: float = 0.25) -> tuple[CharacterProbe, dict]:
    """Trains on all but ``holdout`` of each class and calibrates the radii on the rest; returns
    (probe, its accuracy on those held-out images). ``photos`` (optional) become the class "photo"."""
    classes = list(names) + ([PHOTO] if photos is not None and len(photos) else [])
    x = images if len(classes) == len(names) else np.concatenate([images, photos])
    y = np.concatenate([labels, np.full(len(x) - len(images), len(names))]).astype(np.int64)
    train, held = _split(y, classes, holdout, np.random.default_rng(seed))
    groups, entropy = _character_groups(_unit(x[train]))
    probe = CharacterProbe(classes, [g.mean(0) for g in groups], [g.std(0) + 1e-2 for g in groups],
                           np.zeros(0), y[train], np.ones(len(classes)), float(entropy.max()))
    probe.refs = probe.embed(x[train])[0]
    own = probe.distances(probe.embed(x[held])[0])[np.arange(len(held)), y[held]]
    probe.radius = np.array([np.quantile(own[y[held] == c], 0.99) for c in range(len(classes))])
    pred, truth = probe.predict(x[held]), y[held]
    is_char = truth < len(names)
    report = {"character_accuracy": float((pred[is_char] == truth[is_char]).mean()),
              "train_images": int(len(train)), "held_out_images": int(len(held)),
              "radius": {c: float(r) for c, r in zip(classes, probe.radius)}}
    if not is_char.all():
        report["held_out_photos_as_photo"] = float((pred[~is_char] == len(names)).mean())
    return probe, report


def shares(probe: CharacterProbe, pred: np.ndarray) -> dict:
    """How a set of images was recognised: share per class, of any character, of none."""
    n = max(1, len(pred))
    chars = [c for c in probe.classes if c != PHOTO]
    per = {c: float((pred == i).sum() / n) for i, c in enumerate(chars)}
    out = {"images": int(len(pred)), "character_share": float(sum(per.values())), "per_character": per,
           "none_share": float((pred == NONE).sum() / n)}
    if PHOTO in probe.classes:
        out["photo_share"] = float((pred == probe.classes.index(PHOTO)).sum() / n)
    # Mode coverage: the rarest character's share of the recognised ones, over its fair share 1/C.
    total = sum(per.values())
    out["coverage"] = float(min(per.values()) / total * len(per)) if total else 0.0
    return out


def geometry_features(images: np.ndarray) -> np.ndarray:
    x = _unit(images)
    small = _pool(x, 16)
    # Foreground: distance from the border's median colour; its normalised column/row profiles
    # have the face's centre as a linear function (their first moments), its mass grows with size.
    ring = np.concatenate([small[:, 0], small[:, -1], small[:, :, 0], small[:, :, -1]], 1)
    fg = np.sqrt(((small - np.median(ring, 1)[:, None, None]) ** 2).sum(-1))
    col, row = fg.sum(1), fg.sum(2)
    mass = fg.sum((1, 2))[:, None] + 1e-6
    grey = _pool(small, 8).mean(-1).reshape(len(x), -1)  # 8 px: as exact as 16 px, 4x fewer unknowns
    return np.concatenate([grey, col / mass, row / mass, mass / 256], 1)


@dataclass
class GeometryProbe:
    """Ridge regression from ``geometry_features`` to (cx, cy, width), fractions of the side."""

    centre: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    offset: np.ndarray
    alpha: float

    def predict(self, images: np.ndarray) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, len(GEOMETRY)))
        return (geometry_features(images) - self.centre) / self.scale @ self.weights + self.offset


ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def _ridge(z: np.ndarray, y: np.ndarray, alphas: tuple[float, ...] = ALPHAS) -> tuple[list[np.ndarray], np.ndarray]:
    """Ridge weights for each strength in ``alphas``, and the offset. Plain solves: an
    eigendecomposition is 100x slower when other processes share the cores (BLAS threads wait)."""
    gram, zy = z.T @ z, z.T @ (y - y.mean(0))
    eye = np.eye(len(gram))
    return [np.linalg.solve(gram + a * eye, zy) for a in alphas], y.mean(0)


def _pick_alpha(z: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> float:
    """The strength in ALPHAS with the least 5-fold cross-validated error on the training images."""
    folds = rng.permutation(len(z)) % min(5, len(z))
    err = np.zeros(len(ALPHAS))
    for f in np.unique(folds):
        ws, b = _ridge(z[folds != f], y[folds != f])
        err += [np.abs(z[folds == f] @ w + b - y[folds == f]).sum() for w in ws]
    return ALPHAS[int(err.argmin())]


def fit_geometry_probe(images: np.ndarray, targets: np.ndarray, seed: int = 0,
                       holdout: float = 0.25) -> tuple[GeometryProbe, dict]:
    """Trains on all but ``holdout`` of the images; returns (probe, its held-out errors)."""
    rng = np.random.default_rng(seed)
    train, held = _split(np.zeros(len(images)), ["geometry probe"], holdout, rng)
    feats = geometry_features(images[train])
    centre, scale = feats.mean(0), feats.std(0) + 1e-6
    z = (feats - centre) / scale
    alpha = _pick_alpha(z, targets[train], rng) if len(train) > 2 else 1.0
    ws, offset = _ridge(z, targets[train], (alpha,))
    probe = GeometryProbe(centre, scale, ws[0], offset, alpha)
    return probe, {**agreement(probe.predict(images[held]), targets[held]), "alpha": alpha,
                   "train_images": int(len(train)), "held_out_images": int(len(held))}


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    # No spread in either: no evidence that one follows the other (0, not NaN, so it can be judged).
    if len(a) < 2 or a.std() < 1e-9 or b.std() < 1e-9:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def agreement(pred: np.ndarray, true: np.ndarray) -> dict:
    """Errors in pixels at PROBE_SIZE, correlations, and the centre error of shuffled pairs
    (what a method that ignored the photo would score): ``centre_gain`` = shuffled / true."""
    px = np.abs(pred - true) * PROBE_SIZE
    centre = np.hypot(*(pred[:, :2] - true[:, :2]).T) * PROBE_SIZE
    out = {f"{k}_mae_px": float(px[:, i].mean()) for i, k in enumerate(GEOMETRY)}
    out.update({f"{k}_corr": _corr(pred[:, i], true[:, i]) for i, k in enumerate(GEOMETRY)})
    cross = np.hypot(pred[None, :, 0] - true[:, None, 0], pred[None, :, 1] - true[:, None, 1]) * PROBE_SIZE
    n = len(pred)
    shuffled = float((cross.sum() - np.trace(cross)) / (n * (n - 1))) if n > 1 else 0.0
    out.update({"centre_mae_px": float(centre.mean()), "shuffled_centre_mae_px": shuffled,
                "centre_gain": shuffled / max(float(centre.mean()), 1e-3)})
    return out


def sanity_images(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Images no drawn class looks like: uniform noise and smooth random colour blobs."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, 256, (n, PROBE_SIZE, PROBE_SIZE, 3), generator=g, dtype=torch.uint8)
    low = torch.rand(n, 3, 4, 4, generator=g)
    blobs = F.interpolate(low, size=(PROBE_SIZE, PROBE_SIZE), mode="bicubic", align_corners=False)
    blobs = (blobs.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    return {"noise": noise.numpy(), "blobs": blobs.numpy()}


def lookup(metrics: dict, key: str):
    for part in key.split("."):
        if not isinstance(metrics, dict) or part not in metrics:
            return None
        metrics = metrics[part]
    return metrics


def judge(metrics: dict) -> list[dict]:
    """Each THRESHOLDS check with its value and verdict (passed None when the value is missing)."""
    out = []
    for key, (op, bound, what) in THRESHOLDS.items():
        v = lookup(metrics, key)
        ok = None if not isinstance(v, (int, float)) else bool(v >= bound if op == ">=" else v <= bound)
        out.append({"key": key, "what": what, "op": op, "bound": bound, "value": v, "passed": ok})
    return out
