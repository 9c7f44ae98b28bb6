"""Converts StyleGAN2 checkpoints between formats.

    python -m launch.convert --src stylegan2-ffhq-config-f.pkl --dst ffhq.pt --to rosinality
    python -m launch.convert --src ffhq.pt --dst ffhq.toonmix.pt --to toonmix

Reads rosinality ``.pt``, NVlabs stylegan2-ada-pytorch / stylegan3 (StyleGAN2
config) ``.pkl`` and our format (detected, or forced with ``--from``); writes
rosinality or ours. NVlabs pickles are not written: they must carry NVlabs'
network source code. G_ema, G and D are carried over when present; so are
rosinality's ``args`` (only when the source has them), ``ada_aug_p`` and
optimizer states.

rosinality files cannot hold everything: a discriminator whose minibatch-stddev
group is not 4 (NVlabs' paper256 uses 8) is refused with exit 2 unless
``--allow-mbstd-change`` is given, and a ``conv_clamp`` is dropped with a
warning (rosinality's networks do not clamp). Our format keeps both.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from trainer.model_io import (CheckpointError, FormatChangeWarning, MbstdChangeError, load_checkpoint,
                              save_checkpoint)
from launch._args import fail


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, type=Path, help="checkpoint to read")
    p.add_argument("--dst", required=True, type=Path, help="file to write (replaced atomically)")
    p.add_argument("--to", required=True, choices=["rosinality", "toonmix"], help="output format")
    p.add_argument("--from", dest="src_format", choices=["rosinality", "nvlabs", "toonmix"],
                   help="input format (default: detected)")
    p.add_argument("--allow-mbstd-change", action="store_true",
                   help="with --to rosinality: write a discriminator whose minibatch-stddev group is not 4 "
                        "anyway; the file then uses rosinality's fixed group 4, so D's logits change (a warning "
                        "names the change). Without it such a conversion is refused")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.src.resolve() == args.dst.resolve():
        fail("error: --dst must differ from --src")
    try:
        ck = load_checkpoint(args.src, args.src_format)
        with warnings.catch_warnings(record=True) as changes:
            warnings.simplefilter("always", FormatChangeWarning)
            save_checkpoint(args.dst, args.to, g_ema=ck.g_ema, g=ck.g, d=ck.d, extra=ck.extra,
                            allow_mbstd_change=args.allow_mbstd_change)
    except MbstdChangeError as e:
        fail(f"error: {args.src}: the discriminator's minibatch-stddev group size is {e.group}, but a rosinality "
             f"file always uses {e.fixed}, so the converted D would compute other logits; nothing was written. "
             f"Convert with --to toonmix to keep it, or pass --allow-mbstd-change to write group {e.fixed}")
    except CheckpointError as e:
        fail(f"error: {e}")
    for w in changes:
        if issubclass(w.category, FormatChangeWarning):
            print(f"warning: {w.message}", file=sys.stderr)
        else:  # not ours to swallow
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    parts = [n for n, m in (("g_ema", ck.g_ema), ("g", ck.g), ("d", ck.d)) if m is not None]
    print(f"[convert] {args.src} ({ck.format}) -> {args.dst} ({args.to}): {', '.join(parts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
