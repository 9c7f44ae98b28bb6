"""The process group as the trainers see it: rank, device, gradient all-reduce, seeding.

``accelerate launch`` (or torchrun) starts the processes; ``accelerate``'s
``PartialState`` joins the process group (NCCL on GPUs, gloo with
``ACCELERATE_USE_CPU=1``). Models are never wrapped in DDP: after each
backward the trainer averages the gradients of exactly the parameters it
trains with one flattened all-reduce (as NVlabs does). That keeps frozen
parameters out of the communication, makes gradient penalties safe (no DDP
hooks to miss), and makes every rank hold identical weights by construction.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .lock import process_start


class Dist:
    """Rank, world and collectives; a no-op layer when run as one process."""

    def __init__(self, cpu: bool | None = None, timeout_s: float | None = None):
        from accelerate import PartialState  # only the launch layer knows about accelerate

        cpu = cpu if cpu is not None else os.environ.get("ACCELERATE_USE_CPU", "0").lower() in ("1", "true")
        # The timeout bounds every collective: ranks waiting for one that died fail after it
        # instead of hanging until the job's time limit.
        extra = {"timeout": timedelta(seconds=timeout_s)} if timeout_s else {}
        self.state = PartialState(cpu=cpu, **extra)
        self.rank, self.world = self.state.process_index, self.state.num_processes
        self.local_rank = self.state.local_process_index
        self.device = self.state.device
        self.is_main = self.state.is_main_process
        self._collectives = 0
        self._own_group = False  # a one-process group made by ensure_process_group
        self._announce()

    def _announce(self) -> None:
        """Leaves (host, pid) under this rank's key in the process group's store, so that a
        survivor of a failed collective can name the ranks that are gone."""
        if self.distributed:
            try:
                dist.distributed_c10d._get_default_store().set(
                    f"toonmix/rank{self.rank}", json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
            except Exception:  # noqa: BLE001 - naming ranks is a courtesy; training needs none of it
                pass

    def _arrive(self) -> None:
        """Counts this rank's collectives and leaves the count in the store (one small write per
        collective) before entering one, so that after a failed collective the ranks that never
        reached it can be named, whatever their host: a stalled rank as well as a dead one."""
        if self.distributed:
            self._collectives += 1
            try:
                dist.distributed_c10d._get_default_store().set(f"toonmix/reached{self.rank}", str(self._collectives))
            except Exception:  # noqa: BLE001 - as in _announce
                pass

    def gone_ranks(self) -> str:
        """After a failed collective: which ranks are missing, as far as the store tells."""
        try:
            store = dist.distributed_c10d._get_default_store()
            store.set_timeout(timedelta(seconds=2))
            return missing_ranks(store, self.rank, self.world)
        except Exception as e:  # noqa: BLE001 - the store may have died with rank 0
            return f"the ranks could not be checked ({type(e).__name__}; the store lives with rank 0)"

    def ensure_process_group(self) -> None:
        """Makes a one-process group when there is none (accelerate makes none for one process),
        for libraries that need one (DeepSpeed); ``release_own_group`` removes it again."""
        if dist.is_available() and dist.is_initialized():
            return
        # One rank needs no rendezvous: an in-memory store, no port.
        dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo", store=dist.HashStore(),
                                rank=0, world_size=1)
        self._own_group = True

    def release_own_group(self) -> None:
        """Destroys the group ``ensure_process_group`` made, so that a later run in this process
        starts clean; through DeepSpeed when it is loaded, which keeps its own reference to it."""
        if self._own_group:
            ds_comm = sys.modules.get("deepspeed.comm")
            if ds_comm is not None and ds_comm.is_initialized():
                ds_comm.destroy_process_group()
            else:
                dist.destroy_process_group()
            self._own_group = False

    @property
    def distributed(self) -> bool:
        return self.world > 1 and dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.distributed:
            self._arrive()
            dist.barrier()

    def close(self) -> None:
        """Waits for every rank, then tears the process group down: a process that exits with
        gloo's threads still running can abort ("terminate called without an active exception")."""
        if self.distributed:
            dist.barrier()
            dist.destroy_process_group()

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        """In-place mean over ranks (float tensors)."""
        if self.distributed:
            self._arrive()
            dist.all_reduce(t)
            t /= self.world
        return t

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            self._arrive()
            dist.all_reduce(t)
        return t

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.distributed:
            return obj
        box = [obj]
        self._arrive()
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def gather_objects(self, obj: Any) -> list[Any]:
        if not self.distributed:
            return [obj]
        out = [None] * self.world
        self._arrive()
        dist.all_gather_object(out, obj)
        return out

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` in rank order on the main process, None elsewhere (one copy
        of large results, e.g. evaluation features, instead of one per rank)."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world if self.is_main else None
        self._arrive()
        dist.gather_object(obj, out, dst=0)
        return out

    @torch.no_grad()
    def broadcast_module(self, module: nn.Module, src: int = 0) -> None:
        """Copies rank ``src``'s parameters and buffers to every rank (identical starts)."""
        if self.distributed:
            self._arrive()
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=src)

    @torch.no_grad()
    def average_gradients(self, params: list[nn.Parameter]) -> bool:
        """Averages the gradients of ``params`` over ranks in one flat all-reduce.

        A parameter without a gradient this step contributes zeros, so every
        rank reduces the same layout. Returns True when every averaged value
        is finite (the same answer on every rank, since the result is shared).
        """
        if not params:
            return True
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        self.all_reduce_mean(flat)
        finite = bool(torch.isfinite(flat).all())
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad = g.reshape(p.shape).to(p.dtype)
        return finite

    def any_flag(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on any."""
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return bool(self.all_reduce_sum(t).item() > 0)

    def max_memory_gib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        return 0.0


def missing_ranks(store: Any, rank: int, world: int) -> str:
    """Names, from what every rank left in the store: the ranks that never reached the collective
    this rank waits in (fewer collectives counted, whatever their host), the ranks of this host
    whose process is gone, and the other hosts' ranks, whose process cannot be checked from here.
    A rank stalled inside the very collective this one waits in has the same count: then no rank
    is "behind", and the message says so."""
    gone, unknown, behind = [], [], []
    reached = {r: _stored_int(store, f"toonmix/reached{r}") for r in range(world)}
    for r in range(world):
        if r == rank:
            continue
        if reached[r] is not None and reached[rank] is not None and reached[r] < reached[rank]:
            behind.append(f"{r} (never reached collective {reached[rank]}; its last was {reached[r]})")
        who = json.loads(store.get(f"toonmix/rank{r}"))
        if who["host"] != socket.gethostname():
            unknown.append(f"{r} ({who['host']})")
        elif process_start(int(who["pid"])) is None:
            gone.append(f"{r} (pid {who['pid']})")
    found = [f"rank(s) behind: {', '.join(behind)}" if behind else
             f"every rank reached collective {reached[rank]} (one may have stalled inside it)"]
    found.append(f"rank(s) gone: {', '.join(gone)}" if gone else "no rank of this host is gone")
    if unknown:
        found.append(f"processes on other hosts, not checkable here: {', '.join(unknown)}")
    return "; ".join(found)


def _stored_int(store, key: str) -> int | None:
    return int(store.get(key)) if store.check([key]) else None


def seed_rank(seed: int, rank: int, nimg: int = 0) -> None:
    """Seeds the global torch RNG (CPU and CUDA) from (seed, rank, images seen): distinct
    streams per rank, and a fresh but reproducible one when a run resumes at another
    world size."""
    g = torch.Generator().manual_seed(seed)
    mixed = int(torch.randint(2**31, (1,), generator=g)) ^ (rank * 1_000_003) ^ (nimg * 7919)
    torch.manual_seed(mixed % 2**63)


def rng_state() -> dict[str, torch.Tensor]:
    """This process's torch RNG states (CPU and its current CUDA device)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this rank's device only
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
