"""Turning one ``Item`` into sample bytes, in a pool of processes that survives crashes.

Every failure of one input becomes a rejection record with a reason, never an
exception that stops the run: ``Rejected`` from the checks, any other error
from a decoder, a zip, an LMDB or an upscaler hook (``failed``), and a worker
process that dies outright (``crashed``: out of memory, a decoder segfault),
which is found by re-running the in-flight items one at a time.
"""

from __future__ import annotations

import multiprocessing
import zipfile
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import IO, Iterable, Iterator

import numpy as np

from . import images
from .errors import DataError, Rejected
from .faces import align_ffhq, crop_webtoon_face
from .remote import fs_and_path, open_url
from .sources import Item


#: Largest input file read into memory: 256 MiB. An 8-bit RGBA image of the default pixel
#: limit stored without compression is 358 MB, but real PNG/JPEG/WebP files of that size
#: compress far below this. A zip member declares its size, so a zip bomb (a few MB
#: inflating to GBs) is refused from its directory entry, before a byte is inflated.
DEFAULT_MAX_FILE_BYTES = 256 << 20


@dataclass
class WriterConfig:
    """How items become samples and samples become shards."""

    out: str
    """Output folder: a local path or an fsspec URL (``memory://``, ``s3://``...)."""
    image_size: int = 1024
    """Training resolution: every sample is image_size x image_size."""
    encoding: str = "png"
    """``png`` (lossless) or ``jpg`` (quality ``jpeg_quality``, no chroma subsampling)."""
    jpeg_quality: int = 95
    """JPEG quality when encoding is jpg."""
    png_level: int = 6
    """zlib level for PNG. Shards are written once and decoded every epoch: 6 decodes
    1.5x faster than 1 at 1024 px (less data to inflate), for a slower write."""
    shard_samples: int = 1000
    """A shard is closed when it holds this many samples ..."""
    shard_bytes: int = 1_000_000_000
    """... or when the next sample would take it over this many bytes."""
    min_size: int = 64
    """Folder/LMDB images with a shorter side are refused (``too_small``)."""
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    """Inputs with more pixels are refused before decoding (``too_many_pixels``)."""
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    """Input files (or zip members) larger than this are refused before they are read (``too_large``)."""
    workers: int = 2
    """Processes that decode and encode; 0 processes in the calling process."""
    upscaler: str | None = None
    """``module:function`` called on crops smaller than image_size (e.g. an SR model)."""
    keep_encoded: bool = True
    """Store an input's own bytes when it is already an RGB JPEG/PNG of the training size
    needing no crop (an LMDB or a folder of finished crops): no second lossy generation."""
    dedup: bool = True
    """Drop samples whose pixels equal an earlier sample's (exact duplicates only)."""
    expand: float = 1.8
    """Webtoon crop: square side = this x the box's long edge."""
    shift_down: float = 0.2
    """Webtoon crop: centre moved down by this fraction of the box height."""
    max_aspect: float = 1.3
    """Webtoon crop: boxes more elongated than this are refused."""
    max_blank: float = 0.075
    """Webtoon crop: crops with more blank (outside-the-page) area are refused."""
    align_transform: int = 4
    """FFHQ alignment resamples at this multiple of image_size before the final resize."""


_CFG: WriterConfig | None = None
_UPSCALER: images.Upscaler | None = None
_HANDLES: dict = {}


def _init_worker(cfg: WriterConfig) -> None:
    global _CFG, _UPSCALER
    _CFG, _UPSCALER = cfg, images.load_upscaler(cfg.upscaler)


def close_handles() -> None:
    """Closes the zips and LMDB environments this process opened."""
    for h in _HANDLES.values():
        h.close()
    _HANDLES.clear()


def _too_large(size: int, limit: int) -> Rejected:
    return Rejected("too_large", f"{size} bytes > {limit} (--max-file-bytes)")


def _read_capped(f: IO[bytes], limit: int) -> bytes:
    # Declared sizes can lie (a zip entry, a file growing while read): never read past the limit.
    data = f.read(limit + 1)
    if len(data) > limit:
        raise _too_large(len(data), limit)
    return data


