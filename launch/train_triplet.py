"""Fine-tunes a blended generator with a triplet loss over face embeddings (Fine-Tooning's method).

    accelerate launch -m launch.train_triplet --config launch/configs/triplet1024.yaml \\
        model.source=weights/stylegan2-ffhq-config-f.pt model.target=runs/00003-webtoon1024/network.pt \\
        weights.dir=weights
    accelerate launch -m launch.train_triplet --resume latest run.dir=runs/00007-triplet

The blend (source below model.swap_res, target above) learns to keep the face
embedding (ArcFace IR-SE50, weights.face or model_ir_se50.pth in weights.dir)
of its image close to the source generator's image of the same latent and far
from a more cartoon-like blend's (target from model.negative_swap_res up).
Samples come from the generators: no data. Run folders hold the resolved
config, log, stats.jsonl, TensorBoard events, a grid per tick (rows:
positives, the blend, negatives) and sharded checkpoints; ``--resume latest``
continues one exactly (it needs the generator and face files again); the end
exports the blend as network.pt and network-rosinality.pt.
"""

from __future__ import annotations

import argparse
import sys

from launch._train import build_parser as _parser
from launch._train import run_training
from trainer.triplet.config import TripletConfig, TripletRunConfig


def build_parser() -> argparse.ArgumentParser:
    return _parser("accelerate launch -m launch.train_triplet", __doc__, TripletConfig)


def resolve_start(raw: dict, resume: str | None):
    from trainer.run.start import resolve_start as resolve
    from trainer.triplet.loop import TRIPLET_META

    return resolve(raw, resume, TripletRunConfig(), TRIPLET_META)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from trainer.triplet.loop import training_loop

    return run_training(args, TripletConfig, resolve_start, training_loop)


if __name__ == "__main__":
    sys.exit(main())
