"""Raw material made in the tests: face-like images and every kind of bad input."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def face(seed: int, size: int = 96, bg=(255, 255, 255)) -> Image.Image:
    """A distinct, deterministic cartoon-ish face (ellipse, eyes, mouth) on ``bg``."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    skin = tuple(int(v) for v in rng.integers(120, 250, 3))
    m = size // 8
    d.ellipse([m, m, size - m, size - m], fill=skin, outline=(0, 0, 0))
    for cx in (size * 3 // 8, size * 5 // 8):
        r = max(2, size // 16)
        d.ellipse([cx - r, size * 3 // 8 - r, cx + r, size * 3 // 8 + r], fill=tuple(int(v) for v in rng.integers(0, 90, 3)))
    d.line([size * 3 // 8, size * 11 // 16, size * 5 // 8, size * 11 // 16], fill=(150, 30, 30), width=max(1, size // 32))
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(img: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def odd_modes(size: int = 80) -> dict[str, bytes]:
    """Readable images in the modes people's folders contain, as file bytes."""
    base = face(101, size)
    rgba = base.convert("RGBA")
    a = np.asarray(rgba).copy()
    a[: size // 4, :, 3] = 0  # a transparent band at the top: must come out white
    g16 = np.full((size, size), 32768, dtype=np.uint16)
    g16[:, : size // 2] = 65535
    out = {
        "gray.png": png_bytes(base.convert("L")),
        "palette.png": png_bytes(base.convert("P")),
        "rgba.png": png_bytes(Image.fromarray(a, "RGBA")),
        "gray16.png": png_bytes(Image.fromarray(g16)),
    }
    buf = io.BytesIO()
    base.convert("CMYK").save(buf, format="JPEG", quality=95)
    out["cmyk.jpg"] = buf.getvalue()
    return out


def bad_files(size: int = 80) -> dict[str, tuple[bytes, str]]:
    """Unusable inputs -> (bytes, the reason the manifest must give)."""
    good_png, good_jpg = png_bytes(face(202, size)), jpeg_bytes(face(203, size))
    return {
        "empty.png": (b"", "empty"),
        "notes.txt": (b"not an image at all\n", "not_image"),
        "fake.jpg": (b"\x00\x01garbage" * 20, "not_image"),
        "truncated.png": (good_png[: len(good_png) // 2], "corrupt"),
        "truncated.jpg": (good_jpg[: len(good_jpg) // 2], "corrupt"),
        "tiny.png": (png_bytes(face(204, 32)), "too_small"),
    }


def double(img: Image.Image, size: int) -> Image.Image:
    """Upscaler hook for the tests: nearest-neighbour to ``size`` with a red marker pixel."""
    out = img.resize((size, size), Image.Resampling.NEAREST)
    out.putpixel((0, 0), (255, 0, 0))
    return out


def crash_on_33px(img: Image.Image, size: int) -> Image.Image:
    """Upscaler hook that kills its process on 33-pixel inputs, as a decoder segfault would."""
    if img.width == 33:
        import os

        os._exit(3)
    return img.resize((size, size), Image.Resampling.BICUBIC)


def face_shards(root: Path, n: int, size: int, shard_samples: int = 16) -> str:
    """A folder of ``n`` distinct faces written as ``size`` px training shards; returns the shard folder."""
    from datasets.process import WriterConfig
    from datasets.shards import write_shards
    from datasets.sources import folder_items

    for j in range(n):
        face(5000 + j, max(size, 48)).save(write(root / "raw" / f"{j:04d}.png", b""))
    out = str(root / "shards")
    write_shards(folder_items(str(root / "raw"), "none"),
                 WriterConfig(out=out, image_size=size, workers=0, min_size=16, shard_samples=shard_samples),
                 progress=False, log=lambda _: None)
    return out