def _read_ref(ref: tuple, limit: int) -> bytes:
    """The input's bytes; ``Rejected("too_large")`` for more than ``limit``, found before reading."""
    kind = ref[0]
    if kind == "url":
        fs, path = fs_and_path(ref[1])
        if (size := fs.size(path)) is not None and size > limit:
            raise _too_large(size, limit)
        with fs.open(path, "rb") as f:
            return _read_capped(f, limit)
    if kind == "zip":
        z = _HANDLES.get(ref[1])
        if z is None:  # a file object, not the whole zip in memory: iCartoonFace zips are GBs
            z = _HANDLES[ref[1]] = zipfile.ZipFile(open_url(ref[1]))
        info = z.getinfo(ref[2])
        if info.file_size > limit:
            raise _too_large(info.file_size, limit)
        with z.open(info) as f:
            return _read_capped(f, limit)
    if kind == "lmdb":
        env = _HANDLES.get(ref[1])
        if env is None:
            from .lmdb_io import open_lmdb  # noqa: PLC0415

            env = _HANDLES[ref[1]] = open_lmdb(ref[1])
        with env.begin() as txn:
            data = txn.get(ref[2].encode())
        if data is None:
            raise Rejected("missing_key", f"LMDB has no key {ref[2]}")
        return data
    raise DataError(f"unknown item reference {ref!r}")


def _shape(img, item: Item, cfg: WriterConfig):
    if item.crop is None:
        if min(img.size) < cfg.min_size:
            raise Rejected("too_small", f"{img.width}x{img.height} < {cfg.min_size}")
        return images.center_square(img)
    if item.crop[0] == "box":
        return crop_webtoon_face(img, tuple(item.crop[1:]), expand=cfg.expand, shift_down=cfg.shift_down,
                                 min_size=cfg.min_size, max_aspect=cfg.max_aspect, max_blank=cfg.max_blank)
    if item.crop[0] == "align":
        return align_ffhq(img, np.asarray(item.crop[1], dtype=np.float64), output_size=cfg.image_size,
                          transform_size=cfg.image_size * cfg.align_transform)
    raise DataError(f"unknown crop {item.crop!r}")


def _process(item: Item, cfg: WriterConfig) -> dict:
    try:
        data = _read_ref(item.ref, cfg.max_file_bytes)
    except (FileNotFoundError, KeyError) as e:
        raise Rejected("missing_file", str(e)) from None
    except Rejected:
        raise
    except Exception as e:  # noqa: BLE001 - bad CRC, encrypted member, I/O error: this input only
        raise Rejected("unreadable", f"{type(e).__name__}: {e}") from None
    img = _shape(images.decode_rgb(data, cfg.max_pixels), item, cfg)
    kept = images.stored_format(data, cfg.image_size) if cfg.keep_encoded and item.crop is None else None
    if kept:
        return {"data": data, "ext": kept, "hash": images.pixel_hash(img)}
    img = images.resize_square(img, cfg.image_size, _UPSCALER)
    return {"data": images.encode(img, cfg.encoding, cfg.jpeg_quality, cfg.png_level),
            "ext": cfg.encoding, "hash": images.pixel_hash(img)}


def process_item(item: Item) -> tuple[Item, dict]:
    """One item -> ``{"data", "ext", "hash"}`` or ``{"reason", "detail"}``; never raises for bad input."""
    try:
        return item, _process(item, _CFG)
    except Rejected as r:
        return item, {"reason": r.reason, "detail": r.detail}
    except DataError:
        raise  # a configuration error, not a bad input
    except Exception as e:  # noqa: BLE001 - a decoder, geometry or hook error on this input only
        return item, {"reason": "failed", "detail": f"{type(e).__name__}: {e}"}


def _pool(cfg: WriterConfig, n: int) -> ProcessPoolExecutor:
    # spawn: forking a parent that holds fsspec/async threads can deadlock.
    return ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(cfg,))


def _alone(item: Item, cfg: WriterConfig) -> tuple[Item, dict]:
    """Runs one item in a fresh single process: a second crash rejects it."""
    with _pool(cfg, 1) as pool:
        try:
            return pool.submit(process_item, item).result()
        except BrokenProcessPool:
            return item, {"reason": "crashed", "detail": "the process decoding it died (out of memory "
                                                         "or a decoder crash)"}


def run_items(items: Iterable[Item], cfg: WriterConfig) -> Iterator[tuple[Item, dict]]:
    """Results in input order; at most 4 x workers items in flight (bounded memory)."""
    if cfg.workers <= 0:
        _init_worker(cfg)
        try:
            yield from map(process_item, items)
        finally:
            close_handles()
        return
    source, window = iter(items), 4 * cfg.workers
    pool = _pool(cfg, cfg.workers)
    pending: deque = deque()
    try:
        while True:
            while len(pending) < window and (item := next(source, None)) is not None:
                pending.append((item, pool.submit(process_item, item)))
            if not pending:
                return
            item, fut = pending.popleft()
            try:
                result = fut.result()
            except BrokenProcessPool:
                # Some in-flight item killed a worker; all in-flight futures are lost.
                pool.shutdown(cancel_futures=True)
                result = _alone(item, cfg)
                pool = _pool(cfg, cfg.workers)
                pending = deque((it, pool.submit(process_item, it)) for it, _ in pending)
            yield result
    finally:
        pool.shutdown(cancel_futures=True)
