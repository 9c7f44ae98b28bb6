"""Image files on disk: which files count as images, and generator output written as
PNGs and grids (quantised as NVlabs and FID do). Every layer takes these from here."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

#: File suffixes (lower case) read as images from folders.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


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
