"""Writing ``Item``s into webdataset tar shards with a manifest, resumably.

Items are processed (read, decoded, cropped or aligned, resized, encoded) by a
pool of processes in a fixed order; the parent removes exact duplicates and
writes shards. Each shard is written under a temporary name and renamed when
complete, then ``_progress.json`` records everything up to that shard, so an
interrupted run continues from the last complete shard: no duplicates, no
half-written shard, and byte-identical output to an uninterrupted run.

A sample is ``{key}.png|jpg`` (the image), ``{key}.cls`` (index into the
manifest's ``labels``, -1 when unlabelled) and ``{key}.json`` (source, label).
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import tarfile
import time
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable

from tqdm import tqdm

from . import images
from .errors import DataError, Rejected
from .faces import align_ffhq, crop_webtoon_face
from .remote import atomic_write, exists, fs_and_path, join, read_bytes, read_json, write_json
from .sources import Item, Listing, labels_of

MANIFEST = "manifest.json"
PROGRESS = "_progress.json"
FORMAT = "toonmix.shards"
VERSION = 1


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
    png_level: int = 1
    """zlib level for PNG: 1 writes several times faster than 6 for a few % more bytes."""
    shard_samples: int = 1000
    """A shard is closed when it holds this many samples ..."""
    shard_bytes: int = 1_000_000_000
    """... or when the next sample would take it over this many bytes."""
    min_size: int = 64
    """Folder/LMDB images with a shorter side are refused (``too_small``)."""
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    """Inputs with more pixels are refused before decoding (``too_many_pixels``)."""
    workers: int = 2
    """Processes that decode and encode; 0 processes in the calling process."""
    upscaler: str | None = None
    """``module:function`` called on crops smaller than image_size (e.g. an SR model)."""
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


def _job_key(cfg: WriterConfig, listing: Listing) -> str:
    """Identifies the output: equal keys mean a rerun may resume or skip."""
    conf = {k: v for k, v in asdict(cfg).items() if k not in ("out", "workers")}
    h = hashlib.sha256(json.dumps([conf, listing.description], sort_keys=True).encode())
    for it in listing.items:
        h.update(it.source.encode() + b"\0")
    return h.hexdigest()[:24]


# --------------------------------------------------------------------------- processing (workers)

_CFG: WriterConfig | None = None
_UPSCALER: images.Upscaler | None = None
_HANDLES: dict = {}


def _init_worker(cfg: WriterConfig) -> None:
    global _CFG, _UPSCALER
    _CFG, _UPSCALER = cfg, images.load_upscaler(cfg.upscaler)


def _read_ref(ref: tuple) -> bytes:
    kind = ref[0]
    if kind == "url":
        return read_bytes(ref[1])
    if kind == "zip":
        z = _HANDLES.get(ref[1])
        if z is None:
            z = _HANDLES[ref[1]] = zipfile.ZipFile(io.BytesIO(read_bytes(ref[1])))
        return z.read(ref[2])
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
        import numpy as np  # noqa: PLC0415

        return align_ffhq(img, np.asarray(item.crop[1], dtype=np.float64), output_size=cfg.image_size,
                          transform_size=cfg.image_size * cfg.align_transform)
    raise DataError(f"unknown crop {item.crop!r}")


def process_item(item: Item) -> tuple[Item, dict]:
    """One item -> ``{"data", "hash"}`` or ``{"reason", "detail"}`` (never raises ``Rejected``)."""
    cfg = _CFG
    try:
        try:
            data = _read_ref(item.ref)
        except (FileNotFoundError, KeyError) as e:
            raise Rejected("missing_file", str(e)) from None
        except OSError as e:
            raise Rejected("unreadable", f"{type(e).__name__}: {e}") from None
        img = images.decode_rgb(data, cfg.max_pixels)
        img = images.resize_square(_shape(img, item, cfg), cfg.image_size, _UPSCALER)
        return item, {"data": images.encode(img, cfg.encoding, cfg.jpeg_quality, cfg.png_level),
                      "hash": images.pixel_hash(img)}
    except Rejected as r:
        return item, {"reason": r.reason, "detail": r.detail}


# --------------------------------------------------------------------------- writing (parent)

def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    # Fixed metadata: equal inputs give byte-identical shards (resume relies on it).
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


class ShardSink:
    """One shard being written to a temporary name."""

    def __init__(self, out: str, index: int):
        self.name = f"shard-{index:06d}.tar"
        self.fs, self.path = fs_and_path(join(out, self.name))
        self.tmp = f"{self.path}.tmp-{time.time_ns()}"
        self.file = self.fs.open(self.tmp, "wb")
        self.tar = tarfile.open(fileobj=self.file, mode="w", format=tarfile.USTAR_FORMAT)
        self.count, self.bytes = 0, 0

    def add(self, key: str, encoding: str, image: bytes, cls: int, meta: dict) -> None:
        for ext, data in ((encoding, image), ("cls", str(cls).encode()),
                          ("json", json.dumps(meta, sort_keys=True).encode())):
            _add_member(self.tar, f"{key}.{ext}", data)
            self.bytes += 512 + -(-len(data) // 512) * 512
        self.count += 1

    def finish(self) -> dict:
        self.tar.close()
        self.file.close()
        self.fs.mv(self.tmp, self.path)
        return {"name": self.name, "count": self.count, "bytes": self.fs.size(self.path)}

    def abandon(self) -> None:
        try:
            self.tar.close()
            self.file.close()
        finally:
            if self.fs.exists(self.tmp):
                self.fs.rm(self.tmp)


@dataclass
class _State:
    """Everything committed up to the last complete shard."""

    job: str
    next_item: int = 0
    shards: list = field(default_factory=list)
    samples: list = field(default_factory=list)
    rejected: list = field(default_factory=list)
    duplicates: list = field(default_factory=list)
    hashes: dict = field(default_factory=dict)


def _load_state(out: str, job: str) -> _State:
    fs, base = fs_and_path(out)
    fs.makedirs(base, exist_ok=True)
    for p in fs.glob(base.rstrip("/") + "/*.tmp-*"):
        fs.rm(p)  # half-written shards of an interrupted run
    url = join(out, PROGRESS)
    if not exists(url):
        return _State(job)
    raw = read_json(url)
    if raw.get("job") != job:
        raise DataError(f"{out} holds an unfinished run of a different input or configuration "
                        f"({PROGRESS} job {raw.get('job')} != {job}); use another output folder")
    return _State(**raw)


def _manifest(state: _State, cfg: WriterConfig, listing: Listing, labels: list[str]) -> dict:
    counts = Counter(s["label"] for s in state.samples if s["label"] is not None)
    return {
        "format": FORMAT, "version": VERSION, "job": state.job,
        "image_size": cfg.image_size, "encoding": cfg.encoding,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("out", "workers")},
        "sources": [listing.description],
        "num_inputs": len(listing.items) + len(listing.rejects),
        "num_samples": len(state.samples),
        "shards": state.shards,
        "labels": labels,
        "label_counts": {lab: counts.get(lab, 0) for lab in labels},
        "unlabelled": sum(1 for s in state.samples if s["label"] is None),
        "rejected_counts": dict(sorted(Counter(r["reason"] for r in state.rejected).items())),
        "num_duplicates": len(state.duplicates),
        "samples": state.samples,
        "rejected": state.rejected,
        "duplicates": state.duplicates,
    }


def _results(items: list[Item], cfg: WriterConfig):
    if cfg.workers <= 0:
        _init_worker(cfg)
        yield from map(process_item, items)
        return
    # spawn: forking a parent that holds fsspec/async threads can deadlock.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(cfg.workers, initializer=_init_worker, initargs=(cfg,)) as pool:
        yield from pool.imap(process_item, items, chunksize=4)


def write_shards(listing: Listing, cfg: WriterConfig, progress: bool = True,
                 log: Callable[[str], None] = print) -> dict:
    """Writes (or resumes, or finds complete) the shards of ``listing``; returns the manifest."""
    if cfg.encoding not in images.ENCODINGS:
        raise DataError(f"encoding must be one of {images.ENCODINGS}, got {cfg.encoding!r}")
    job = _job_key(cfg, listing)
    if exists(join(cfg.out, MANIFEST)):
        manifest = read_json(join(cfg.out, MANIFEST))
        if manifest.get("job") == job:
            log(f"[shards] {cfg.out} is complete ({manifest['num_samples']} samples); nothing to do")
            return manifest
        raise DataError(f"{cfg.out} already holds shards of another input or configuration; "
                        "choose another output folder")
    state = _load_state(cfg.out, job)
    if state.next_item:
        log(f"[shards] resuming after item {state.next_item} ({len(state.shards)} shards complete)")
    else:
        state.rejected = list(listing.rejects)
    labels = labels_of(listing.items)
    pending = _State(job, state.next_item)
    sink = None

    def commit(next_item: int) -> None:
        nonlocal sink
        state.shards.append(sink.finish())
        sink = None
        for name in ("samples", "rejected", "duplicates"):
            getattr(state, name).extend(getattr(pending, name))
            getattr(pending, name).clear()
        state.hashes.update(pending.hashes)
        pending.hashes.clear()
        state.next_item = next_item
        write_json(join(cfg.out, PROGRESS), asdict(state))

    bar = tqdm(total=len(listing.items), initial=state.next_item, disable=not progress,
               desc="shards", unit="img", dynamic_ncols=True)
    try:
        for i, (item, res) in enumerate(_results(listing.items[state.next_item:], cfg), start=state.next_item):
            bar.update(1)
            if "reason" in res:
                pending.rejected.append({"source": item.source, **res})
                continue
            first = state.hashes.get(res["hash"]) or pending.hashes.get(res["hash"])
            if cfg.dedup and first is not None:
                pending.duplicates.append({"source": item.source, "duplicate_of": first})
                continue
            if sink is not None and sink.count and sink.bytes + len(res["data"]) > cfg.shard_bytes:
                commit(i)
            if sink is None:
                sink = ShardSink(cfg.out, len(state.shards))
            key = f"{len(state.samples) + len(pending.samples):09d}"
            cls = labels.index(item.label) if item.label is not None else -1
            sink.add(key, cfg.encoding, res["data"], cls, {"source": item.source, "label": item.label})
            pending.samples.append({"key": key, "shard": len(state.shards), "source": item.source,
                                    "label": item.label})
            pending.hashes[res["hash"]] = key
            bar.set_postfix(shards=len(state.shards), rejected=len(state.rejected) + len(pending.rejected),
                            refresh=False)
            if sink.count >= cfg.shard_samples:
                commit(i + 1)
        if sink is not None:
            commit(len(listing.items))
        state.rejected += pending.rejected
        state.duplicates += pending.duplicates
    except BaseException:
        if sink is not None:
            sink.abandon()
        raise
    finally:
        bar.close()
    manifest = _manifest(state, cfg, listing, labels)
    write_json(join(cfg.out, MANIFEST), manifest)
    fs, base = fs_and_path(join(cfg.out, PROGRESS))
    if fs.exists(base):
        fs.rm(base)
    return manifest
