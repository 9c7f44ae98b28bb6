"""A small two-domain face dataset drawn by code: photo-like faces and cartoon characters.

It lets the whole pipeline run end to end on a machine without downloads
(``make demo``). Photo-like faces have shaded skin, natural hair and eye
colours, a textured background and sensor noise. Cartoon faces are flat colours
with black outlines and large eyes; each character has fixed traits (hair
colour and cut, eye colour, face shape, an accessory) and varies per image in
position, size, expression and background shade, so a look-up table of
characters has something to learn. Everything is a function of (seed, index):
rerunning writes identical files.

Each image's face geometry (``Geometry``: centre and size of the face ellipse as
fractions of the image side) is the first thing drawn from its generator, so it
is known without drawing the image: ``write_demo_data`` writes it for every file
to ``labels.json``, and ``eval/probe.py`` measures with it whether a cartoon keeps
the photo's face position and size. Both domains share one placement rule (centre
x in [0.38, 0.62], y in [0.42, 0.62], width 0.58 +- 20 %, the face inside the
frame) so that a photo's geometry is a valid target for its cartoon.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SKIN = [(241, 194, 167), (224, 172, 140), (198, 134, 96), (141, 85, 54), (255, 219, 190)]
HAIR = [(30, 24, 20), (70, 45, 30), (120, 80, 40), (200, 160, 90), (90, 90, 90)]
IRIS = [(70, 45, 25), (60, 100, 150), (70, 110, 70), (40, 30, 25)]
VIVID = [(240, 90, 160), (80, 140, 240), (150, 90, 220), (60, 190, 120), (250, 150, 40), (200, 200, 215),
         (230, 60, 60), (40, 200, 220)]
SUPERSAMPLE = 4
"""Shapes are drawn at 4x and reduced with LANCZOS: antialiased edges at any size."""
CENTRE_X = (0.38, 0.62)
CENTRE_Y = (0.42, 0.62)
HALF_WIDTH = (0.23, 0.35)
"""Face ellipse half-width / side: 0.29 +- 20 %, wide enough to be measured at 32 px."""
MARGIN = 0.02
"""The face ellipse stays this far inside the frame (hair may be cut, the face never)."""
LABELS = "labels.json"


@dataclass(frozen=True)
class Geometry:
    """Where the face ellipse is, as fractions of the image side (the same at any size)."""

    cx: float
    cy: float
    width: float
    """Full width of the face ellipse (hair and ears excluded)."""
    height: float


def _place(rng: np.random.Generator, aspect: float) -> Geometry:
    half_w = rng.uniform(*HALF_WIDTH)
    half_h = half_w * aspect
    # The centre range shrinks for large faces so that the face stays inside the frame.
    cx = rng.uniform(max(CENTRE_X[0], half_w + MARGIN), min(CENTRE_X[1], 1 - half_w - MARGIN))
    cy = rng.uniform(max(CENTRE_Y[0], half_h + MARGIN), min(CENTRE_Y[1], 1 - half_h - MARGIN))
    return Geometry(float(cx), float(cy), float(2 * half_w), float(2 * half_h))


def photo_geometry(rng: np.random.Generator) -> Geometry:
    """The first draws of ``photo_face``: a fresh generator of the same seed gives its face's geometry."""
    return _place(rng, rng.uniform(1.2, 1.35))


def cartoon_geometry(t: Traits, rng: np.random.Generator) -> Geometry:
    """The first draws of ``cartoon_face`` (the character fixes the aspect)."""
    return _place(rng, t.aspect)


@dataclass(frozen=True)
class Traits:
    """What stays the same in every image of one cartoon character."""

    hair: tuple[int, int, int]
    eyes: tuple[int, int, int]
    skin: tuple[int, int, int]
    cut: int
    """Hair cut: 0 short cap, 1 long sides, 2 spiky bangs."""
    aspect: float
    """Face height / width."""
    accessory: int
    """0 none, 1 glasses, 2 hair clip, 3 cheek marks."""
    background: tuple[int, int, int]


def character_traits(seed: int, index: int) -> Traits:
    rng = np.random.default_rng([seed, 1, index])
    pick = lambda pal: tuple(int(v) for v in pal[rng.integers(len(pal))])  # noqa: E731
    bg = tuple(int(v) for v in rng.integers(150, 245, 3))
    skin = tuple(int(min(255, v + 15)) for v in SKIN[rng.integers(len(SKIN) - 1) if index % 2 else -1])
    return Traits(pick(VIVID), pick(VIVID), skin, int(rng.integers(3)), float(rng.uniform(1.0, 1.3)),
                  int(rng.integers(4)), bg)


def _canvas(size: int, color) -> tuple[Image.Image, ImageDraw.ImageDraw, int]:
    s = size * SUPERSAMPLE
    img = Image.new("RGB", (s, s), color)
    return img, ImageDraw.Draw(img), s


