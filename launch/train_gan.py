"""Fine-tunes a StyleGAN2 on webtoon shards: ADA, FreezeD/FreezeG/FreezeSG, structure loss.

    accelerate launch -m launch.train_gan --config launch/configs/webtoon1024.yaml \\
        model.init=ffhq-1024.pt loader.data=s3://bucket/webtoon-shards
    accelerate launch -m launch.train_gan --resume latest run.dir=runs/00003-gan

Settings come from the config file, then ``key=value`` overrides (YAML values).
``--resume latest`` continues the newest complete checkpoint exactly (weights,
optimizers, ADA, RNG, data position); ``auto`` does so when one exists and
starts fresh otherwise (for resubmitted cluster jobs). A resumed run without
--config keeps the configuration stored in its checkpoint.
"""

from __future__ import annotations

import argparse
import sys

from launch._train import build_parser as _parser
from launch._train import run_training
from trainer.gan.config import GANConfig


def build_parser() -> argparse.ArgumentParser:
    return _parser("accelerate launch -m launch.train_gan", __doc__, GANConfig)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from trainer.gan.loop import training_loop
    from trainer.gan.state import resolve_start

    return run_training(args, GANConfig, resolve_start, training_loop)


if __name__ == "__main__":
    sys.exit(main())
