"""Trains a ReStyle-pSp encoder (source: photos -> FFHQ G; target: cartoons -> G_swap).

    accelerate launch -m launch.train_encoder --config launch/configs/restyle_source.yaml \\
        decoder.source=ffhq-1024.pt loader.data=shards/ffhq weights.dir=pretrained_models
    accelerate launch -m launch.train_encoder --config launch/configs/restyle_target.yaml \\
        decoder.source=ffhq-1024.pt decoder.target=runs/00003-gan/network-rosinality.pt \\
        loader.data=shards/webtoon weights.dir=pretrained_models
    accelerate launch -m launch.train_encoder --resume latest run.dir=runs/00004-encoder

Settings come from the config file, then ``key=value`` overrides (YAML values).
Missing loss-network weights stop the run before the first step. ``--resume
latest`` continues the newest complete checkpoint exactly (encoder, optimizer,
step, RNG, data position); the generator files are not needed to resume. At the
end (and every run.export_ticks) the run folder gets encoder-restyle.pt in
ReStyle's format, which ``launch.invert`` and ``launch.eval_encoder`` read.
"""

from __future__ import annotations

import argparse
import sys

from launch._train import build_parser as _parser
from launch._train import run_training
from trainer.encoder.config import EncoderRunConfig, EncoderTrainConfig


def build_parser() -> argparse.ArgumentParser:
    return _parser("accelerate launch -m launch.train_encoder", __doc__, EncoderTrainConfig)


def resolve_start(raw: dict, resume: str | None):
    from trainer.encoder.loop import ENCODER_META
    from trainer.run.start import resolve_start as resolve

    return resolve(raw, resume, EncoderRunConfig(), ENCODER_META)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from trainer.encoder.loop import training_loop

    return run_training(args, EncoderTrainConfig, resolve_start, training_loop)


if __name__ == "__main__":
    sys.exit(main())