def _eyes(d: ImageDraw.ImageDraw, cx: float, cy: float, w: float, h: float, iris, outline, pupil=(10, 10, 10)) -> None:
    for ex in (cx - w * 1.25, cx + w * 1.25):
        d.ellipse([ex - w / 2, cy - h / 2, ex + w / 2, cy + h / 2], fill=(250, 250, 250), outline=outline,
                  width=max(1, int(w / 8)) if outline else 0)
        r = min(w, h) * 0.38
        d.ellipse([ex - r, cy - r, ex + r, cy + r], fill=iris)
        d.ellipse([ex - r / 2, cy - r / 2, ex + r / 2, cy + r / 2], fill=pupil)
        d.ellipse([ex - r / 2, cy - r * 0.9, ex, cy - r * 0.4], fill=(255, 255, 255))  # highlight


def cartoon_face(t: Traits, rng: np.random.Generator, size: int, geometry: Geometry | None = None) -> Image.Image:
    """One image of the character with traits ``t``: flat colours, black outlines, big eyes.
    ``geometry`` places the face there instead of where ``rng`` would (a stand-in cartoon of a photo)."""
    g = geometry or cartoon_geometry(t, rng)  # first: labels are drawn without the image
    shade = rng.uniform(0.85, 1.05)
    img, d, s = _canvas(size, tuple(int(min(255, c * shade)) for c in t.background))
    cx, cy, fw, fh = g.cx * s, g.cy * s, g.width * s / 2, g.height * s / 2
    ln = max(2, s // 60)
    if t.cut == 1:  # long hair behind the face
        d.rectangle([cx - fw * 1.25, cy - fh * 0.6, cx + fw * 1.25, cy + fh * 1.1], fill=t.hair, outline=(0, 0, 0), width=ln)
    d.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=t.skin, outline=(0, 0, 0), width=ln)
    top = [cx - fw * 1.1, cy - fh * 1.25, cx + fw * 1.1, cy - fh * 0.05]
    d.chord(top, 180, 360, fill=t.hair, outline=(0, 0, 0), width=ln)
    if t.cut == 2:  # spiky bangs
        for k in range(5):
            x = cx - fw + k * fw / 2
            d.polygon([(x - fw / 4, cy - fh * 0.6), (x + fw / 4, cy - fh * 0.6), (x, cy - fh * 0.2)], fill=t.hair)
    blink = rng.random() < 0.15
    eh = fw * (0.08 if blink else rng.uniform(0.42, 0.5))
    _eyes(d, cx, cy + fh * 0.05, fw * 0.5, eh, t.eyes, (0, 0, 0))
    mouth_open = rng.random() < 0.5
    m = [cx - fw * 0.18, cy + fh * 0.45, cx + fw * 0.18, cy + fh * (0.62 if mouth_open else 0.5)]
    d.chord(m, 0, 180, fill=(170, 40, 60) if mouth_open else t.skin, outline=(0, 0, 0), width=ln)
    if t.accessory == 1:
        for ex in (cx - fw * 0.625, cx + fw * 0.625):
            d.ellipse([ex - fw * 0.38, cy - fw * 0.3, ex + fw * 0.38, cy + fw * 0.4], outline=(20, 20, 20), width=ln * 2)
    elif t.accessory == 2:
        d.rectangle([cx + fw * 0.4, cy - fh * 0.75, cx + fw * 0.8, cy - fh * 0.6], fill=t.eyes, outline=(0, 0, 0), width=ln)
    elif t.accessory == 3:
        for ex in (cx - fw * 0.7, cx + fw * 0.7):
            d.ellipse([ex - fw * 0.15, cy + fh * 0.3, ex + fw * 0.15, cy + fh * 0.4], fill=(250, 150, 160))
    return img.resize((size, size), Image.Resampling.LANCZOS)


