"""Closed-form factorization (SeFa): find a generator's strongest latent directions, then move along them.

    python -m launch.sefa --ckpt ffhq.pt --factors runs/sefa/ffhq.pt             # factorize, all layers
    python -m launch.sefa --ckpt ffhq.pt --factors runs/sefa/pose.pt --layers 0-1   # W+ 0-1 only (pose)
    python -m launch.sefa --ckpt ffhq.pt --factors runs/sefa/ffhq.pt --apply \\
        --index 0-4 --degree 5 --steps 7 --seeds 0-3 --truncation 0.7 --out runs/sefa/grid.png --video

Factorizing writes the eigenvectors of W^T W (W: the stacked style-affine
weights of the conv layers driven by --layers; tRGB with --trgb) and their
eigenvalues to --factors. --apply renders, for each latent (from --seeds, or
W/W+ latents from --latents: launch.project's .npz files or an .npy) and each
direction in --index, a row of images moved from -degree to +degree in
--steps steps; --video also writes an MP4 (H.264 through imageio-ffmpeg; a GIF
with --video-format gif or without it) sweeping the degree over the whole grid. With --g-target the generator is G_swap (--ckpt below --swap-res,
--g-target above), so source, target and swapped generators are handled alike.
Rosinality's factor files (eigvec) are read too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from launch._args import add_generator_args, add_video_args, int_list, latents_from, load_generator


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.sefa", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_generator_args(p)
    p.add_argument("--factors", required=True, help="factor file to write (or, with --apply, to read)")
    p.add_argument("--layers", type=int_list, default=None,
                   help="W+ entries whose layers are factorized and moved, e.g. 0-1 (default: all)")
    p.add_argument("--trgb", action="store_true", help="also stack the tRGB affines (rosinality leaves them out)")
    p.add_argument("--apply", action="store_true", help="render moves along the directions instead")
    p.add_argument("--index", type=int_list, default=[0, 1, 2, 3, 4], help="--apply: directions, e.g. 0-4")
    p.add_argument("--degree", type=float, default=5.0, help="--apply: the largest move, both ways")
    p.add_argument("--steps", type=int, default=7, help="--apply: images per row (odd: the middle is unmoved)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--seeds", type=int_list, default=None, help="--apply: z seeds (default 0-3)")
    src.add_argument("--latents", nargs="+", default=None, help="--apply: .npz from launch.project or .npy W/W+")
    p.add_argument("--truncation", type=float, default=0.7, help="--apply: truncation psi for --seeds")
    p.add_argument("--out", default=None, help="--apply: grid PNG (default: <factors>.png)")
    add_video_args(p, "--apply's sweep of the degree (<out> with .mp4 or .gif)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    return p


def start_latents(args: argparse.Namespace, G):
    """W+ [N, n_latent, D] to move: mapped seeds (truncated) or given latents."""
    return latents_from(G, args.seeds or [0, 1, 2, 3], args.latents, args.truncation, args.device)


def render_grid(G, factors, ws, args: argparse.Namespace):
    """[len(ws) * len(index) rows, steps columns] of uint8 images, and the degree of each column."""
    import torch
    from tqdm import tqdm

    from datasets.imageio import to_uint8
    from eval.sefa import move

    degrees = torch.linspace(-args.degree, args.degree, args.steps).tolist()
    rows = []
    with torch.no_grad():
        for w, k in tqdm([(w, k) for w in ws for k in args.index], desc="sefa rows", unit="row"):
            moved = torch.cat([move(w[None], factors, k, d) for d in degrees])
            rows.append(to_uint8(G.synthesis(moved, noise_mode="const").img))
    return rows, degrees


def write_outputs(rows, out: Path, video: bool, video_format: str = "mp4") -> Path | None:
    """The grid PNG, and with ``video`` the sweep (returns the video's path)."""
    import numpy as np
    from PIL import Image

    from datasets.imageio import save_video

    out.parent.mkdir(parents=True, exist_ok=True)
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    Image.fromarray(grid).save(out)
    if video:  # frame t: every row's t-th image, stacked
        frames = [np.concatenate([r[t] for r in rows], axis=0) for t in range(len(rows[0]))]
        frames = frames + frames[-2:0:-1]  # there and back
        return save_video(frames, out.with_name(out.stem), fps=8, fmt=video_format)
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from eval.sefa import Factors, factorize
    from trainer.model_io import CheckpointError

    try:
        if args.steps < 1 or args.degree < 0:
            raise ValueError("--steps must be >= 1 and --degree >= 0")
        G = load_generator(args, args.device)
        if not args.apply:
            factors = factorize(G, args.layers, args.trgb)
            factors.save(args.factors, generator=args.ckpt, g_target=args.g_target, trgb=args.trgb)
            print(json.dumps({"factors": args.factors, "directions": factors.directions.shape[0],
                              "layers": len(factors.layers), "w_indices": factors.w_indices,
                              "top_values": [round(float(v), 4) for v in factors.values[:5]]}))
            return 0
        factors = Factors.load(args.factors)
        if factors.directions.shape[1] != G.style_dim:
            raise ValueError(f"{args.factors}: directions of width {factors.directions.shape[1]}, "
                             f"the generator's W has {G.style_dim}")
        rows, degrees = render_grid(G, factors, start_latents(args, G), args)
    except (FileNotFoundError, ValueError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out or Path(args.factors).with_suffix(".png"))
    video = write_outputs(rows, out, args.video, args.video_format)
    print(json.dumps({"grid": str(out), "rows": len(rows), "degrees": degrees, "video": video and str(video)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
