"""The raw material people bring, listed as ``Item``s in a fixed order.

Kinds:
- ``folder``: a folder (local or fsspec URL) or ``.zip`` of images, optionally
  one sub-folder per character (``labels="subfolder"``). iCartoonFace's
  recognition set is this kind with per-character folders.
- ``boxes``: images plus face boxes (a CSV ``filename,x1,y1,x2,y2``, header
  optional, or a detector JSON ``{filename: [[x1,y1,x2,y2,score], ...]}``),
  cropped with the webtoon rules. A webtoon crawl (``<title>/<episode>/``) is
  this kind labelled by title; iCartoonFace's detection CSV is this kind
  without labels.
- ``faces``: real photos plus five landmarks per image, FFHQ-aligned.
- ``lmdb``: a rosinality ``prepare_data.py`` LMDB (keys ``{size}-{index:05d}``).

Listing never decodes; malformed rows, boxes for missing files and images
without landmarks become ``Reject`` records here, with their line numbers.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, field
from typing import Iterable

from .errors import DataError
from .remote import fs_and_path, join, open_url, read_bytes
from .tables import table_rows

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
KINDS = ("folder", "boxes", "faces", "lmdb")
LABEL_RULES = ("none", "subfolder", "title")
LMDB_SIZES = (2048, 1024, 512, 256, 128, 64, 32, 16, 8)


@dataclass(frozen=True)
class Item:
    """One input that may become one sample."""

    source: str
    """Where it came from, for people: ``folder:/x/a.png``, ``lmdb:/db#1024-00007``, with ``#box2`` for crops."""
    ref: tuple
    """How to read its bytes: ``("url", url)``, ``("zip", zip_url, member)`` or ``("lmdb", path, key)``."""
    label: str | None = None
    """Character or title label, None when unknown."""
    crop: tuple | None = None
    """None, ``("box", x1, y1, x2, y2)`` (webtoon crop rules) or ``("align", ((x, y),) * 5)``."""


@dataclass
class Listing:
    """Items in a fixed order plus the inputs refused while listing."""

    items: list[Item] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    description: dict = field(default_factory=dict)

    def reject(self, source: str, reason: str, detail: str = "") -> None:
        self.rejects.append({"source": source, "reason": reason, "detail": detail})


def _label_of(rel: str, rule: str) -> str | None:
    parts = rel.split("/")
    if rule in ("subfolder", "title") and len(parts) > 1:
        return parts[0]
    return None


def list_files(root: str) -> list[str]:
    """Every file under ``root`` (or in the zip ``root``), relative, sorted; hidden files skipped.

    Non-image files are listed too: decoding refuses them and the manifest
    counts them, so a stray file is visible rather than silently ignored.
    """
    if root.lower().endswith(".zip"):
        with open_url(root) as f, zipfile.ZipFile(f) as z:  # streamed: zips can be GBs
            names = [n for n in z.namelist() if not n.endswith("/")]
    else:
        fs, base = fs_and_path(root)
        if not fs.isdir(base):
            raise DataError(f"input folder {root!r} does not exist or is not a folder")
        base = base.rstrip("/")
        names = [p[len(base) + 1:] for p in fs.find(base)]
    return sorted(n for n in names if not any(s.startswith(".") for s in n.split("/")))


def _ref(root: str, rel: str) -> tuple:
    if root.lower().endswith(".zip"):
        return ("zip", root, rel)
    return ("url", join(root, rel))


def folder_items(root: str, labels: str = "none") -> Listing:
    """Every file under a folder or zip, labelled by sub-folder if asked."""
    out = Listing(description={"kind": "folder", "path": root, "labels": labels})
    for rel in list_files(root):
        out.items.append(Item(f"folder:{join(root, rel)}", _ref(root, rel), _label_of(rel, labels)))
    return out


def _floats(values: list[str], n: int) -> list[float]:
    if len(values) != n:
        raise ValueError(f"expected {n} numbers, got {len(values)}")
    out = [float(v) for v in values]
    if not all(math.isfinite(v) for v in out):
        raise ValueError("non-finite number")
    return out


def read_box_csv(url: str) -> tuple[dict[str, list[list[float]]], list[tuple[int, str]]]:
    """``filename,x1,y1,x2,y2`` rows (header optional) -> boxes per file, bad rows with line numbers."""
    boxes: dict[str, list[list[float]]] = {}
    bad: list[tuple[int, str]] = []
    text = read_bytes(url).decode("utf-8-sig", errors="replace")  # -sig: spreadsheet exports start with a BOM
    for line_no, row in table_rows(text):
        try:
            boxes.setdefault(row[0], []).append(_floats(row[1:], 4))
        except ValueError as e:
            bad.append((line_no, f"{e}: {','.join(row)[:120]}"))
    return boxes, bad


