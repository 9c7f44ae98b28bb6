"""Face cropping and alignment on PIL images (numpy and PIL only).

``crop_webtoon_face`` cuts a square face crop around a detector box on a
webtoon page; ``align_ffhq`` is the FFHQ alignment (NVlabs ffhq-dataset
``recreate_aligned_images``) driven by five landmarks instead of 68. Inputs
that cannot become a sample raise ``datasets.errors.Rejected`` (reasons
``box_outside``, ``too_small``, ``aspect``, ``blank_border``, ``landmarks``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from datasets.errors import DataError, Rejected
from datasets.remote import read_bytes
from datasets.tables import table_rows

Box = tuple[float, float, float, float]

WHITE = (255, 255, 255)
# Landmark order of the five-point files (the usual detector order).
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")


# ---------------------------------------------------------------- webtoon crop


def square_box(box: Box, expand: float = 1.8, shift_down: float = 0.2) -> Box:
    """Square crop window (x1, y1, x2, y2), in float pixels, around a face box.

    side = expand * max(w, h); the centre is the box centre moved down by
    shift_down * h (the box height), because detector boxes on drawn faces sit
    high: the chin and neck are more useful than the space above the hair.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    side = expand * max(w, h)
    cx = (x1 + x2) / 2.0
    cy = (y1 + y2) / 2.0 + shift_down * h
    return (cx - side / 2.0, cy - side / 2.0, cx + side / 2.0, cy + side / 2.0)


def _round(v: float) -> int:
    # Half-up rounding: Python's round() goes to even, which would make the
    # pixel grid of a crop depend on the parity of a coordinate.
    return int(math.floor(v + 0.5))


def _check_box(box: Box, size: tuple[int, int], min_size: int, max_aspect: float) -> None:
    """Raises Rejected when the detector box itself breaks a rule."""
    if len(box) != 4 or not all(math.isfinite(float(v)) for v in box):
        raise Rejected("box_outside", f"box {box!r} is not four finite numbers")
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 <= x1 or y2 <= y1:
        raise Rejected("box_outside", f"degenerate box {box!r}")
    width, height = size
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        raise Rejected("box_outside", f"box {box!r} misses the {width}x{height} image")
    w, h = x2 - x1, y2 - y1
    aspect = max(w, h) / min(w, h)
    if aspect > max_aspect:
        raise Rejected("aspect", f"box aspect {aspect:.3f} > {max_aspect}")
    if min(w, h) < min_size:
        raise Rejected("too_small", f"box short edge {min(w, h):.1f} < {min_size}")


def _blank_mask(crop: np.ndarray, inside: tuple[int, int, int, int], tol: int | None) -> np.ndarray:
    """Boolean (H, W) mask of the blank pixels of a padded crop.

    Blank = outside the source image, plus (when ``tol`` is not None) every
    full row or column that touches the crop's edge, directly or through
    other such lines, and whose pixels are all within ``tol`` of white on
    every channel. Only edge runs count, so a white speech balloon or a
    white gutter crossing the middle of the face is not blank.
    """
    h, w = crop.shape[:2]
    mask = np.ones((h, w), dtype=bool)
    l, t, r, b = inside
    mask[t:b, l:r] = False
    if tol is None:
        return mask
    near = (crop >= 255 - tol).all(axis=2) | mask

    def run(lines: np.ndarray) -> int:
        # Length of the leading run of fully blank lines.
        return int(np.argmin(lines)) if not lines.all() else len(lines)

    rows, cols = near.all(axis=1), near.all(axis=0)
    top, bottom = run(rows), run(rows[::-1])
    left, right = run(cols), run(cols[::-1])
    mask[:top] = True
    mask[h - bottom:] = True
    mask[:, :left] = True
    mask[:, w - right:] = True
    return mask


def crop_webtoon_face(
    img: Image.Image, box: Box, *, expand: float = 1.8, shift_down: float = 0.2,
    min_size: int = 64, max_aspect: float = 1.3, max_blank: float = 0.075,
    blank_tol: int | None = 8,
) -> Image.Image:
    """Square RGB face crop of a webtoon page around a detector box.

    Rules, in order (each failure raises ``Rejected``):

    1. ``box_outside``: the box is not four finite numbers, is degenerate
       (x2 <= x1 or y2 <= y1) or does not intersect the image.
    2. ``aspect``: max(w, h) / min(w, h) > max_aspect.
    3. ``too_small``: min(w, h) < min_size (the box, before expansion).
    4. The window is ``square_box(box, expand, shift_down)``; its corner and
       side are rounded half-up to whole pixels (side = round(expand *
       max(w, h))). Parts outside the page are padded with white, the
       colour of a webtoon page, never clipped, so every crop is square.
    5. ``blank_border``: more than max_blank of the crop's pixels are blank,
       as defined by ``_blank_mask``: pixels outside the page, plus the
       rows/columns running in from the crop's edges that are all within
       blank_tol of white (page margins and panel gutters). blank_tol=None
       counts only the pixels outside the page.

    The public naver-webtoon-data download script only applies stored crop
    boxes with ``Image.crop`` (which pads with black); the expansion, shift
    and blank rules that produced those boxes are not published, so this
    follows the rules as stated above.
    """
    _check_box(box, img.size, min_size, max_aspect)
    sx1, sy1, _, _ = square_box(box, expand, shift_down)
    x1, y1, x2, y2 = (float(v) for v in box)
    side = _round(expand * max(x2 - x1, y2 - y1))
    left, top = _round(sx1), _round(sy1)
    width, height = img.size
    # Intersection of the window with the page, in page coordinates.
    il, it = max(left, 0), max(top, 0)
    ir, ib = min(left + side, width), min(top + side, height)
    out = Image.new("RGB", (side, side), WHITE)
    if ir > il and ib > it:
        part = img.crop((il, it, ir, ib)).convert("RGB")
        out.paste(part, (il - left, it - top))
    inside = (il - left, it - top, max(ir - left, il - left), max(ib - top, it - top))
    blank = _blank_mask(np.asarray(out), inside, blank_tol)
    frac = float(blank.mean())
    if frac > max_blank:
        raise Rejected("blank_border", f"{frac:.1%} of the crop is blank (> {max_blank:.1%})")
    return out


