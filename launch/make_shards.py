"""Writes training shards (webdataset tar + manifest.json) from raw material.

    # a folder or zip of face crops, one sub-folder per character
    python -m launch.make_shards --kind folder --input chars/ --labels subfolder --out shards/chars
    # a webtoon crawl (<title>/<episode>/NNN.jpg) with face boxes: crops follow the webtoon rules
    python -m launch.make_shards --kind boxes --input crawl/ --boxes faces.csv --labels title --out s3://bucket/webtoon
    # iCartoonFace: detection set (CSV filename,x1,y1,x2,y2, no header) or recognition set
    python -m launch.make_shards --kind boxes --input icf/det/ --boxes icf_det.csv --labels none --out shards/icf_det
    python -m launch.make_shards --kind folder --input icf/rec/ --labels subfolder --out shards/icf_rec
    # real faces, FFHQ-aligned from five landmarks per image
    python -m launch.make_shards --kind faces --input photos/ --landmarks landmarks.csv --out shards/faces
    # a rosinality prepare_data.py LMDB
    python -m launch.make_shards --kind lmdb --input ffhq_lmdb/ --out shards/ffhq

Inputs are written in a seeded shuffled order (--order-seed), so that one
character's images are spread over all the shards rather than filling one or
two of them; --keep-order writes them in listing (path) order instead.

Rerunning the same command resumes an interrupted run (or reports that the
output is complete). --out must be new, empty or an output of make_shards:
a folder holding other files is refused (exit 2), and only files make_shards
names as its own are ever deleted there. Rejected inputs never stop the run:
inputs over --max-file-bytes or --max-pixels are refused before they are read
or decoded; every rejected input is listed in the manifest with its reason,
their counts go to stderr, and a summary is printed as the last line (one
JSON object).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from datasets.errors import DataError
from datasets.faces import read_landmarks
from datasets.shards import WriterConfig, job_in, job_key, shuffle_items, write_shards
from datasets.sources import LABEL_RULES, Listing, box_items, face_items, folder_items, lmdb_items
from trainer.run.lock import LockedError, local_folder_lock


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.make_shards", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", required=True, choices=["folder", "boxes", "faces", "lmdb"],
                   help="what --input holds (see above)")
    p.add_argument("--input", required=True, help="folder, .zip or LMDB folder (local or fsspec URL)")
    p.add_argument("--out", required=True, help="output folder (local or fsspec URL)")
    p.add_argument("--labels", choices=LABEL_RULES, default=None,
                   help="label by the first path component (subfolder/title) or not at all; "
                        "default: title for boxes, none otherwise")
    p.add_argument("--boxes", help="boxes: CSV filename,x1,y1,x2,y2 or detector JSON {file: [[x1,y1,x2,y2,score]]}")
    p.add_argument("--min-score", type=float, default=0.0, help="boxes: detector score threshold (JSON)")
    p.add_argument("--landmarks", help="faces: CSV filename,x1,y1,...,x5,y5 or JSON {file: [[x,y]*5]}")
    p.add_argument("--lmdb-size", type=int, help="lmdb: resolution to read (default: the largest stored)")
    d = WriterConfig(out="")
    p.add_argument("--size", type=int, default=d.image_size, help="training resolution of every sample")
    p.add_argument("--encoding", choices=["png", "jpg"], default=d.encoding)
    p.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality)
    p.add_argument("--shard-samples", type=int, default=d.shard_samples, help="samples per shard (at most)")
    p.add_argument("--shard-bytes", type=float, default=d.shard_bytes, help="bytes per shard (at most)")
    p.add_argument("--min-size", type=int, default=d.min_size, help="shortest accepted side / face box edge")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels,
                   help="largest accepted input in pixels, read from the image header before decoding")
    p.add_argument("--max-file-bytes", type=int, default=d.max_file_bytes,
                   help="largest accepted input file or zip member in bytes, checked before reading it "
                        "(a zip bomb is refused from its directory entry)")
    p.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 16), help="processes (0: inline)")
    p.add_argument("--upscaler", help="module:function(img, size) -> img, for crops smaller than --size")
    p.add_argument("--no-dedup", action="store_true", help="keep exact duplicates")
    p.add_argument("--keep-order", action="store_true",
                   help="write inputs in listing (path) order, e.g. to resume or recognise an output written "
                        "before shuffling was the default; by default they are shuffled (seeded) so that each "
                        "character is spread over all the shards")
    p.add_argument("--order-seed", type=int, default=0, help="seed of the input shuffle (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def make_listing(args: argparse.Namespace) -> Listing:
    """The ordered items of the chosen kind (listing-time rejects included)."""
    if args.kind == "folder":
        return folder_items(args.input, args.labels or "none")
    if args.kind == "boxes":
        if not args.boxes:
            raise DataError("--kind boxes needs --boxes (a CSV filename,x1,y1,x2,y2 or a detector JSON)")
        return box_items(args.input, args.boxes, args.labels or "title", args.min_score)
    if args.kind == "faces":
        if not args.landmarks:
            raise DataError("--kind faces needs --landmarks (CSV filename,x1,y1,...,x5,y5 or JSON)")
        marks, bad = read_landmarks(args.landmarks)
        return face_items(args.input, marks, bad, args.landmarks, args.labels or "none")
    return lmdb_items(args.input, args.lmdb_size)


def _job_in(out: str) -> str | None:
    try:
        return job_in(out)
    except DataError:  # whatever is there, it is not an output of ours
        return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = WriterConfig(out=args.out, image_size=args.size, encoding=args.encoding,
                       jpeg_quality=args.jpeg_quality, shard_samples=args.shard_samples,
                       shard_bytes=int(args.shard_bytes), min_size=args.min_size, max_pixels=args.max_pixels,
                       max_file_bytes=args.max_file_bytes, workers=args.workers, upscaler=args.upscaler,
                       dedup=not args.no_dedup)
    listing = None
    lock = local_folder_lock(args.out, "python -m launch.make_shards")
    try:
        if lock is not None:
            lock.acquire()  # two writers would rewrite each other's shards and progress records
        listing = make_listing(args)
        print(f"[shards] {len(listing.items)} inputs from {args.input} ({args.kind}); "
              f"{len(listing.rejects)} refused while listing", file=sys.stderr)
        ordered = listing if args.keep_order else shuffle_items(listing, args.order_seed)
        m = write_shards(ordered, cfg, progress=not args.quiet, log=lambda s: print(s, file=sys.stderr))
    except (DataError, FileNotFoundError, LockedError) as e:
        print(f"error: {e}", file=sys.stderr)
        if listing is not None and not args.keep_order and _job_in(args.out) == job_key(cfg, listing):
            print("  (that output holds these inputs in listing order, as make_shards wrote them before it "
                  "shuffled by default: add --keep-order to resume or keep it)", file=sys.stderr)
        return 2
    finally:
        if lock is not None:
            lock.release()
    if m["rejected"]:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in m["rejected_counts"].items())
        print(f"[shards] rejected {len(m['rejected'])} inputs ({reasons}); the manifest lists each with its reason",
              file=sys.stderr)
    print(json.dumps({"out": args.out, "samples": m["num_samples"], "shards": len(m["shards"]),
                      "rejected": m["rejected_counts"], "duplicates": m["num_duplicates"],
                      "labels": len(m["labels"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
