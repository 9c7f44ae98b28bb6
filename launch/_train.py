"""What both training commands share: the parser, rank 0's resolution of the run, exit codes.

Exit status: 0 done, 2 a user error (configuration, data, checkpoint or weight
file; the message names it), 3 losses that stayed NaN/Inf (the last good
state is saved).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from datasets.errors import DataError
from trainer.model_io import CheckpointError as ModelFileError
from trainer.run.checkpoint import CheckpointError
from trainer.run.config import ConfigError, help_text, load_config, raw_config

USER_ERRORS = (ConfigError, DataError, CheckpointError, ModelFileError, FileNotFoundError)


def build_parser(prog: str, doc: str, cfg_cls: type) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="configuration keys (key=value):\n" + help_text(cfg_cls))
    p.add_argument("--config", help="YAML file with the run's settings (launch/configs/*.yaml)")
    p.add_argument("--resume", help='"latest", "auto" or a checkpoint folder URL (overrides run.resume)')
    p.add_argument("overrides", nargs="*", metavar="key=value", help="settings that override the file")
    return p


def run_training(args: argparse.Namespace, cfg_cls: type, resolve: Callable, loop: Callable) -> int:
    """Resolves the run on rank 0, hands every rank the answer (or the error), runs ``loop``."""
    from trainer.run.distributed import Dist  # after --help: joining the process group is not free
    from trainer.run.start import base_config
    from trainer.run.steps import NonFiniteError

    dist = Dist()
    result = None
    if dist.is_main:
        try:
            raw = raw_config(args.config, args.overrides)
            resume = args.resume or (raw.get("run") or {}).get("resume")
            start = resolve(raw, resume)
            cfg = load_config(cfg_cls, args.config, args.overrides, base=base_config(start, args.config is not None))
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
        loop(cfg, dist, start).close()
    except USER_ERRORS as e:
        print(f"error (rank {dist.rank}): {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"error (rank {dist.rank}): {e}", file=sys.stderr)
        return 3
    return 0
