"""Sharded, resumable checkpoints on any fsspec URL, shared by both trainers.

    ckpt = CheckpointManager("s3://bucket/run-7/checkpoints", keep=3, rank=rank, world=world)
    state = {"G": G, "D": D, "G_ema": G_ema, "G_opt": OptimizerState(G, G_opt),
             "progress": {"nimg": 0, "ada_p": torch.zeros(())}}
    ckpt.save(step, state, rank_state={"rng": rng_state(), "loader": loader.state_dict()}, meta={...})
    rank_state, meta = ckpt.load(ckpt.resolve("latest"), state)

One folder per step, ``ckpt-000001200/``: the ``torch.distributed.checkpoint``
(DCP) files of the replicated state (``.metadata``, ``__<rank>_0.distcp``),
``rank00000.pt``... with each rank's private state (RNG, data position),
``meta.json``, and last the ``COMPLETE`` marker. A folder without the marker
is a crash mid-save and is never loaded. DCP dedups replicated tensors (each
written once, spread over the ranks) and stores optimizer state by parameter
name, so a run saved on N processes resumes on M.

Loading runs no code from the folder: the marker must list ``.metadata``,
``meta.json`` and every data file, each of the listed size; ``.metadata`` and
the non-tensor values DCP pickles go through ``trainer.run.safe_dcp`` (an
allow-list unpickler, ``weights_only=True``), the rank files through
``weights_only=True``.
"""

from __future__ import annotations

import errno
import io
import json
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.checkpoint.stateful import Stateful

from datasets.remote import atomic_write, exists, fs_and_path, join, read_bytes, write_json
from trainer.model_io.errors import CheckpointError as FileError

from .safe_dcp import MAX_METADATA_BYTES, SafeLoadPlanner, SafeReader, data_files, read_metadata

MARKER, META, DCP_META = "COMPLETE", "meta.json", ".metadata"
_NAME = re.compile(r"^ckpt-(\d{9})$")


class CheckpointError(FileError, RuntimeError):
    """A checkpoint that is missing, incomplete, truncated, unreadable or unsafe; the message names it.
    Also a ``trainer.model_io`` CheckpointError: commands that refuse a bad model file refuse
    a bad checkpoint folder the same way (exit 2)."""


class OptimizerState(Stateful):
    """An optimizer as DCP sees it: state keyed by parameter name, so it reshards and
    survives a reordering of ``optimizer.param_groups``. The optimizer may hold a
    subset of the model's parameters (frozen ones left out)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict:
        return get_optimizer_state_dict(self.model, self.optimizer)

    def clear_grads(self) -> None:
        # DCP's loader builds its template by stepping a fresh optimizer with zero
        # gradients, and skips that step when any .grad exists: the template then has
        # no exp_avg & co. and the saved moments are silently dropped. Must run before
        # state_dict() is called for loading, which is why load() calls it first.
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                p.grad = None

    def load_state_dict(self, state_dict: dict) -> None:
        self.clear_grads()
        set_optimizer_state_dict(self.model, self.optimizer, state_dict)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _barrier() -> None:
    if _distributed():
        dist.barrier()


def _plain(state: dict) -> dict:
    """A new nested dict with every Stateful replaced by its state_dict(). DCP itself
    only unwraps Stateful objects at the top level; this lets ``{"nets": {"G": G}}`` work."""
    out = {}
    for k, v in state.items():
        out[k] = v.state_dict() if isinstance(v, Stateful) else _plain(v) if isinstance(v, dict) else v
    return out


def _apply(state: dict, loaded: dict) -> None:
    """Hands loaded values back: load_state_dict for Statefuls, replacement for the rest
    (tensors were already filled in place by DCP, so their identity is kept)."""
    for k, v in state.items():
        if isinstance(v, Stateful):
            v.load_state_dict(loaded[k])
        elif isinstance(v, dict):
            _apply(v, loaded[k])
        else:
            state[k] = loaded[k]


def _walk(state: dict) -> Iterator[Any]:
    for v in state.values():
        yield from _walk(v) if isinstance(v, dict) else (v,)


def _reason(e: BaseException) -> str:
    """The last line of each rank's failure (DCP wraps them in a CheckpointException)."""
    fails = getattr(e, "failures", None)
    if fails:
        return "; ".join(f"rank {r}: {type(x).__name__}: {x}".splitlines()[0] for r, (x, _) in fails.items())
    return f"{type(e).__name__}: {e}".splitlines()[0]


def _chain(e: BaseException | None) -> Iterator[BaseException]:
    """``e`` and the exceptions it was raised from."""
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


