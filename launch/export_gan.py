"""Exports a GAN checkpoint's G_ema, G and D to a rosinality .pt or our single-file format.

    python -m launch.export_gan --ckpt runs/00003-gan/checkpoints/latest --out webtoon.pt
    python -m launch.export_gan --ckpt runs/00003-gan/checkpoints/ckpt-000120000 --format toonmix --out g.pt

Works at any time, also while the run goes on (only complete checkpoints are
read), in one process on the CPU. ``--ckpt DIR/latest`` picks the newest
complete checkpoint under DIR. rosinality files load in rosinality's tools
(``g_ema``, ``g``, ``d``, ``latent_avg``).
"""

from __future__ import annotations

import argparse
import sys

from trainer.gan.setup import export_networks
from trainer.gan.state import load_networks
from trainer.run.checkpoint import CheckpointError, CheckpointManager


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.export_gan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint folder (ckpt-NNNNNNNNN) or <checkpoints>/latest")
    p.add_argument("--out", required=True, help="output .pt file")
    p.add_argument("--format", choices=["rosinality", "toonmix"], default="rosinality")
    p.add_argument("--nets", default="g_ema,g,d", help="comma list of g_ema, g, d to include (default: all)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    want = {n.strip().lower() for n in args.nets.split(",") if n.strip()}
    if not want or want - {"g_ema", "g", "d"}:
        print(f"error: --nets takes g_ema, g, d; got {args.nets!r}", file=sys.stderr)
        return 2
    try:
        ckpt = args.ckpt.rstrip("/")
        if ckpt.endswith("/latest") or ckpt == "latest":
            ckpt = CheckpointManager(ckpt[: -len("latest")].rstrip("/") or ".").resolve("latest")
        nets, meta = load_networks(ckpt)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    G_ema = nets["G_ema"] if "g_ema" in want else None
    if G_ema is None and "g" not in want:
        print("error: include g_ema or g", file=sys.stderr)
        return 2
    path = export_networks(args.out, args.format, G_ema if G_ema is not None else nets["G"],
                           nets["G"] if "g" in want and G_ema is not None else None,
                           nets["D"] if "d" in want else None, extra={"kimg": meta["nimg"] / 1000})
    print(f"wrote {path} ({args.format}; {', '.join(sorted(want))}; kimg {meta['nimg'] / 1000:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
