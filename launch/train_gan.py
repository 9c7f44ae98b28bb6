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

from datasets.errors import DataError
from trainer.checkpoint import CheckpointError
from trainer.config_io import ConfigError, help_text, load_config, raw_config
from trainer.gan_config import GANConfig
from trainer.model_io import CheckpointError as ModelFileError

USER_ERRORS = (ConfigError, DataError, CheckpointError, ModelFileError, FileNotFoundError)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="accelerate launch -m launch.train_gan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="configuration keys (key=value):\n" + help_text(GANConfig))
    p.add_argument("--config", help="YAML file with the run's settings (launch/configs/*.yaml)")
    p.add_argument("--resume", help='"latest", "auto" or a checkpoint folder URL (overrides run.resume)')
    p.add_argument("overrides", nargs="*", metavar="key=value", help="settings that override the file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from trainer.distributed import Dist  # after --help: joining the process group is not free
    from trainer.gan_state import base_config, resolve_start
    from trainer.train_gan import NonFiniteError, training_loop

    dist = Dist()
    # Rank 0 decides the run folder and checkpoint; every rank gets its answer (or its error).
    result = None
    if dist.is_main:
        try:
            raw = raw_config(args.config, args.overrides)
            resume = args.resume or (raw.get("run") or {}).get("resume")
            start = resolve_start(raw, resume)
            cfg = load_config(GANConfig, args.config, args.overrides, base=base_config(start, args.config is not None))
            result = (start, cfg)
        except USER_ERRORS as e:
            result = f"{type(e).__name__}: {e}"
    result = dist.broadcast_object(result)
    if isinstance(result, str):
        if dist.is_main:
            print(f"error: {result}", file=sys.stderr)
        return 2
    start, cfg = result
    try:
        training_loop(cfg, dist, start).close()
    except USER_ERRORS as e:
        print(f"error (rank {dist.rank}): {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"error (rank {dist.rank}): {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
