"""Draws the demo's two-domain face dataset: photo-like faces and cartoon characters.

    python -m launch.make_demo_data --out data/demo
    python -m launch.make_shards --kind folder --input data/demo/photos/train --out data/demo/shards/photos
    python -m launch.make_shards --kind folder --input data/demo/characters --labels subfolder \\
        --out data/demo/shards/characters

Writes photos/train/, photos/test/ (held out for cartoonization) and
characters/<name>/ as PNGs, then labels.json (every file's character and face
geometry: centre and size as fractions of the side, what launch.probe measures
with) and demo_data.json. Every image is a function of --seed and its index; a
rerun draws only what is missing and rewrites labels.json without drawing.
"""

from __future__ import annotations

import argparse
import json
import sys

from tqdm import tqdm


def build_parser() -> argparse.ArgumentParser:
    from datasets.synthetic import DemoData

    d = DemoData(out="")
    p = argparse.ArgumentParser(prog="python -m launch.make_demo_data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--photos", type=int, default=d.photos, help="photo-like training faces")
    p.add_argument("--test-photos", type=int, default=d.test_photos, help="held-out photo-like faces")
    p.add_argument("--characters", type=int, default=d.characters, help="cartoon characters")
    p.add_argument("--per-character", type=int, default=d.per_character, help="images per character")
    p.add_argument("--size", type=int, default=d.size, help="image side in pixels")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of every drawing")
    return p


def main(argv: list[str] | None = None) -> int:
    from datasets.synthetic import DemoData, write_demo_data

    args = build_parser().parse_args(argv)
    if min(args.photos, args.characters, args.per_character) < 1 or args.test_photos < 0 or args.size < 16:
        print("error: counts must be >= 1 (--test-photos >= 0) and --size >= 16", file=sys.stderr)
        return 2
    cfg = DemoData(args.out, args.photos, args.test_photos, args.characters, args.per_character, args.size, args.seed)
    with tqdm(desc="demo data", unit="img") as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        summary = write_demo_data(cfg, progress)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
