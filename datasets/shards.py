"""Writing ``Item``s into webdataset tar shards with a manifest, resumably.

Items are processed (read, decoded, cropped or aligned, resized, encoded) by a
pool of processes in a fixed order (``shuffle_items`` makes it a seeded shuffle
of the listing, which ``launch.make_shards`` does by default); the parent
removes exact duplicates and writes shards. Each shard is written under a
temporary name and renamed when complete, then a record in ``_progress/`` holds
everything up to that shard, so an interrupted run continues from the last
complete shard: no duplicates, no half-written shard, and byte-identical output
to an uninterrupted run. The writer deletes or overwrites only files named as it
names them (its shards, records and temporary files), and refuses an output
folder holding anything else unless it holds a record of the same job.

A sample is ``{key}.png|jpg`` (the image), ``{key}.cls`` (index into the
manifest's ``labels``, -1 when unlabelled) and ``{key}.json`` (source, label).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable

from tqdm import tqdm

from . import images
from .errors import DataError
from .process import DEFAULT_MAX_FILE_BYTES, WriterConfig, run_items
from .remote import fs_and_path, join, write_json
from .sources import Item, Listing, labels_of

MANIFEST = "manifest.json"
PROGRESS = "_progress"  # one record per complete shard: appending, never rewriting
FORMAT = "toonmix.shards"
VERSION = 1
# The names this writer gives what it writes in an output folder. Only files named so are
# ever deleted or overwritten there: the folder may hold the user's own files.
_RECORD_NAME = re.compile(r"\d{6}\.json")
_TEMP_NAME = re.compile(r"shard-\d{6}\.tar\.tmp-\d+|(manifest|\d{6})\.json\.tmp-\d+-[0-9a-f]{8}")


def shuffle_items(listing: Listing, seed: int = 0) -> Listing:
    """The listing's items in a seeded order, so that each label is spread over all the shards.

    Listings follow the paths, so per-character folders come one character after
    another, and shards written in that order hold one or two characters each. The
    order sorts on a hash of (seed, item): a pure function of the items and the seed
    (a resumed run gets the same order, whatever numpy's generators do), and the
    description records it, so a shuffled and an unshuffled run are different jobs.
    Paths enter the hash relative to the listing's root: the same data copied to another
    folder (another user, a test's temporary folder) is written in the same order.
    """
    root = str(listing.description.get("path") or "")

    def rel(v):
        return v.replace(root, "", 1) if root and isinstance(v, str) else v

    def key(it: Item) -> bytes:
        blob = [seed, rel(it.source), [rel(r) for r in it.ref], it.label, it.crop]
        return hashlib.sha256(json.dumps(blob).encode()).digest()

    return Listing(sorted(listing.items, key=key), list(listing.rejects),
                   {**listing.description, "order": "shuffled", "order_seed": seed})


def _names(fs, folder: str) -> list[str]:
    """Names of the entries of ``folder`` (none when it does not exist)."""
    if not fs.isdir(folder):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False))


def _records(fs, base: str) -> list[str]:
    """Paths of the per-shard records in ``base``'s progress folder, in shard order."""
    return [f"{base}/{PROGRESS}/{n}" for n in _names(fs, f"{base}/{PROGRESS}") if _RECORD_NAME.fullmatch(n)]


def _json(fs, path: str, what: str) -> dict:
    try:
        obj = json.loads(fs.cat_file(path))
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a {what} make_shards wrote; choose another output folder")
    return obj


def _manifest_at(out: str) -> dict | None:
    fs, path = fs_and_path(join(out, MANIFEST))
    return _json(fs, path, "manifest") if fs.exists(path) else None


def job_in(out: str) -> str | None:
    """The job of the complete or interrupted output in ``out``, if there is one."""
    manifest = _manifest_at(out)
    if manifest is not None:
        return manifest.get("job")
    fs, base = fs_and_path(out)
    records = _records(fs, base.rstrip("/"))
    return _json(fs, records[0], "progress record").get("job") if records else None


def _foreign(fs, base: str) -> list[str]:
    """What in ``base`` this writer did not write, for an output that holds no record of a job.

    Before its first record a run has written at most shard 0 and temporary files; anything
    else belongs to someone else, and writing there could overwrite it. Hidden files (a
    file manager's ``.DS_Store``) are never written or deleted here, so they do not count.
    """
    def ours(name: str) -> bool:
        return name.startswith(".") or bool(_TEMP_NAME.fullmatch(name))

    found = [n for n in _names(fs, base) if not (ours(n) or n in ("shard-000000.tar", PROGRESS))]
    found += [f"{PROGRESS}/{n}" for n in _names(fs, f"{base}/{PROGRESS}") if not ours(n)]
    return found


def job_key(cfg: WriterConfig, listing: Listing) -> str:
    """Identifies the output: equal keys mean a rerun may resume or skip."""
    conf = {k: v for k, v in asdict(cfg).items() if k not in ("out", "workers")}
    if conf["max_file_bytes"] == DEFAULT_MAX_FILE_BYTES:  # outputs written before the limit existed keep their key
        del conf["max_file_bytes"]
    h = hashlib.sha256(json.dumps([conf, listing.description], sort_keys=True).encode())
    for it in listing.items:  # crops and labels too: an edited box CSV is another job
        h.update(json.dumps([it.source, it.ref, it.label, it.crop]).encode() + b"\0")
    h.update(json.dumps(listing.rejects, sort_keys=True).encode())
    return h.hexdigest()[:24]


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

    def add(self, key: str, image_ext: str, image: bytes, cls: int, meta: dict) -> None:
        for ext, data in ((image_ext, image), ("cls", str(cls).encode()),
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
    """Merges the per-shard records of an interrupted run of the same job."""
    fs, base = fs_and_path(out)
    base = base.rstrip("/")
    records = _records(fs, base)
    foreign = [] if records else _foreign(fs, base)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise DataError(f"{out} holds files make_shards did not write ({shown}); choose an empty or new "
                        "output folder")
    fs.makedirs(f"{base}/{PROGRESS}", exist_ok=True)
    state = _State(job)
    for path in records:
        rec = _json(fs, path, "progress record")
        if rec.get("job") != job:
            raise DataError(f"{out} holds an unfinished run of a different input or configuration "
                            f"(job {rec.get('job')} != {job}); use another output folder")
        state.next_item = rec["next_item"]
        state.shards.append(rec["shard"])
        for name in ("samples", "rejected", "duplicates"):
            getattr(state, name).extend(rec[name])
        state.hashes.update(rec["hashes"])
    # Only now, with the job confirmed as ours: the half-written files of the interrupted run,
    # by the names this writer gives them (a user's "thesis.tmp-final" is not one of them).
    for folder in (base, f"{base}/{PROGRESS}"):
        for name in _names(fs, folder):
            if _TEMP_NAME.fullmatch(name):
                fs.rm(f"{folder}/{name}")
    return state


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


def write_shards(listing: Listing, cfg: WriterConfig, progress: bool = True,
                 log: Callable[[str], None] = print) -> dict:
    """Writes (or resumes, or finds complete) the shards of ``listing``; returns the manifest."""
    if cfg.encoding not in images.ENCODINGS:
        raise DataError(f"encoding must be one of {images.ENCODINGS}, got {cfg.encoding!r}")
    job = job_key(cfg, listing)
    manifest = _manifest_at(cfg.out)
    if manifest is not None:
        if manifest.get("job") == job:
            log(f"[shards] {cfg.out} is complete ({manifest['num_samples']} samples); nothing to do")
            return manifest
        raise DataError(f"{cfg.out} already holds shards of another input or configuration; "
                        "choose another output folder")
    state = _load_state(cfg.out, job)
    pending = _State(job, state.next_item)
    if state.shards:
        log(f"[shards] resuming after item {state.next_item} ({len(state.shards)} shards complete)")
    else:
        pending.rejected = list(listing.rejects)  # recorded with the first shard
    labels = labels_of(listing.items)
    sink = None

    def commit(next_item: int) -> None:
        nonlocal sink
        shard = sink.finish()
        write_json(join(cfg.out, PROGRESS, f"{len(state.shards):06d}.json"),
                   {"job": job, "next_item": next_item, "shard": shard, "samples": pending.samples,
                    "rejected": pending.rejected, "duplicates": pending.duplicates, "hashes": pending.hashes})
        state.shards.append(shard)
        sink = None
        for name in ("samples", "rejected", "duplicates"):
            getattr(state, name).extend(getattr(pending, name))
            setattr(pending, name, [])
        state.hashes.update(pending.hashes)
        pending.hashes = {}
        state.next_item = next_item

    bar = tqdm(total=len(listing.items), initial=state.next_item, disable=not progress,
               desc="shards", unit="img", dynamic_ncols=True)
    try:
        for i, (item, res) in enumerate(run_items(listing.items[state.next_item:], cfg), start=state.next_item):
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
            sink.add(key, res["ext"], res["data"], cls, {"source": item.source, "label": item.label})
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
    fs, base = fs_and_path(cfg.out)
    base = base.rstrip("/")
    for path in _records(fs, base):  # this job's records; anything else there is left alone
        fs.rm(path)
    if fs.exists(f"{base}/{PROGRESS}") and not _names(fs, f"{base}/{PROGRESS}"):
        fs.rm(f"{base}/{PROGRESS}", recursive=True)
    return manifest
