"""The optimizer step every trainer shares: the trainer's own all-reduce, or DeepSpeed ZeRO 1/2.

A trainer makes one ``OptimizerStep`` per optimizer with ``make_step`` and calls
``backward(scaled_loss)`` per micro-batch or pass, then ``step()`` once (True when the
optimizer stepped: the same answer on every rank). ``dist.zero_stage`` picks:

- 0, ``AllReduceStep``: every rank holds the whole optimizer state; the gradients of
  exactly the trainable parameters are averaged by one flat all-reduce (``Dist``).
- 1 or 2, ``ZeroStep``: a DeepSpeed engine built with ``deepspeed.initialize`` over the
  trainable parameters and the trainer's own optimizer. Stage 1 partitions the optimizer
  state over the ranks, stage 2 the gradients too; ``offload_optimizer: cpu`` keeps the
  partition and its step in CPU memory. The networks are still called directly (never
  through the engine, which breaks double backward and frozen networks at stage 2), the
  engine only runs ``backward`` and ``step``. The engine stays float32: mixed precision
  is the trainer's own (fp16 blocks, autocast) with its own loss scale, which the engine
  is told so that it unscales, detects overflow across ranks and skips the step itself.

Checkpoints do not depend on the backend: ``ZeroOptimizerState`` gathers the partitioned
Adam state into the dict a plain Adam gives (``OptimizerState``) with DeepSpeed's public
``safe_get_full_optimizer_state``, and scatters it back with ``safe_set_full_*``, so a
run saved under ZeRO-2 on 2 processes resumes under ZeRO-0 on 1 and the reverse.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

from trainer.run.checkpoint import OptimizerState
from trainer.run.config import ConfigError
from trainer.run.distributed import Dist
from trainer.run.loss_scale import DynamicLossScale
from trainer.run.steps import assert_in_sync, synced_step

__all__ = ["AllReduceStep", "DistConfig", "OptimizerStep", "ZeroOptimizerState", "ZeroStep", "check_dist_config",
           "deepspeed_config", "make_step"]


@dataclass
class DistConfig:
    """How gradients and optimizer state are spread over the processes (every trainer)."""

    zero_stage: int = 0
    """0: every rank holds the whole optimizer state and the trainer averages the gradients
    with one all-reduce. 1: DeepSpeed ZeRO-1 partitions the optimizer state over the ranks
    (Adam's two moments: 8 bytes per trainable parameter, divided by the ranks). 2: ZeRO-2
    partitions the gradients too. Stage 3 (partitioned weights) is not offered: it is for
    models that do not fit one GPU, and the 1024 px GAN and the ReStyle encoder do."""
    offload_optimizer: Literal["none", "cpu"] = "none"
    """cpu: the optimizer state, the float32 master partition and the Adam step live in CPU
    memory (ZeRO-Offload; needs zero_stage 1 or 2 and Adam): for one small GPU."""
    reduce_bucket_size: int = 50_000_000
    """Elements per gradient reduce bucket, at most the network's trainable parameters. The
    bucket is a float32 buffer on every GPU (200 MB at this default; DeepSpeed's own default
    of 5e8 would be 2 GB, more than the 1024 px GAN's whole optimizer state); smaller buckets
    use less memory and more collectives."""
    allgather_bucket_size: int = 50_000_000
    """Elements per bucket of the all-gather that hands the updated weights to every rank
    (at most the network's trainable parameters; both sizes are rounded up to a multiple of 8)."""


def check_dist_config(cfg: DistConfig, optimizer: str = "adam") -> None:
    """Raises ConfigError for a setting that cannot run; ``optimizer`` names the trainer's."""
    if cfg.zero_stage == 3:
        raise ConfigError("dist.zero_stage=3 is not offered: stage 3 partitions the weights themselves, for models "
                          "that do not fit one GPU; the 1024 px GAN and the ReStyle encoder fit, so use 1 or 2 (and "
                          "dist.offload_optimizer=cpu for a small GPU)")
    if cfg.zero_stage not in (0, 1, 2):
        raise ConfigError(f"dist.zero_stage must be 0, 1 or 2, got {cfg.zero_stage}")
    if cfg.offload_optimizer not in ("none", "cpu"):
        raise ConfigError(f"dist.offload_optimizer must be none or cpu, got {cfg.offload_optimizer!r}")
    if cfg.offload_optimizer == "cpu" and cfg.zero_stage == 0:
        raise ConfigError("dist.offload_optimizer=cpu needs dist.zero_stage=1 or 2 (DeepSpeed offloads the "
                          "partitioned optimizer state)")
    if cfg.zero_stage and optimizer != "adam":
        raise ConfigError(f"optim.optimizer={optimizer} cannot run under dist.zero_stage={cfg.zero_stage}: its "
                          "checkpoint state is not one DeepSpeed can gather; use optim.optimizer=adam "
                          "(or zero_stage=0)")
    for key in ("reduce_bucket_size", "allgather_bucket_size"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"dist.{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.zero_stage and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("dist.zero_stage > 0 needs DeepSpeed: pip install -r requirements.txt")


def deepspeed_config(cfg: DistConfig, world: int, cuda: bool, n_params: int | None = None) -> dict:
    """The engine's configuration for a network of ``n_params`` trainable parameters. Each
    entry here is one the trainers depend on."""
    def cap(n: int) -> int:
        """A bucket beyond the network is waste; DeepSpeed wants multiples of its alignment."""
        n = min(n, n_params) if n_params else n
        return -(-n // 8) * 8
    zero = {"stage": cfg.zero_stage, "reduce_bucket_size": cap(cfg.reduce_bucket_size),
            "allgather_bucket_size": cap(cfg.allgather_bucket_size),
            "overlap_comm": False, "contiguous_gradients": True}
    if cfg.offload_optimizer == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cuda}
    # Overflow (an fp16 step to skip) is detected through the gradient norm in float32 engines.
    zero["compute_grad_norm"] = True
    return {
        # One engine step per trainer phase; the micro-batches are the trainer's, so these
        # only satisfy DeepSpeed's batch bookkeeping.
        "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "train_batch_size": world,
        # Several backward calls (micro-batches, refinement passes) before one step: the
        # engine's own accumulation counting diverges from the all-reduce (about 1e-2) then.
        "managed_gradient_accumulation": False,
        # DeepSpeed 0.19 clips at 1.0 unless told otherwise; these trainers never clip.
        "gradient_clipping": 0.0,
        # The trainer's own torch Adam, also when offloaded (no DeepSpeedCPUAdam JIT build).
        "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False,
        "zero_optimization": zero, "communication_data_type": "fp32",
        "steps_per_print": 2**31 - 1, "wall_clock_breakdown": False,
        # The throughput timer synchronises the device around every network call.
        "timers": {"throughput": {"enabled": False}},
    }


class OptimizerStep(Protocol):
    """What the loops call; see the module doc."""

    scale: DynamicLossScale

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of a loss already multiplied by ``scale.scale``; gradients accumulate."""

    def step(self) -> bool:
        """Averages, unscales, checks and steps; clears the gradients. True when stepped."""

    def zero_grad(self) -> None: ...

    def state(self) -> OptimizerState:
        """The optimizer as checkpoints hold it (the same format for every backend)."""

    def state_bytes(self) -> int:
        """Bytes of optimizer state (Adam's moments and step) this rank holds, measured on the
        tensors: the whole state at stage 0, this rank's partition at stage 1/2."""


class AllReduceStep:
    """zero_stage 0: the trainer's own flat all-reduce of exactly ``params``' gradients."""

    def __init__(self, name: str, module: nn.Module, params: list[nn.Parameter], opt: torch.optim.Optimizer,
                 scale: DynamicLossScale, dist: Dist, check_sync: bool):
        self.name, self.module, self.params, self.opt = name, module, params, opt
        self.scale, self.dist, self.check_sync = scale, dist, check_sync

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> bool:
        return synced_step(self.name, self.params, self.opt, self.scale, self.dist, self.check_sync)

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def state(self) -> OptimizerState:
        return OptimizerState(self.module, self.opt)

    def state_bytes(self) -> int:
        return _state_bytes(self.opt)


class ZeroStep:
    """zero_stage 1/2: a DeepSpeed engine over ``params`` and the trainer's ``opt`` (see module doc).

    Build it after freezing is decided and while every parameter in ``params`` has
    ``requires_grad=True``: DeepSpeed silently never updates one that had it False."""

    def __init__(self, name: str, module: nn.Module, params: list[nn.Parameter], opt: torch.optim.Optimizer,
                 scale: DynamicLossScale, dist: Dist, check_sync: bool, cfg: DistConfig):
        import deepspeed

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        dist.ensure_process_group()  # DeepSpeed needs one even for one process
        if dist.device.type == "cpu":
            _skip_cpu_shm_build()
        for p in params:
            p.requires_grad_(True)
        self.name, self.module, self.params, self.scale, self.dist, self.check_sync = (
            name, module, params, scale, dist, check_sync)
        with _local_rank_set(dist):
            self.engine, self.zero_opt, _, _ = deepspeed.initialize(
                model=module, optimizer=opt, model_parameters=params,
                config=deepspeed_config(cfg, dist.world, dist.device.type == "cuda", sum(p.numel() for p in params)))

    def backward(self, loss: torch.Tensor) -> None:
        # The engine multiplies the loss by the scale it was told; the loss arrives already
        # multiplied by it. The scale is a power of two, so dividing first is exact.
        s = self.scale.scale
        self.zero_opt.override_loss_scale(s)
        self.engine.backward(loss / s, scale_wrt_gas=False)

    def step(self) -> bool:
        self.zero_opt.override_loss_scale(self.scale.scale)
        self.engine.step()  # reduces, unscales, checks overflow on every rank, steps or skips
        stepped = self.scale.update(not self.zero_opt.overflow)
        self.zero_grad()
        if self.check_sync:
            self._assert_in_sync()
        return stepped

    def _assert_in_sync(self) -> None:
        """The gradients are partitioned and already cleared: every rank's weights must agree,
        and each must equal the engine's float32 master copy of it."""
        from deepspeed.utils import safe_get_full_fp32_param

        drifted = [i for i, p in enumerate(self.params)
                   if not torch.equal(safe_get_full_fp32_param(p).to(p.device), p.float())]
        if self.dist.any_flag(bool(drifted)):
            raise RuntimeError(f"{self.name}: a rank's weights differ from DeepSpeed's float32 master copy "
                               f"(parameter indices {drifted[:5]} here)")
        assert_in_sync(self.dist, self.name, self.params)

    def zero_grad(self) -> None:
        self.engine.zero_grad()
        for p in self.params:
            p.grad = None

    def state(self) -> OptimizerState:
        return ZeroOptimizerState(self.module, self.params, self.zero_opt)

    def state_bytes(self) -> int:
        return _state_bytes(self.zero_opt.optimizer)  # the trainer's Adam over this rank's flat partition


def _state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))


def make_step(cfg: DistConfig, name: str, module: nn.Module, params: list[nn.Parameter],
              opt: torch.optim.Optimizer, scale: DynamicLossScale, dist: Dist, check_sync: bool) -> OptimizerStep:
    """The step for ``cfg.zero_stage`` (see module doc)."""
    if cfg.zero_stage == 0:
        return AllReduceStep(name, module, params, opt, scale, dist, check_sync)
    return ZeroStep(name, module, params, opt, scale, dist, check_sync, cfg)


class ZeroOptimizerState(OptimizerState):
    """A ZeRO-partitioned Adam as checkpoints hold it: the dict ``OptimizerState`` gives for a
    plain Adam over the same parameters (full moments by parameter name), assembled in CPU
    memory through a template Adam that never steps and holds the state only while DCP reads
    or fills it. Gathering and scattering are collectives: every rank calls ``state_dict`` and
    ``load_state_dict`` together, as DCP does."""

    def __init__(self, module: nn.Module, params: list[nn.Parameter], zero_opt):
        self.module, self.params, self.zero_opt = module, params, zero_opt
        self.inner = zero_opt.optimizer  # the trainer's Adam, now over flat partitions
        self.optimizer: torch.optim.Adam | None = None  # the template, made per save or load

    def _template(self) -> torch.optim.Adam:
        """A plain Adam over ``params`` with the live hyperparameters (the trainer may have set
        new ones since the last save)."""
        accepted = inspect.signature(torch.optim.Adam).parameters
        hyper = {k: v for k, v in self.inner.param_groups[0].items() if k in accepted and k != "params"}
        return torch.optim.Adam(self.params, **hyper)

    def _keys(self) -> list[str]:
        first = next(iter(self.inner.state.values()))
        return [k for k, v in first.items() if k != "step" and torch.is_tensor(v) and v.dim() > 0]

    def state_dict(self) -> dict:
        from deepspeed.utils import safe_get_full_optimizer_state

        if not self.inner.state:
            # Saved before any step: give the live optimizer the state the plain path's save
            # gives its Adam (step 1, zero moments), so that a resumed run continues alike.
            self._create_inner_state()
        self.optimizer = self._template()
        keys, step = self._keys(), next(iter(self.inner.state.values()))["step"]
        for p in self.params:
            self.optimizer.state[p] = {"step": step.detach().clone().float().cpu(),
                                       **{k: safe_get_full_optimizer_state(p, k).cpu() for k in keys}}
        out = get_optimizer_state_dict(self.module, self.optimizer)
        self.optimizer.state.clear()  # the returned dict keeps what DCP writes alive
        return out

    def clear_grads(self) -> None:
        for p in self.params:
            p.grad = None

    def load_state_dict(self, state_dict: dict) -> None:
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

        self.optimizer = self._template()
        set_optimizer_state_dict(self.module, self.optimizer, state_dict)
        if self.optimizer.state:
            if not self.inner.state:
                self._create_inner_state()
            for p in self.params:
                for k in self._keys():
                    safe_set_full_optimizer_state(p, self.optimizer.state[p][k].to(p.device), k)
            step = self.optimizer.state[self.params[0]]["step"]
            for st in self.inner.state.values():
                st["step"] = step.detach().clone().to(st["step"].dtype).to(st["step"].device)
        self.optimizer.state.clear()
        # The engine's float32 master partition follows the weights the checkpoint loaded.
        for p in self.params:
            safe_set_full_fp32_param(p, p.detach().float())

    @torch.no_grad()
    def _create_inner_state(self) -> None:
        """Adam's state on the flat partitions before the first step: one step with zero
        gradients and lr 0 (the weights do not move), then DeepSpeed links each parameter's
        fragment of it, as its own first step would."""
        groups = self.inner.param_groups
        saved = [(g["lr"], [fp.grad for fp in g["params"]]) for g in groups]  # offload keeps a grad buffer
        for g in groups:
            g["lr"] = 0.0
            for fp in g["params"]:
                fp.grad = torch.zeros_like(fp)
        self.inner.step()
        for g, (lr, grads) in zip(groups, saved):
            g["lr"] = lr
            for fp, grad in zip(g["params"], grads):
                fp.grad = grad
        self.zero_opt._lazy_init_hp_params_optimizer_state()


@contextlib.contextmanager
def _local_rank_set(dist: Dist) -> Iterator[None]:
    """DeepSpeed reads LOCAL_RANK when an engine is built; a one-process run has none. Only for
    that moment: accelerate takes a LOCAL_RANK in the environment for a multi-process launch."""
    had = "LOCAL_RANK" in os.environ
    os.environ.setdefault("LOCAL_RANK", str(dist.local_rank))
    try:
        yield
    finally:
        if not had:
            del os.environ["LOCAL_RANK"]


def _skip_cpu_shm_build() -> None:
    """On CPU (debug runs, CI) DeepSpeed JIT-builds a shared-memory all-reduce op the first
    time (about 130 s, a C++ toolchain needed); gloo's all-reduce serves these runs."""
    comm = importlib.import_module("deepspeed.comm.torch")  # the attribute path resolves to torch
    comm.build_shm_op = lambda: None
