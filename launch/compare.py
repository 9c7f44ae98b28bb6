"""Compares trained generators: FID/KID against the same reference statistics in one table, one sheet.

    accelerate launch -m launch.compare --real shards/webtoon1024 \\
        --gen plain=runs/00001-plain/network.pt ada=runs/00002-ada/network.pt \\
              freezesg=runs/00003-freezesg/network.pt structure=runs/00004-structure/network.pt \\
        --detector weights/inception-2015-12-05.pt --num-gen 10000 --kid --out runs/compare

Each --gen is NAME=CHECKPOINT (rosinality .pt, NVlabs .pkl or ours). Every
generator draws the same z and noise per sample index; the reference statistics
are extracted once (and cached in --cache-dir). Writes compare.json and
compare.md (FID, KID, image counts per generator) and sheet.png (one row per
generator, one column per --seeds entry, each through its own mapping network).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from launch._args import int_list


def build_parser() -> argparse.ArgumentParser:
    from launch.fid import add_detector_args

    p = argparse.ArgumentParser(prog="accelerate launch -m launch.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gen", nargs="+", required=True, metavar="NAME=CKPT", help="the generators to compare")
    p.add_argument("--real", required=True, help="reference images: shard folder or image folder")
    p.add_argument("--num-gen", type=int, default=10000, help="generated images per generator")
    p.add_argument("--max-real", type=int, default=None, help="use at most this many real images")
    p.add_argument("--kid", action="store_true", help="also KID")
    p.add_argument("--seed", type=int, default=0, help="seeds the samples and KID subsets")
    p.add_argument("--seeds", type=int_list, default=list(range(8)), help="z seeds of the sheet's columns")
    p.add_argument("--truncation", type=float, default=1.0, help="truncation psi of the samples and the sheet")
    p.add_argument("--cache-dir", default=".cache/fid", help="reference statistics cache ('' disables)")
    p.add_argument("--out", required=True, help="output folder")
    add_detector_args(p)
    return p


def parse_gens(specs: list[str]) -> dict[str, str]:
    """NAME=CKPT pairs, in order; names must be distinct."""
    gens = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--gen {spec!r}: expected NAME=CHECKPOINT")
        if name in gens:
            raise ValueError(f"--gen: the name {name!r} is used twice")
        gens[name] = path
    return gens


def run(args: argparse.Namespace, dist) -> dict:
    import torch

    from eval.generator_table import seed_latents, sheet
    from trainer.model_io import load_checkpoint

    paths = parse_gens(args.gen)
    gens = {name: load_checkpoint(p).generator().to(dist.device).eval() for name, p in paths.items()}
    sizes = {name: (G.size, G.style_dim) for name, G in gens.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"the generators differ in size or W width: {sizes}")
    out = Path(args.out)
    if dist.is_main:
        z = seed_latents(args.seeds, next(iter(gens.values())).style_dim).to(dist.device)
        with torch.no_grad():
            ws = {name: G.truncate(G.broadcast(G.mapping(z)), args.truncation) for name, G in gens.items()}
        sheet(gens, ws, out / "sheet.png")
    rows = table_against_real(gens, args, dist, out / "compare", "Generator comparison", {"generators": paths})
    return {} if rows is None else {"fid": {k: v["fid"] for k, v in rows.items()}, "sheet": str(out / "sheet.png")}


def table_against_real(gens: dict, args: argparse.Namespace, dist, stem: Path, title: str, extra: dict
                       ) -> dict | None:
    """FID/KID of every generator against --real, written to <stem>.json/.md; the rows on main, else None."""
    from eval.fid import MetricConfig
    from eval.generator_table import fid_table, write_table
    from launch.fid import load_detector, open_source

    cfg = MetricConfig(args.preprocess, args.ddof, args.batch, args.kid, kid_seed=args.seed)
    detector, sha = load_detector(args, dist.device)
    real = open_source(args.real, args.max_real, args, dist.device, None)
    if real is None:
        raise ValueError("--real must be images (shards or a folder): KID and the table need features")
    rows = fid_table(gens, real, detector, sha, dist, cfg, args.num_gen, args.seed, args.truncation,
                     args.cache_dir or None)
    if dist.is_main:
        write_table(rows, stem, title, "generator", {**extra, "real": args.real, "detector_sha256": sha,
                                                     "num_gen": args.num_gen, "truncation": args.truncation})
    return rows


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from launch._args import run_and_print
    from trainer.model_io import CheckpointError

    return run_and_print(run, args, (FileNotFoundError, ValueError, CheckpointError))


if __name__ == "__main__":
    sys.exit(main())
