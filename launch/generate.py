"""Samples images from a StyleGAN2 checkpoint (rosinality, NVlabs or ours: detected).

    python -m launch.generate --ckpt ffhq.pt --seeds 0-7 --truncation 0.7 --outdir out/

Writes one PNG per latent (``seed0003.png`` or ``z0003.png``) and ``grid.png``;
``--raw`` also writes the float32 output, and ``--no-png`` writes only that.
A seed s draws z = numpy.random.RandomState(s).randn(z_dim), as NVlabs' tools
do, so seeds name the same latents across tools. ``--noise-mode const`` uses
the noise buffers stored in the checkpoint; ``random`` seeds torch with s.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from datasets.imageio import grid, save_png, to_uint8
from launch._args import fail, int_list
from trainer.model_io import CheckpointError, load_checkpoint


def parse_seeds(text: str) -> list[int]:
    """"0-7" / "1,5,9" / "0-3,10" -> non-negative seeds."""
    seeds = int_list(text)
    if min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"seeds must be non-negative integers, got {text!r}")
    return seeds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint: rosinality .pt, NVlabs .pkl or ours")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--seeds", type=parse_seeds, help="seeds, e.g. 0-7 or 1,5,9")
    src.add_argument("--z", type=Path, help=".npy array (N, z_dim) of latents, used as is")
    p.add_argument("--truncation", type=float, default=1.0, help="truncation psi (1: none)")
    p.add_argument("--noise-mode", choices=["const", "random", "none"], default="const")
    pngs = p.add_mutually_exclusive_group()
    pngs.add_argument("--outdir", type=Path, default=Path("generated"), help="folder for the PNGs")
    pngs.add_argument("--no-png", action="store_true",
                      help="write no PNGs and no grid (nor the --outdir folder); needs --raw")
    p.add_argument("--raw", type=Path, help="also write the float32 NCHW output, before clamping, here")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=8, help="latents per forward pass")
    return p


def latents(args, z_dim: int) -> tuple[np.ndarray, list[str]]:
    if args.seeds is not None:
        z = np.stack([np.random.RandomState(s).randn(z_dim) for s in args.seeds])
        return z, [f"seed{s:04d}" for s in args.seeds]
    try:
        z = np.load(args.z)
    except (OSError, ValueError) as e:
        fail(f"error: cannot read --z {args.z}: {e}")
    if z.ndim != 2 or z.shape[1] != z_dim:
        fail(f"error: --z must have shape (N, {z_dim}), got {z.shape}")
    return z, [f"z{i:04d}" for i in range(len(z))]


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.no_png and args.raw is None:
        fail("error: --no-png without --raw would write nothing: give --raw PATH.npy, or drop --no-png")
    if args.device == "cuda" and not torch.cuda.is_available():
        fail("error: --device cuda but no CUDA device is available")
    try:
        ck = load_checkpoint(args.ckpt)
    except CheckpointError as e:
        fail(f"error: {e}")
    G = ck.generator().to(args.device).eval()
    z, names = latents(args, G.style_dim)
    dest = ", ".join(([] if args.no_png else [str(args.outdir)]) + ([str(args.raw)] if args.raw else []))
    print(f"[generate] {ck.format} checkpoint, {G.size}px, {len(z)} images -> {dest}")
    imgs, raws = [], []
    for i in tqdm(range(0, len(z), args.batch), desc="generate", unit="batch"):
        torch.manual_seed(args.seeds[i] if args.seeds else i)
        zb = torch.from_numpy(z[i:i + args.batch]).float().to(args.device)
        out = G(zb, truncation_psi=args.truncation, noise_mode=args.noise_mode)
        if args.raw:
            raws.append(out.float().cpu().numpy())
        if not args.no_png:
            imgs.append(to_uint8(out))
    if not args.no_png:
        imgs_np = np.concatenate(imgs)
        for name, im in zip(names, imgs_np):
            save_png(im, args.outdir / f"{name}.png")
        save_png(grid(imgs_np), args.outdir / "grid.png")
        print(f"[generate] wrote {len(names)} PNGs and grid.png to {args.outdir}")
    if args.raw:
        args.raw.parent.mkdir(parents=True, exist_ok=True)
        np.save(args.raw, np.concatenate(raws).astype(np.float32))
        print(f"[generate] wrote {args.raw} (float32 {len(names)}x3x{G.size}x{G.size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