# ------------------------------------------------------------- FFHQ alignment


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """FFHQ crop quad (4, 2): top-left, bottom-left, bottom-right, top-right.

    ``landmarks`` is (5, 2): left eye, right eye, nose, left and right mouth
    corners. The eye centres and mouth corners stand in for the 68-point
    eye means and points 48/54; the nose only has to be finite.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (5, 2):
        raise Rejected("landmarks", f"expected (5, 2) landmarks, got {lm.shape}")
    if not np.isfinite(lm).all():
        raise Rejected("landmarks", "non-finite landmark")
    eye_left, eye_right, _, mouth_left, mouth_right = lm
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (mouth_left + mouth_right) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    if np.hypot(*eye_to_eye) < 1e-3:
        raise Rejected("landmarks", "the eyes coincide")
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    # x vanishes when the mouth sits where a mirrored, upside-down face would
    # put it; there is no orientation to take then.
    if np.hypot(*x) < 1e-3 * np.hypot(*eye_to_eye):
        raise Rejected("landmarks", "eyes and mouth give no orientation")
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def _fast_len(n: int) -> int:
    """Smallest n' >= n with no prime factor above 5: fast FFT sizes."""
    while True:
        m = n
        for f in (2, 3, 5):
            while m % f == 0:
                m //= f
        if m == 1:
            return n
        n += 1


