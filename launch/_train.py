"""What both training commands share: the parser, rank 0's resolution of the run, exit codes.

Exit status: 0 done, 2 a user error (configuration, data, checkpoint or weight
file, a run folder in use; the message names it), 3 losses that stayed NaN/Inf
(the last good state is saved), 75 stopped on request (a signal in
run.stop_signals, the stop file, the launcher gone) after a complete checkpoint:
requeue, or run the same command with --resume auto.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from datasets.errors import DataError
from trainer.model_io import CheckpointError as ModelFileError
from trainer.run.checkpoint import CheckpointError
from trainer.run.config import ConfigError, help_text, load_config, raw_config
from trainer.run.lock import FolderLock, LockedError
from trainer.run.start import RunConfig

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
    from trainer.run.stop import EXIT_REQUEUE, Stopped, StopRequest

    dist = Dist(timeout_s=collective_timeout(args))
    result, lock = None, None
    if dist.is_main:
        try:
            raw = raw_config(args.config, args.overrides)
            resume = args.resume or (raw.get("run") or {}).get("resume")
            start = resolve(raw, resume)
            cfg = load_config(cfg_cls, args.config, args.overrides, base=base_config(start, args.config is not None))
            lock = FolderLock(start.run_dir, prog_name(), log=lambda m: print(f"[lock] {m}", flush=True)).acquire()
            result = (start, cfg)
        except (*USER_ERRORS, LockedError) as e:
            result = f"{type(e).__name__}: {e}"
    result = dist.broadcast_object(result)
    if isinstance(result, str):
        if dist.is_main:
            print(f"error: {result}", file=sys.stderr)
        return 2
    start, cfg = result
    start.stop = StopRequest(cfg.run.stop_signals, cfg.run.stop_file).install()
    try:
        loop(cfg, dist, start).close()
    except USER_ERRORS as e:
        print(f"error (rank {dist.rank}): {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"error (rank {dist.rank}): {e}", file=sys.stderr)
        return 3
    except Stopped as e:
        if dist.is_main:
            print(f"[stop] {e}; exit {EXIT_REQUEUE}", file=sys.stderr, flush=True)
        return EXIT_REQUEUE
    except Exception as e:  # noqa: BLE001 - only collective failures are handled; the rest re-raise
        if not collective_failed(e):
            raise
        print(f"error (rank {dist.rank}): a collective failed: another process of this run died or stalled "
              f"longer than run.collective_timeout_s: {dist.gone_ranks()} ({first_line(e)}). "
              f"The last complete checkpoint is kept; "
              f"exit {EXIT_REQUEUE}: requeue, or run again with --resume auto.", file=sys.stderr, flush=True)
        if lock is not None:
            lock.release()
        os._exit(EXIT_REQUEUE)  # gloo/NCCL threads of a broken group can hang a normal interpreter exit
    finally:
        start.stop.uninstall()
        dist.release_own_group()
        if lock is not None:
            lock.release()
    return 0


def collective_failed(e: BaseException) -> bool:
    """A collective that failed because a peer is gone (gloo: connection closed; NCCL: watchdog)
    or stalled past the process group's timeout."""
    import torch.distributed as tdist

    if isinstance(e, getattr(tdist, "DistError", ())):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(k in text for k in (
        "Connection closed by peer", "Connection reset by peer", "gloo", "NCCL", "Timed out", "timed out"))


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def prog_name() -> str:
    return " ".join(["python -m", sys.modules["__main__"].__spec__.name if getattr(
        sys.modules["__main__"], "__spec__", None) else sys.argv[0]])


def collective_timeout(args: argparse.Namespace) -> float | None:
    """run.collective_timeout_s from --config and the overrides, read by every rank before the
    process group exists (the group's timeout is fixed when it is made). None: the default."""
    try:
        value = (raw_config(args.config, args.overrides).get("run") or {}).get("collective_timeout_s")
        return float(value) if value is not None else RunConfig.collective_timeout_s
    except (ConfigError, OSError, TypeError, ValueError):
        return None  # rank 0 reports the configuration error once the group exists