def _read(url: str, parse: Callable[[bytes], Any]) -> Any:
    try:
        return parse(read_bytes(url))
    except FileError as e:  # safe_dcp's refusals and damage reports: they say what is wrong already
        raise CheckpointError(f"{url}: {e}") from e
    except Exception as e:
        raise CheckpointError(f"corrupt or unreadable checkpoint file {url}: {_reason(e)}") from e


def _run_dcp(save: bool, sd: dict, path: str, metadata: Metadata | None = None) -> None:
    """dcp.save, or dcp.load with already checked ``metadata``, at an fsspec URL, with or without
    a process group; DCP's failures (a BaseException, which `except Exception` would miss)
    become CheckpointErrors."""
    try:
        with warnings.catch_warnings():  # DCP warns on every call without a process group
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            if save:
                dcp.save(sd, storage_writer=FsspecWriter(path), no_dist=not _distributed())
            else:
                dcp.load(sd, storage_reader=SafeReader(path, metadata), planner=SafeLoadPlanner(),
                         no_dist=not _distributed())
    except (Exception, dcp.CheckpointException) as e:
        raise CheckpointError(f"cannot {'save' if save else 'load'} checkpoint {path}: {_reason(e)}") from e


class CheckpointManager:
    """Saves, lists, prunes and loads ``{root}/ckpt-{step:09d}/`` folders (see module doc)."""

    def __init__(self, root: str, keep: int = 3, rank: int = 0, world: int = 1):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.root, self.keep, self.rank, self.world = str(root).rstrip("/"), keep, rank, world

    def folder(self, step: int) -> str:
        return join(self.root, f"ckpt-{step:09d}")

    # ------------------------------------------------------------------ saving

    def save(self, step: int, state: dict, rank_state: dict, meta: dict) -> str:
        """Writes checkpoint ``step`` (every rank calls it); returns the folder URL.

        A failure at any point (a full disk, a crash) leaves the folder without its marker,
        which no load reads; older checkpoints are pruned only after the new one is complete."""
        try:
            return self._save(step, state, rank_state, meta)
        except (CheckpointError, OSError) as e:
            if isinstance(e, CheckpointError) and "rank_state must hold" in str(e):
                raise
            kept = self.latest()
            full = any(getattr(x, "errno", None) == errno.ENOSPC for x in _chain(e)) or "No space left" in str(e)
            raise CheckpointError(
                f"checkpoint {self.folder(step)} was not completed: {_reason(e)}"
                + ("; the disk is full: free space or set run.ckpt_url elsewhere" if full else "")
                + (f". The newest complete checkpoint, {kept}, is kept and --resume auto starts there"
                   if kept else ". No earlier complete checkpoint exists")) from e

    def _save(self, step: int, state: dict, rank_state: dict, meta: dict) -> str:
        path = self.folder(step)
        buf = io.BytesIO()
        torch.save(rank_state, buf)
        try:  # fail now, not at resume time, on values the safe loader refuses (numpy arrays...)
            torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
        except Exception as e:
            raise CheckpointError(f"rank_state must hold tensors, bytes and python values only: {e}") from e
        if self.rank == 0 and exists(path):
            self._remove(path)  # a stale or incomplete folder of the same step
        _barrier()
        _run_dcp(True, _plain(state), path)
        atomic_write(join(path, f"rank{self.rank:05d}.pt"), buf.getvalue())
        _barrier()
        if self.rank == 0:
            write_json(join(path, META), meta)
            # Sizes of every file, so that load() names a truncated one before DCP trips on it.
            fs, p = fs_and_path(path)
            fs.invalidate_cache(p)  # object stores cache listings; other ranks just wrote here
            files = {info["name"].rstrip("/").rsplit("/", 1)[-1]: int(info["size"])
                     for info in fs.ls(p, detail=True) if info["type"] == "file"}
            write_json(join(path, MARKER), {"step": step, "world": self.world, "files": files})
            try:  # the new checkpoint is complete: a pruning cut short only leaves old folders behind
                self._prune()
            except OSError as e:
                print(f"[checkpoint] could not remove an old checkpoint under {self.root} ({_reason(e)}); "
                      "a folder without its marker is never loaded and is removed by a later save",
                      file=sys.stderr, flush=True)
        _barrier()
        return path

    def _remove(self, path: str) -> None:
        fs, p = fs_and_path(path)
        marker = join(p, MARKER)
        if fs.exists(marker):
            fs.rm(marker)  # first: a deletion cut short must not leave a "complete" half folder
        fs.rm(p, recursive=True)

    def _prune(self) -> None:
        complete = self.list_complete()
        if not complete:
            return
        newest = complete[-1][0]
        doomed = [p for _, p in complete[:-self.keep]]
        doomed += [p for s, p, ok in self._folders() if not ok and s < newest]
        for p in doomed:
            self._remove(p)

    # ---------------------------------------------------------------- finding

    def _folders(self) -> list[tuple[int, str, bool]]:
        """(step, url, complete) of every ckpt-* folder under root, oldest first."""
        fs, p = fs_and_path(self.root)
        if not fs.exists(p):
            return []
        out = []
        for name in fs.ls(p, detail=False):
            base = name.rstrip("/").rsplit("/", 1)[-1]
            m = _NAME.match(base)
            if m:
                url = join(self.root, base)
                out.append((int(m.group(1)), url, exists(join(url, MARKER))))
        return sorted(out)

    def list_complete(self) -> list[tuple[int, str]]:
        """(step, url) of every complete checkpoint, oldest first."""
        return [(s, p) for s, p, ok in self._folders() if ok]

    def latest(self) -> str | None:
        complete = self.list_complete()
        return complete[-1][1] if complete else None

    def resolve(self, spec: str) -> str:
        """``"latest"`` (under root) or a checkpoint folder path/URL -> a complete folder."""
        if spec == "latest":
            path = self.latest()
            if path is None:
                raise CheckpointError(f"no complete checkpoint under {self.root} (no ckpt-*/{MARKER})")
            return path
        path = str(spec).rstrip("/")
        if not exists(path):
            raise CheckpointError(f"checkpoint folder not found: {path}")
        if not exists(join(path, MARKER)):
            raise CheckpointError(f"checkpoint {path} is incomplete (no {MARKER} marker): "
                                  "the save was interrupted; resume from an older one")
        return path

    # ---------------------------------------------------------------- loading

    def _check_files(self, path: str) -> tuple[int, Metadata]:
        """Checks the files listed in the marker and DCP's metadata; returns the world size
        that saved them and the metadata."""
        marker = _read(join(path, MARKER), json.loads)
        files, world = (marker.get("files"), marker.get("world")) if isinstance(marker, dict) else (None, None)
        if (not isinstance(files, dict) or type(world) is not int or world < 1
                or not all(type(s) is int and "/" not in n and n not in ("", ".", "..") for n, s in files.items())):
            raise CheckpointError(f"malformed {join(path, MARKER)}: expected {{'world': N, 'files': {{name: size}}}}")
        if DCP_META not in files or META not in files:
            raise CheckpointError(f"{join(path, MARKER)} does not list {DCP_META} and {META}: not a checkpoint "
                                  "that CheckpointManager wrote")
        fs, p = fs_and_path(path)
        for name, size in files.items():
            got = fs.size(join(p, name)) if fs.exists(join(p, name)) else None
            if got != size:
                raise CheckpointError(f"checkpoint file missing, truncated or changed: {join(path, name)} "
                                      f"({got} bytes, {size} when written)")
        if files[DCP_META] > MAX_METADATA_BYTES:  # refused before it is read into memory
            raise CheckpointError(f"{join(path, DCP_META)}: {files[DCP_META]} bytes, more than checkpoint metadata "
                                  f"ever needs ({MAX_METADATA_BYTES})")
        metadata = _read(join(path, DCP_META), read_metadata)
        unlisted = sorted(data_files(metadata) - set(files))
        if unlisted:  # sizes unchecked: DCP would read them blindly
            raise CheckpointError(f"{join(path, DCP_META)} points into files {MARKER} does not list: {unlisted[:5]}")
        return world, metadata

    def load(self, path: str, state: dict) -> tuple[dict | None, dict]:
        """Loads the replicated state into ``state`` in place (every rank calls it; any world
        size). Returns (this rank's rank_state, or None when the checkpoint was written by
        fewer ranks than this rank's index; meta)."""
        path = self.resolve(path)
        saved_world, metadata = self._check_files(path)
        for v in _walk(state):
            if isinstance(v, OptimizerState):
                v.clear_grads()  # before DCP asks for the template (see clear_grads)
        loaded = _plain(state)
        _run_dcp(False, loaded, path, metadata)
        try:
            _apply(state, loaded)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:  # stored values of the wrong kind or shape
            raise CheckpointError(f"checkpoint {path} does not fit this state: {_reason(e)}") from e
        rank_state = None
        if self.rank < saved_world:
            safe_load = lambda b: torch.load(io.BytesIO(b), weights_only=True)  # noqa: E731
            rank_state = _read(join(path, f"rank{self.rank:05d}.pt"), safe_load)
        return rank_state, _read(join(path, META), json.loads)