def read_box_json(url: str, min_score: float = 0.0) -> tuple[dict[str, list[list[float]]], list[tuple[int, str]]]:
    """Detector output ``{filename: [[x1, y1, x2, y2(, score)], ...]}`` -> boxes above ``min_score``."""
    try:
        raw = json.loads(read_bytes(url))
    except json.JSONDecodeError as e:
        raise DataError(f"detector file {url!r} is not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise DataError(f"detector file {url!r} must map file names to box lists")
    boxes: dict[str, list[list[float]]] = {}
    bad: list[tuple[int, str]] = []
    for i, (name, dets) in enumerate(raw.items(), start=1):
        for det in dets if isinstance(dets, list) else [dets]:
            try:
                vals = _floats([str(v) for v in det], len(det))
                if len(vals) not in (4, 5):
                    raise ValueError(f"expected 4 or 5 numbers, got {len(vals)}")
            except (ValueError, TypeError) as e:
                bad.append((i, f"{name}: {e}"))
                continue
            if len(vals) == 4 or vals[4] >= min_score:
                boxes.setdefault(name, []).append(vals[:4])
    return boxes, bad


def box_items(root: str, boxes_url: str, labels: str = "title", min_score: float = 0.0) -> Listing:
    """Images under ``root`` with face boxes; one item per box, in file then box order."""
    out = Listing(description={"kind": "boxes", "path": root, "boxes": boxes_url, "labels": labels})
    if boxes_url.lower().endswith(".json"):
        boxes, bad = read_box_json(boxes_url, min_score)
    else:
        boxes, bad = read_box_csv(boxes_url)
    for line_no, detail in bad:
        out.reject(f"{boxes_url}:{line_no}", "malformed_row", detail)
    present = set(list_files(root))
    for rel in sorted(boxes):
        if rel not in present:
            out.reject(f"{boxes_url}:{rel}", "missing_file", f"{rel} not under {root}")
            continue
        for k, b in enumerate(boxes[rel]):
            src = f"boxes:{join(root, rel)}#box{k}"
            out.items.append(Item(src, _ref(root, rel), _label_of(rel, labels), ("box", *b)))
    return out


def face_items(root: str, landmarks: dict, bad_rows: list[tuple[int, str]], landmarks_url: str,
               labels: str = "none") -> Listing:
    """Photos with five landmarks each (``landmarks``: file name -> (5, 2) array)."""
    out = Listing(description={"kind": "faces", "path": root, "landmarks": landmarks_url, "labels": labels})
    for line_no, detail in bad_rows:
        out.reject(f"{landmarks_url}:{line_no}", "malformed_row", detail)
    for rel in list_files(root):
        src = f"faces:{join(root, rel)}"
        if rel not in landmarks:
            out.reject(src, "no_landmarks", f"{rel} has no entry in {landmarks_url}")
            continue
        pts = tuple(tuple(float(v) for v in p) for p in landmarks[rel])
        out.items.append(Item(src, _ref(root, rel), _label_of(rel, labels), ("align", pts)))
    return out


def lmdb_items(path: str, size: int | None = None) -> Listing:
    """A rosinality LMDB: ``length`` entries at one resolution (the largest stored, or ``size``)."""
    from .lmdb_io import open_lmdb  # noqa: PLC0415 - lmdb is only needed for this kind

    env = open_lmdb(path)
    try:
        with env.begin() as txn:
            raw = txn.get(b"length")
            if raw is None:
                raise DataError(f"{path} has no 'length' key: not a rosinality prepare_data.py LMDB")
            n = int(raw.decode())
            sizes = [s for s in LMDB_SIZES if txn.get(f"{s}-{0:05d}".encode()) is not None]
    finally:
        env.close()
    if size is None:
        if not sizes:
            raise DataError(f"{path}: no '<size>-00000' key for sizes {LMDB_SIZES}")
        size = sizes[0]
    elif size not in sizes:
        raise DataError(f"{path} stores sizes {sizes}, not {size}")
    out = Listing(description={"kind": "lmdb", "path": path, "size": size, "length": n})
    for i in range(n):
        key = f"{size}-{str(i).zfill(5)}"
        out.items.append(Item(f"lmdb:{path}#{key}", ("lmdb", path, key)))
    return out


def labels_of(items: Iterable[Item]) -> list[str]:
    """Sorted distinct labels: their positions are the ``cls`` values in the shards."""
    return sorted({it.label for it in items if it.label is not None})
