"""Inverts images into W+ with a trained ReStyle encoder: every refinement pass, batched.

    python -m launch.invert --encoder runs/00004-encoder/encoder-restyle.pt --images photos/ --out latents.npz
    python -m launch.invert --encoder runs/00004-encoder/checkpoints/latest --images shards/test \\
        --out latents.npz --iters 5 --recon recon/

``--encoder`` takes a ReStyle-format file (ours or ReStyle's own) or a training
checkpoint folder. ``--images`` is a folder of image files (any size or mode:
converted to RGB and resized to the encoder's input, with a count of what was
changed; unreadable files are skipped and listed) or a shard folder (every
sample once, in manifest order). The .npz holds ``latents`` [N, iters,
n_styles, style_dim] (float32, pass by pass), ``names`` [N] and ``latent_avg``.

Image files are resized as ReStyle's inference resizes them by default
(``--resize bilinear``: torchvision's ``Resize((256, 256))`` on a PIL image,
i.e. PIL's antialiased bilinear), so latents of images at another size match
ReStyle's; ``--resize lanczos`` is sharper, so inputs and latents differ slightly.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
import torch

from launch._args import add_inversion_args, inversion_device


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.invert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_inversion_args(p, "images to invert")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--recon", default=None, help="also write each final reconstruction as PNG into this folder")
    p.add_argument("--resize", choices=["bilinear", "lanczos"], default="bilinear",
                   help="PIL filter for image files of another size than the encoder's input: bilinear (default) "
                        "is ReStyle's transforms.Resize((256, 256)), so latents match ReStyle's inference; "
                        "lanczos is sharper, so inputs and latents differ slightly. Shard samples are always "
                        "resized with antialiased bilinear")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from datasets.errors import DataError
    from eval.encoder_metrics import rate_text
    from datasets.imageio import save_png, to_uint8
    from datasets.remote import atomic_write
    from trainer.encoder.data import ImageSource
    from trainer.encoder.formats import load_encoder
    from trainer.model_io import CheckpointError
    from trainer.run.checkpoint import CheckpointError as RunCheckpointError

    device = inversion_device(args)
    if device is None:
        return 2
    try:
        net = load_encoder(args.encoder).to(device)
        source = ImageSource(args.images, net.size, args.batch, args.limit, resample=args.resize)
        names, latents = [], []
        start, done = time.time(), 0
        for batch_names, x in source.batches():
            passes = net.invert(x.to(device), args.iters)
            latents.append(torch.stack([p.latent for p in passes], 1).cpu().numpy().astype(np.float32))
            names += batch_names
            if args.recon:
                for name, img in zip(batch_names, to_uint8(passes[-1].image)):
                    save_png(img, Path(args.recon) / (Path(name).with_suffix(".png")))
            done += len(batch_names)
            print(f"\rinverted {done} images ({rate_text(done, time.time() - start)})", end="", file=sys.stderr)
        print(file=sys.stderr)
    except (CheckpointError, RunCheckpointError, DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in source.report():
        print(line, file=sys.stderr)
    if not names:
        print(f"error: no readable images in {args.images}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()  # written whole, then renamed: an interruption never leaves half a file
    np.savez(buf, latents=np.concatenate(latents), names=np.array(names), latent_avg=net.latent_avg.cpu().numpy())
    atomic_write(str(out), buf.getvalue())
    print(f"wrote {out}: {len(names)} images x {args.iters} passes x {net.encoder.cfg.n_styles} W+ vectors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