def _gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of (H, W, C) over H and W, as scipy.ndimage.gaussian_filter
    with mode='reflect' and truncate=4 (the filter the FFHQ padding uses).

    Separable FFT convolution: the FFHQ sigma is 2% of the face size, tens of
    pixels at full resolution, too wide for a direct sum over taps.
    """
    radius = int(4.0 * sigma + 0.5)
    if radius < 1:
        return a
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    # Work on (C, H, W) and blur the last, contiguous axis twice with a
    # transpose between: FFTs along a strided axis are several times slower.
    b = np.moveaxis(a, 2, 0)
    for _ in range(2):
        n = b.shape[-1]
        # numpy 'symmetric' repeats the edge sample: scipy's 'reflect'.
        p = np.pad(b, ((0, 0), (0, 0), (radius, radius)), mode="symmetric")
        size = _fast_len(p.shape[-1] + 2 * radius)
        spec = np.fft.rfft(p, n=size, axis=-1) * np.fft.rfft(taps, n=size).astype(np.complex64)
        full = np.fft.irfft(spec, n=size, axis=-1)
        b = np.ascontiguousarray(full[..., 2 * radius : 2 * radius + n].swapaxes(1, 2), a.dtype)
    return np.moveaxis(b, 0, 2)


def _pad_blend(img: Image.Image, pad: np.ndarray, qsize: float) -> Image.Image:
    """Reflect-pads and fades the padding to a blurred, then median, colour
    (the FFHQ recipe), so that the padded area carries no sharp mirror copy."""
    a = np.pad(np.float32(img), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
    h, w, _ = a.shape
    y, x, _ = np.ogrid[:h, :w, :1]
    mask = np.maximum(
        1.0 - np.minimum(np.float32(x) / pad[0], np.float32(w - 1 - x) / pad[2]),
        1.0 - np.minimum(np.float32(y) / pad[1], np.float32(h - 1 - y) / pad[3]),
    )
    a += (_gaussian_blur(a, qsize * 0.02) - a) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    a += (np.median(a, axis=(0, 1)) - a) * np.clip(mask, 0.0, 1.0)
    return Image.fromarray(np.uint8(np.clip(np.rint(a), 0, 255)), "RGB")


def align_ffhq(
    img: Image.Image, landmarks: np.ndarray, *, output_size: int = 1024,
    transform_size: int = 4096, enable_padding: bool = True,
) -> Image.Image:
    """FFHQ-aligned RGB face of ``output_size`` pixels from five landmarks.

    Same steps as NVlabs ffhq-dataset ``recreate_aligned_images``: shrink by
    an integer factor when the face is much larger than the output, crop to
    the quad plus a border, reflect-pad with the blurred blend where the quad
    leaves the image, QUAD-transform to transform_size and LANCZOS-resize.
    Raises ``Rejected("landmarks")`` for bad landmarks (see ``ffhq_quad``).
    """
    quad = ffhq_quad(landmarks)
    qsize = float(np.hypot(*(quad[3] - quad[0])))  # = 2 * |x| in the NVlabs code
    img = img.convert("RGB")

    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        rsize = (int(np.rint(img.size[0] / shrink)), int(np.rint(img.size[1] / shrink)))
        img = img.resize(rsize, Image.Resampling.LANCZOS)
        quad /= shrink
        qsize /= shrink

    border = max(int(np.rint(qsize * 0.1)), 3)
    lo, hi = np.floor(quad.min(axis=0)).astype(int), np.ceil(quad.max(axis=0)).astype(int)
    crop = (max(lo[0] - border, 0), max(lo[1] - border, 0),
            min(hi[0] + border, img.size[0]), min(hi[1] + border, img.size[1]))
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= crop[0:2]

    lo, hi = np.floor(quad.min(axis=0)).astype(int), np.ceil(quad.max(axis=0)).astype(int)
    pad = np.array([max(-lo[0] + border, 0), max(-lo[1] + border, 0),
                    max(hi[0] - img.size[0] + border, 0), max(hi[1] - img.size[1] + border, 0)])
    if enable_padding and pad.max() > border - 4:
        # At least 1 (only a face under 2 px would need it): the fade divides by it.
        pad = np.maximum(pad, max(int(np.rint(qsize * 0.3)), 1))
        img = _pad_blend(img, pad, qsize)
        quad += pad[:2]

    img = img.transform((transform_size, transform_size), Image.Transform.QUAD,
                        (quad + 0.5).flatten(), Image.Resampling.BILINEAR)
    if output_size < transform_size:
        img = img.resize((output_size, output_size), Image.Resampling.LANCZOS)
    return img


# ------------------------------------------------------------- landmark files


def _parse_points(values: object, what: str) -> tuple[np.ndarray | None, str]:
    """(5, 2) float array from ten values, or (None, reason)."""
    try:
        pts = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None, f"{what}: non-numeric or ragged values"
    if pts.size != 10:
        return None, f"{what}: expected 10 numbers, got {pts.size}"
    if not np.isfinite(pts).all():
        return None, f"{what}: non-finite value"
    return pts.reshape(5, 2), ""


def _read_json(text: str) -> tuple[dict[str, np.ndarray], list[tuple[int, str]]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"landmark JSON does not parse: {e}") from e
    if not isinstance(data, dict):
        raise DataError("landmark JSON must be an object {filename: [[x, y] * 5]}")
    found: dict[str, np.ndarray] = {}
    bad: list[tuple[int, str]] = []
    # JSON has no useful line numbers: an entry's number is its 1-based
    # position in the object, and the reason names the key.
    for i, (name, value) in enumerate(data.items(), start=1):
        pts, why = _parse_points(value, repr(name))
        if pts is None:
            bad.append((i, why))
        else:
            found[name] = pts
    return found, bad


def _read_table(text: str) -> tuple[dict[str, np.ndarray], list[tuple[int, str]]]:
    found: dict[str, np.ndarray] = {}
    bad: list[tuple[int, str]] = []
    for lineno, fields in table_rows(text):
        if len(fields) != 11:
            bad.append((lineno, f"expected 11 fields, got {len(fields)}"))
            continue
        name = fields[0]
        pts, why = _parse_points(fields[1:], name)
        if pts is None:
            bad.append((lineno, why))
        elif name in found:
            bad.append((lineno, f"{name}: duplicate filename"))
        else:
            found[name] = pts
    return found, bad


def read_landmarks(path: str | Path) -> tuple[dict[str, np.ndarray], list[tuple[int, str]]]:
    """Reads five-point landmarks: {filename: (5, 2) array} and the bad rows.

    Two forms: CSV/TSV lines ``filename,x1,y1,...,x5,y5`` (tab-separated when
    the first line has a tab; optional header; blank and ``#`` lines skipped),
    or a JSON object ``{filename: [[x, y] * 5]}`` (a ``.json`` file or text
    starting with ``{``). Points are in ``LANDMARK_NAMES`` order.

    Malformed rows (wrong field count, non-numeric or non-finite values, a
    repeated filename) are skipped and returned as (line number, reason);
    for JSON the number is the entry's position. Only a file that cannot be
    read as a whole raises ``DataError``.
    """
    path = str(path)
    try:
        text = read_bytes(path).decode("utf-8-sig")  # local path or fsspec URL
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read landmark file {path}: {e}") from e
    if path.lower().endswith(".json") or text.lstrip().startswith("{"):
        return _read_json(text)
    return _read_table(text)
