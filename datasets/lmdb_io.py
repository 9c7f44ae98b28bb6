"""rosinality ``prepare_data.py`` LMDBs: reading (to move datasets over) and writing.

Layout: key ``b"length"`` -> the number of images as text; key
``f"{size}-{str(i).zfill(5)}"`` -> JPEG bytes (quality 100) of image i resized
to size x size with Lanczos. Writing exists so the tests and the data
benchmark can build one exactly as that script does.
"""

from __future__ import annotations

import io
from typing import Iterable

from PIL import Image

from .errors import DataError


def open_lmdb(path: str, write: bool = False, map_size: int = 1 << 40):
    """Opens an LMDB folder read-only (lock-free, as training readers do) or for writing."""
    try:
        import lmdb  # noqa: PLC0415 - optional for everything but this format
    except ImportError as e:
        raise DataError("reading rosinality LMDBs needs the 'lmdb' package (pip install lmdb)") from e
    if "://" in str(path):
        raise DataError(f"LMDB must be a local folder, got {path!r}")
    try:
        if write:
            return lmdb.open(str(path), map_size=map_size, readahead=False)
        return lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False,
                         max_readers=64)
    except lmdb.Error as e:
        raise DataError(f"cannot open LMDB {path!r}: {e}") from None


def write_rosinality_lmdb(path: str, images: Iterable[Image.Image], sizes: Iterable[int],
                          quality: int = 100) -> int:
    """Writes images the way ``prepare_data.py`` does; returns the count."""
    sizes = list(sizes)
    env = open_lmdb(path, write=True)
    n = 0
    try:
        with env.begin(write=True) as txn:
            for i, img in enumerate(images):
                for size in sizes:
                    buf = io.BytesIO()
                    img.convert("RGB").resize((size, size), Image.Resampling.LANCZOS).save(
                        buf, format="jpeg", quality=quality)
                    txn.put(f"{size}-{str(i).zfill(5)}".encode("utf-8"), buf.getvalue())
                n = i + 1
            txn.put(b"length", str(n).encode("utf-8"))
    finally:
        env.close()
    return n
