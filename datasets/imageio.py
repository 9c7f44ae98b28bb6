"""Image files on disk: which files count as images, opening one without decoding a bomb,
and generator output written as PNGs and grids (quantised as NVlabs and FID do). Every
layer takes these from here."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

#: File suffixes (lower case) read as images from folders.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

MAX_PIXELS = 8192 * 8192
"""Largest image (width x height) that commands reading image folders decode: 67 MP.

They resize every image to at most 1024 px, so this is far more than they need, and
still takes a 48-50 MP phone photo (8000 x 6000); decoded as RGBA it is 268 MB. A file
whose header declares more is refused before a pixel is decoded: a few-KB PNG can
declare 30000 x 30000 (3.6 GB decoded), and PIL alone only warns up to 179 MP.
``launch.make_shards`` has its own limit (``--max-pixels``) for tall webtoon strips."""


class ImageTooLarge(ValueError):
    """An image file whose header declares more pixels than allowed (nothing was decoded)."""


def open_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Opens an image file lazily (header only), refusing more than ``max_pixels`` with ImageTooLarge.

    Use it as ``Image.open``: the caller loads, converts and closes the image.
    """
    try:
        with warnings.catch_warnings():  # PIL's own bomb warning: ours below is the decision
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as e:  # over PIL's hard limit (2 x its warning limit)
        raise ImageTooLarge(f"too many pixels: {e}") from None
    w, h = img.size
    if w * h > max_pixels:
        img.close()
        raise ImageTooLarge(f"too many pixels: {w}x{h} is over {max_pixels} (a decompression bomb?); "
                            "not decoded")
    return img


def image_files(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` (or directly in it), sorted; raises FileNotFoundError
    when ``folder`` is not a directory."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    found = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3], quantised as NVlabs and FID do:
    ``(x * 127.5 + 128).clamp(0, 255)``, truncated."""
    x = (img.detach().float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def grid(images: np.ndarray, nrow: int | None = None) -> np.ndarray:
    """uint8 [N, H, W, C] -> one [rows * H, nrow * W, C] mosaic, row-major, black padding."""
    n, h, w, c = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    out = np.zeros((rows * h, nrow * w, c), dtype=images.dtype)
    for i, im in enumerate(images):
        r, col = divmod(i, nrow)
        out[r * h:(r + 1) * h, col * w:(col + 1) * w] = im
    return out


def save_png(array: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path
