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


VIDEO_FORMATS = ("mp4", "gif")


def save_video(frames: list[np.ndarray], stem: str | Path, fps: float = 10.0, fmt: str = "mp4") -> Path:
    """Writes uint8 [H, W, 3] ``frames`` as ``<stem>.mp4`` (H.264, yuv420p, through the ffmpeg
    that the ``imageio-ffmpeg`` wheel ships) or ``<stem>.gif``; returns the file written.

    MP4 falls back to GIF, with a warning, when imageio-ffmpeg is not installed. yuv420p needs
    even sides, so an odd side is padded by repeating the last row or column. A GIF keeps the
    timing but merges identical consecutive frames (PIL), so it can hold fewer frames."""
    if fmt not in VIDEO_FORMATS:
        raise ValueError(f"video format must be one of {VIDEO_FORMATS}, got {fmt!r}")
    if not frames:
        raise ValueError("no frames to write")
    first = frames[0]
    bad = [i for i, f in enumerate(frames) if f.dtype != np.uint8 or f.ndim != 3 or f.shape[-1] != 3
           or f.shape != first.shape]
    if bad:
        raise ValueError(f"video frames must all be uint8 [H, W, 3] of frame 0's shape {first.shape}; "
                         f"frame {bad[0]} is {frames[bad[0]].dtype} {frames[bad[0]].shape}")
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "mp4":
        try:
            import imageio_ffmpeg
        except ImportError:
            warnings.warn("imageio-ffmpeg is not installed: writing a GIF instead of an MP4 "
                          "(pip install imageio-ffmpeg)", stacklevel=2)
            fmt = "gif"
    path = stem.with_name(f"{stem.name}.{fmt}")  # "photo.v1" keeps its dot: photo.v1.mp4
    tmp = path.with_name(f".{path.name}.tmp")  # a killed write leaves no half file under the real name
    try:
        if fmt == "gif":
            pics = [Image.fromarray(f) for f in frames]
            pics[0].save(tmp, format="GIF", save_all=True, append_images=pics[1:], duration=round(1000 / fps),
                         loop=0)
        else:
            h, w = first.shape[:2]
            pad = ((0, h % 2), (0, w % 2), (0, 0))
            writer = imageio_ffmpeg.write_frames(str(tmp), (w + w % 2, h + h % 2), fps=fps, codec="libx264",
                                                 pix_fmt_out="yuv420p", macro_block_size=1, quality=None,
                                                 output_params=["-crf", "18", "-f", "mp4"])
            writer.send(None)
            try:
                for f in frames:
                    writer.send(np.ascontiguousarray(np.pad(f, pad, mode="edge")))
            finally:
                writer.close()
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
