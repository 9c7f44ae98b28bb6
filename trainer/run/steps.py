"""Pieces of a training step both trainers share: the loader, the synchronised optimizer step."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Callable

import torch

from datasets.errors import DataError
from datasets.loader import LoaderConfig, ShardLoader
from trainer.run.config import ConfigError
from trainer.run.distributed import Dist, seed_rank, set_rng_state
from trainer.run.loss_scale import DynamicLossScale


class NonFiniteError(RuntimeError):
    """Losses or gradients stayed NaN/Inf for run.max_nonfinite consecutive steps."""


def check_batch(batch: int, world: int, batch_gpu: int | None = None) -> tuple[int, int]:
    """(per-rank batch, micro-batch) after checking they divide evenly."""
    if batch % world:
        raise ConfigError(f"optim.batch={batch} does not divide by {world} processes")
    per_rank = batch // world
    micro = batch_gpu or per_rank
    if per_rank % micro:
        raise ConfigError(f"per-process batch {per_rank} does not divide by optim.batch_gpu={micro}")
    return per_rank, micro


def counters(step: int, nimg: int, tick: int, tick_nimg: int, nonfinite: int) -> dict[str, torch.Tensor]:
    """Training counters as int64 tensors (checkpointed in place)."""
    return {k: torch.tensor(v, dtype=torch.int64) for k, v in
            dict(step=step, nimg=nimg, tick=tick, tick_nimg=tick_nimg, nonfinite=nonfinite).items()}


def make_loader(cfg: LoaderConfig, per_rank: int, dist: Dist, seed: int, key: str = "loader.data") -> ShardLoader:
    """This rank's training stream of ``per_rank``-image batches; errors name the setting."""
    try:
        loader = ShardLoader(replace(cfg, batch_size=per_rank, seed=seed), dist.rank, dist.world)
    except DataError as e:
        raise DataError(f"{key}={cfg.data}: {e}") from e
    if loader.shards.total == 0:
        raise DataError(f"{key}={cfg.data} holds no samples: write shards first "
                        "(python -m launch.make_shards --help)")
    return loader


def synced_step(name: str, params: list[torch.nn.Parameter], opt: torch.optim.Optimizer,
                scale: DynamicLossScale, dist: Dist, check_sync: bool) -> bool:
    """Averages the accumulated gradients over ranks and steps unless they are non-finite.

    Returns whether the optimizer stepped (the same answer on every rank). The
    gradients are cleared afterwards: no stale ``.grad`` may meet a checkpoint load.
    """
    finite = dist.average_gradients(params)
    if check_sync:
        assert_in_sync(dist, name, params)
    stepped = scale.unscale_and_check(params, finite)
    if stepped:
        opt.step()
    opt.zero_grad(set_to_none=True)
    return stepped


def assert_in_sync(dist: Dist, name: str, params: list[torch.nn.Parameter]) -> None:
    """Raises unless every rank holds bitwise-identical gradients and weights for ``params``."""
    digest = hashlib.sha256()
    for p in params:
        digest.update(p.detach().cpu().numpy().tobytes())
        if p.grad is not None:
            digest.update(p.grad.detach().cpu().numpy().tobytes())
    seen = dist.gather_objects(digest.hexdigest())
    if len(set(seen)) != 1:
        raise RuntimeError(f"{name}: ranks disagree on gradients or weights ({seen})")


def restore_rank(rank_state: dict | None, meta: dict, dist: Dist, seed: int, loader: ShardLoader,
                 new_loader: Callable[[int], ShardLoader]) -> ShardLoader:
    """This rank's RNG and data position after a resume; returns the loader to continue with.

    At the saving world size the RNG continues exactly; at another it is reseeded from
    (seed, rank, images seen). A rank the saving run did not have gets a fresh stream
    (``new_loader(seed)``), not a replay of the first images.
    """
    restore_rng(rank_state, meta, dist, seed)
    if rank_state is None:
        return new_loader(seed + int(meta["nimg"]) * dist.world + dist.rank)
    loader.load_state_dict(rank_state["loader"])
    return loader


def restore_rng(rank_state: dict | None, meta: dict, dist: Dist, seed: int) -> None:
    """This rank's RNG after a resume: exact at the saving world size, else reseeded from
    (seed, rank, images seen)."""
    if rank_state is not None and int(meta["world"]) == dist.world:
        set_rng_state(rank_state["rng"])
    else:
        seed_rank(seed, dist.rank, int(meta["nimg"]))


def resumed_note(path: str, meta: dict, world: int, changed: list[str]) -> str:
    return (f"resumed from {path} at kimg {int(meta['nimg']) / 1000:.3f} ({meta['world']} -> {world} processes)"
            + (f"; changed: {', '.join(changed)}" if changed else ""))