def photo_face(rng: np.random.Generator, size: int) -> Image.Image:
    """A photo-like face: shaded skin, natural colours, textured background, sensor noise."""
    g = photo_geometry(rng)  # first: labels are drawn without the image
    bg0, bg1 = rng.integers(40, 220, 3), rng.integers(40, 220, 3)
    img, d, s = _canvas(size, (0, 0, 0))
    ramp = np.linspace(0, 1, s)[:, None, None]
    back = (bg0 * (1 - ramp) + bg1 * ramp) * np.ones((1, s, 1))
    cx, cy, fw, fh = g.cx * s, g.cy * s, g.width * s / 2, g.height * s / 2
    skin = np.array(SKIN[rng.integers(len(SKIN))], float)
    hair = HAIR[rng.integers(len(HAIR))]
    d.ellipse([cx - fw * 1.15, cy - fh * 1.2, cx + fw * 1.15, cy + fh * 0.4], fill=hair)
    hair_mask = np.asarray(img.convert("L"), float)[..., None] > 0
    yy, xx = np.mgrid[0:s, 0:s]
    face = ((xx - cx) / fw) ** 2 + ((yy - cy) / fh) ** 2 <= 1
    light = np.array([rng.uniform(-0.6, 0.6), -0.5])  # a key light from above, left or right
    nx, ny = (xx - cx) / fw, (yy - cy) / fh
    lit = np.clip(0.72 + 0.35 * (nx * light[0] + ny * light[1]) - 0.25 * (nx ** 2 + ny ** 2), 0.3, 1.1)
    arr = np.where(hair_mask, np.asarray(img, float), back)
    arr = np.where(face[..., None], skin * lit[..., None], arr)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    _eyes(d, cx, cy - fh * 0.1, fw * 0.34, fw * 0.17, IRIS[rng.integers(len(IRIS))], None)
    for ex in (cx - fw * 0.42, cx + fw * 0.42):  # brows
        d.line([ex - fw * 0.2, cy - fh * 0.32, ex + fw * 0.2, cy - fh * 0.35], fill=hair, width=max(2, s // 70))
    d.line([cx, cy - fh * 0.05, cx - fw * 0.08, cy + fh * 0.25], fill=tuple(int(c * 0.75) for c in skin), width=max(2, s // 90))
    d.ellipse([cx - fw * 0.3, cy + fh * 0.42, cx + fw * 0.3, cy + fh * 0.55], fill=(170, 80, 80))
    img = img.filter(ImageFilter.GaussianBlur(SUPERSAMPLE * 0.6)).resize((size, size), Image.Resampling.LANCZOS)
    noisy = np.asarray(img, float) + rng.normal(0, 4.0, (size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


@dataclass
class DemoData:
    """How much of each domain to draw."""

    out: str
    """Output folder: photos/train, photos/test and characters/<name>/."""
    photos: int = 256
    """Photo-like faces for the source generator and encoder."""
    test_photos: int = 16
    """Held-out photo-like faces to cartoonize."""
    characters: int = 4
    """Cartoon characters."""
    per_character: int = 64
    """Images per character."""
    size: int = 64
    """Image side in pixels."""
    seed: int = 0
    """Everything drawn is a function of this seed and the image's index."""


Job = tuple[Path, Callable[[], Image.Image], dict]
"""(file, how to draw it, its label)."""


def _jobs(cfg: DemoData) -> list[Job]:
    root = Path(cfg.out)
    jobs: list[Job] = []
    for split, n, base in (("train", cfg.photos, 0), ("test", cfg.test_photos, 1_000_000)):
        for i in range(n):
            rng = lambda i=i, base=base: np.random.default_rng([cfg.seed, 2, base + i])  # noqa: E731
            jobs.append((root / "photos" / split / f"{i:05d}.png", lambda rng=rng: photo_face(rng(), cfg.size),
                         {"domain": "photo", **asdict(photo_geometry(rng()))}))
    for c in range(cfg.characters):
        t = character_traits(cfg.seed, c)
        for i in range(cfg.per_character):
            rng = lambda c=c, i=i: np.random.default_rng([cfg.seed, 3, c, i])  # noqa: E731
            jobs.append((root / "characters" / f"character{c}" / f"{i:05d}.png",
                         lambda t=t, rng=rng: cartoon_face(t, rng(), cfg.size),
                         {"domain": "character", "character": c, **asdict(cartoon_geometry(t, rng()))}))
    return jobs


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    tmp.replace(path)


def write_demo_data(cfg: DemoData, progress: Callable[[int, int], None] | None = None) -> dict:
    """Draws every image that is not on disk yet (an interrupted run resumes), writes
    labels.json (every file's geometry, computed without drawing) and returns a summary."""
    jobs = _jobs(cfg)
    root = Path(cfg.out)
    written = 0
    for k, (path, draw, _) in enumerate(jobs):
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.png")
            draw().save(tmp)
            tmp.replace(path)  # a file that exists is complete
            written += 1
        if progress:
            progress(k + 1, len(jobs))
    labels = {"units": "fractions of the image side; width/height: the face ellipse",
              "size": cfg.size, "seed": cfg.seed, "characters": [f"character{c}" for c in range(cfg.characters)],
              "images": {path.relative_to(root).as_posix(): label for path, _, label in jobs}}
    _write_json(root / LABELS, labels)
    summary = {**asdict(cfg), "images": len(jobs), "written": written}
    _write_json(root / "demo_data.json", summary)
    return summary


def read_labels(root: str | Path) -> dict:
    """``<root>/labels.json`` as written by ``write_demo_data``; FileNotFoundError names it when missing."""
    path = Path(root) / LABELS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no labels file (draw the data with launch.make_demo_data)")
    return json.loads(path.read_text())
