"""Layer-swap sweep: G_swap at several swap resolutions, side by side, with FID/KID against the target data.

    accelerate launch -m launch.swap_sweep --g-source weights/stylegan2-ffhq-config-f.pt \\
        --g-target runs/00003-webtoon1024/network.pt --resolutions 4,8,16,32,64,128,256 --seeds 0-7 \\
        --real shards/webtoon1024 --detector weights/inception-2015-12-05.pt --num-gen 5000 --kid \\
        --out runs/swap-sweep
    accelerate launch -m launch.swap_sweep --g-source ffhq.pt --g-target webtoon.pt \\
        --photos photos/ --encoder-source runs/00004-encoder/encoder-restyle.pt --out runs/sweep-photos

G_swap at resolution r takes the mapping network and every layer below r px from
--g-source and the rest from --g-target (CDSM uses 32). sheet.png has one row per
generator (source, swap<r>..., target) and one column per seed (z as
launch.generate draws it, mapped by each generator's own mapping network) or per
photo inverted by --encoder-source. With --real, sweep.json and sweep.md give the
FID (and KID) of every row against that data, all generators drawing the same z
and noise per sample, so the swap resolution can be chosen by measurement.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from launch._args import int_list


def build_parser() -> argparse.ArgumentParser:
    from launch.fid import add_detector_args

    p = argparse.ArgumentParser(prog="accelerate launch -m launch.swap_sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--g-source", required=True, help="the source (FFHQ) generator checkpoint")
    p.add_argument("--g-target", required=True, help="the fine-tuned (target) generator checkpoint")
    p.add_argument("--resolutions", type=int_list, default=[4, 8, 16, 32, 64, 128, 256],
                   help="swap resolutions (powers of two up to the generator's size)")
    latents = p.add_mutually_exclusive_group()
    latents.add_argument("--seeds", type=int_list, default=None, help="z seeds of the sheet's columns (default 0-7)")
    latents.add_argument("--photos", help="folder of photos inverted by --encoder-source instead")
    p.add_argument("--encoder-source", help="with --photos: the source encoder (encoder-restyle.pt)")
    p.add_argument("--iters", type=int, default=5, help="with --photos: encoder refinement passes")
    p.add_argument("--min-side", type=int, default=64, help="with --photos: smallest accepted photo side")
    p.add_argument("--truncation", type=float, default=1.0, help="truncation psi of the sheet and the samples")
    p.add_argument("--real", help="target data for FID/KID (shards, image folder); none: sheet only")
    p.add_argument("--num-gen", type=int, default=1000, help="generated images per row for FID/KID")
    p.add_argument("--max-real", type=int, default=None, help="use at most this many real images")
    p.add_argument("--kid", action="store_true", help="also KID")
    p.add_argument("--seed", type=int, default=0, help="seeds the FID samples and KID subsets")
    p.add_argument("--cache-dir", default=".cache/fid", help="reference statistics cache ('' disables)")
    p.add_argument("--out", required=True, help="output folder")
    add_detector_args(p)
    return p


def swapped_generators(S, T, resolutions: list[int]) -> dict:
    """{"source": S, "swap<r>": G_swap(r) ..., "target": T}."""
    from trainer.networks.swap import g_swap

    bad = [r for r in resolutions if r < 4 or r > S.size or r & (r - 1)]
    if bad:
        raise ValueError(f"--resolutions {bad}: each must be a power of two from 4 to {S.size}")
    return {"source": S, **{f"swap{r}": g_swap(S, T, r) for r in resolutions}, "target": T}


def sheet_latents(args: argparse.Namespace, gens: dict, device) -> dict:
    """W+ per generator for the sheet: seeds through each mapping, or inverted photos for all."""
    import torch

    from datasets.imageio import image_files
    from eval.cdsm_run import FaceCheck, read_batch
    from eval.generator_table import seed_latents
    from trainer.encoder.formats import load_encoder

    if args.photos:
        if not args.encoder_source:
            raise ValueError("--photos needs --encoder-source (the encoder that inverts them)")
        enc = load_encoder(args.encoder_source).to(device)
        files = image_files(args.photos, recursive=False)
        b = read_batch(files, list(range(len(files))), enc.size, FaceCheck(args.min_side))
        if b.images is None:
            raise FileNotFoundError(f"{args.photos}: no usable photos ({len(b.refused)} refused)")
        with torch.no_grad():
            ws = enc.invert(b.images.to(device), args.iters)[-1].latent
        return {name: ws for name in gens}
    z = seed_latents(args.seeds or list(range(8)), next(iter(gens.values())).style_dim).to(device)
    with torch.no_grad():
        return {name: G.truncate(G.broadcast(G.mapping(z)), args.truncation) for name, G in gens.items()}


def run(args: argparse.Namespace, dist) -> dict:
    from eval.generator_table import sheet
    from launch.compare import table_against_real
    from trainer.model_io import load_checkpoint

    out = Path(args.out)
    S = load_checkpoint(args.g_source).generator().to(dist.device).eval()
    T = load_checkpoint(args.g_target).generator().to(dist.device).eval()
    gens = swapped_generators(S, T, args.resolutions)
    ws = sheet_latents(args, gens, dist.device)  # on every rank: a bad --photos fails them all alike
    if dist.is_main:
        sheet(gens, ws, out / "sheet.png")
    result = {"rows": list(gens), "sheet": str(out / "sheet.png")}
    if not args.real:
        return result
    rows = table_against_real(gens, args, dist, out / "sweep", "Layer-swap sweep",
                              {"g_source": args.g_source, "g_target": args.g_target})
    return {} if rows is None else {**result, "fid": {k: v["fid"] for k, v in rows.items()}}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from launch._args import run_and_print
    from trainer.model_io import CheckpointError

    return run_and_print(run, args, (FileNotFoundError, ValueError, CheckpointError))


if __name__ == "__main__":
    sys.exit(main())
