"""Reports an encoder's reconstruction quality per refinement pass on held-out images.

    python -m launch.eval_encoder --encoder runs/00004-encoder/encoder-restyle.pt \\
        --images shards/ffhq-test --weights-dir pretrained_models --out metrics.json

Metrics per pass: L2 (mean squared error in [-1, 1]), LPIPS (alex or vgg), ID
similarity (ArcFace IR-SE50 cosine between input and reconstruction; reported
when model_ir_se50.pth is found) and MS-SSIM (fewer scales below 161 px: the
report says how many). Prints one JSON object as the last line; ``--out``
also writes it to a file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from launch._args import add_inversion_args, inversion_device


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.eval_encoder", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_inversion_args(p, "held-out images")
    p.add_argument("--weights-dir", default=None, help="folder with the public weight files under their names")
    p.add_argument("--lpips-net", choices=["alex", "vgg"], default="alex", help="LPIPS feature network")
    p.add_argument("--lpips-backbone", default=None, help="alexnet-owt-7be5be79.pth / vgg16-397923af.pth")
    p.add_argument("--lpips-lin", default=None, help="the lpips package's alex.pth / vgg.pth")
    p.add_argument("--arcface", default=None, help="model_ir_se50.pth (ID similarity; skipped when absent)")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS (no weights at hand)")
    p.add_argument("--no-check-hashes", action="store_true", help="do not verify torchvision file hashes")
    p.add_argument("--out", default=None, help="also write the JSON report here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from datasets.errors import DataError
    from datasets.remote import atomic_write
    from eval.encoder_metrics import evaluate
    from trainer.encoder.data import ImageSource
    from trainer.encoder.formats import load_encoder
    from trainer.model_io import CheckpointError
    from trainer.networks.face_id import FaceID
    from trainer.networks.lpips import LPIPS
    from trainer.run.checkpoint import CheckpointError as RunCheckpointError
    from trainer.run.inputs import weight_path

    device = inversion_device(args)
    if device is None:
        return 2
    check = not args.no_check_hashes
    try:
        lpips = None
        if not args.no_lpips:
            backbone = weight_path(args.lpips_backbone, args.weights_dir, "alexnet" if args.lpips_net == "alex" else "vgg16")
            lin = weight_path(args.lpips_lin, args.weights_dir, f"lpips_{args.lpips_net}")
            lpips = LPIPS.from_files(args.lpips_net, backbone, lin, check_hash=check).to(device)
        arcface = weight_path(args.arcface, args.weights_dir, "ir_se50")
        face_id = FaceID.from_file(arcface, check_hash=check).to(device) if arcface else None
        if face_id is None:
            print("note: no model_ir_se50.pth (--arcface or --weights-dir): ID similarity not reported", file=sys.stderr)
        net = load_encoder(args.encoder).to(device)
        source = ImageSource(args.images, net.size, args.batch, args.limit)
        report = evaluate(net, source.batches(), args.iters, lpips, face_id, device)
    except (CheckpointError, RunCheckpointError, DataError, FileNotFoundError) as e:
        hint = " (or pass --no-lpips)" if "LPIPS" in str(e) else ""
        print(f"error: {e}{hint}", file=sys.stderr)
        return 2
    for line in source.report():
        print(line, file=sys.stderr)
    report.update({"encoder": str(args.encoder), "images_path": args.images, "lpips_net": args.lpips_net if lpips else None})
    line = json.dumps(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out, (line + "\n").encode())
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
