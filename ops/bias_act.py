"""bias_act: bias add, activation, gain and clamp fused into one pass.

``y = clamp(act(x + b) * gain, -clamp, clamp)`` with ``b`` broadcast along
``dim``. Activations: "linear", "relu", "lrelu" (slope ``alpha``, default 0.2).
Default gain is sqrt(2) for relu and lrelu (keeps the signal's second moment),
1 for linear. Derivatives at 0 and at the clamp bounds follow PyTorch, so the
fused op and the reference agree everywhere.

``_bias_act_ref`` is the plain-PyTorch reference. The CUDA path
(``csrc/bias_act.cu``) saves only ``x`` and ``b`` for backward; all activations
here are piecewise linear, so the gradient is a mask that depends on ``x + b``
alone and the second derivative with respect to ``x`` and ``b`` is zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import _build, _dispatch

_SOURCES = ["bias_act.cpp", "bias_act.cu"]
_HEADERS = ["common.h", "common.cuh", "binding_utils.h", "bias_act.h", "bias_act_kernel.cuh"]

# name -> (kernel code, default alpha, default gain); codes match TmAct in bias_act.h.
ACTIVATIONS = {
    "linear": (0, 0.0, 1.0),
    "relu": (1, 0.0, math.sqrt(2)),
    "lrelu": (2, 0.2, math.sqrt(2)),
}


def _plugin():
    return _build.load_extension("bias_act", _SOURCES, _HEADERS, probe=_probe)


def _probe(mod) -> None:
    """ones + a bias of ones, linear, on the current GPU, synchronised: fails here, at load,
    when the kernel cannot launch on this device."""
    x = torch.ones(1, 2, 4, 4, device="cuda")
    y = mod.bias_act(x, torch.ones(2, device="cuda"), x.new_empty([0]), 0, 1, ACTIVATIONS["linear"][0],
                     0.0, 1.0, -1.0, torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    if not torch.equal(y, x * 2):
        raise RuntimeError(f"bias_act of ones plus a bias of ones gave {y.flatten()[:4].tolist()}")


@dataclass(frozen=True)
class _Config:
    """Non-tensor arguments; ``backend`` "torch" runs the kernel's job in plain
    PyTorch so the Function's derivative rules are testable without a GPU."""
    dim: int
    act: str
    alpha: float
    gain: float
    clamp: float | None
    backend: str = "cuda"


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, dim: int = 1, act: str = "linear",
             alpha: float | None = None, gain: float | None = None, clamp: float | None = None,
             impl: str = "auto") -> torch.Tensor:
    """Adds bias ``b`` (length ``x.shape[dim]``) to ``x``, then activation, gain, clamp.

    ``alpha``/``gain`` default per activation (see ACTIVATIONS); ``clamp`` None
    means no clamping. ``b`` is cast to ``x.dtype`` (mixed-precision layers keep
    float32 biases). ``impl``: "auto", "cuda" or "ref" (see ``ops._dispatch``);
    dtypes the kernel lacks (float64) run the reference under ``auto``.
    """
    cfg = _make_config(x, b, dim, act, alpha, gain, clamp)
    if b is not None:
        b = b.to(x.dtype)
    impl = _dispatch.resolve("bias_act", impl, x.device.type, _plugin,
                             cuda_supported=x.dtype in _dispatch.KERNEL_DTYPES)
    if impl == "cuda":
        return _BiasAct.apply(x, b, cfg)
    return _bias_act_ref(x, b, cfg.dim, cfg.act, cfg.alpha, cfg.gain, cfg.clamp)


def _make_config(x, b, dim, act, alpha, gain, clamp, backend="cuda") -> _Config:
    if act not in ACTIVATIONS:
        raise ValueError(f"bias_act: unknown activation {act!r}; choose from {sorted(ACTIVATIONS)}")
    if clamp is not None and clamp < 0:
        raise ValueError(f"bias_act: clamp must be >= 0 or None, got {clamp}")
    if b is not None:
        if not 0 <= dim < x.ndim:
            raise ValueError(f"bias_act: dim {dim} out of range for a {x.ndim}-D tensor")
        if b.ndim != 1 or b.shape[0] != x.shape[dim]:
            raise ValueError(f"bias_act: b must have shape [{x.shape[dim]}], got {tuple(b.shape)}")
    _, def_alpha, def_gain = ACTIVATIONS[act]
    return _Config(dim, act, float(def_alpha if alpha is None else alpha),
                   float(def_gain if gain is None else gain),
                   None if clamp is None else float(clamp), backend)


# ----------------------------------------------------------------------------
# Reference implementation (plain PyTorch, autograd does the derivatives).

def _bias_act_ref(x: torch.Tensor, b: torch.Tensor | None, dim: int = 1, act: str = "linear",
                  alpha: float = 0.0, gain: float = 1.0, clamp: float | None = None) -> torch.Tensor:
    if b is not None:
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    if act == "relu":
        x = F.relu(x)
    elif act == "lrelu":
        x = F.leaky_relu(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


# ----------------------------------------------------------------------------
# CUDA path: two autograd Functions around the kernel's two modes.

def _dense(x: torch.Tensor) -> torch.Tensor:
    """x itself if contiguous or channels_last (layouts the kernel indexes), else a copy."""
    if x.is_contiguous() or (x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last)):
        return x
    return x.contiguous()


def _like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """t with exactly ref's strides (the kernel walks both with one index)."""
    return t if t.stride() == ref.stride() else torch.empty_like(ref).copy_(t)


def _run_kernel(x, b, dy, cfg: _Config) -> torch.Tensor:
    """grad=False: the forward value; with dy: dy times the derivative at x + b."""
    if cfg.backend == "torch":
        return _kernel_torch(x, b, dy, cfg)
    code = ACTIVATIONS[cfg.act][0]
    empty = x.new_empty([0])
    stream = torch.cuda.current_stream(x.device).cuda_stream
    return _plugin().bias_act(x, empty if b is None else b, empty if dy is None else dy,
                              0 if dy is None else 1, cfg.dim, code, cfg.alpha, cfg.gain,
                              -1.0 if cfg.clamp is None else cfg.clamp, stream)


def _kernel_torch(x, b, dy, cfg: _Config) -> torch.Tensor:
    """The kernel's two modes in plain PyTorch, computed in float32 as the kernel does
    (float64 stays float64, so gradcheck can use this)."""
    ct = torch.promote_types(x.dtype, torch.float32)
    v = x.to(ct)
    if b is not None:
        v = v + b.to(ct).reshape([-1 if i == cfg.dim else 1 for i in range(x.ndim)])
    if cfg.act == "relu":
        a, d = torch.where(v <= 0, 0.0, v), torch.where(v <= 0, 0.0, 1.0)  # NaN passes, as in the kernel
    elif cfg.act == "lrelu":
        a, d = torch.where(v > 0, v, v * cfg.alpha), torch.where(v > 0, 1.0, cfg.alpha)
    else:
        a, d = v, torch.ones_like(v)
    a = a * cfg.gain
    if dy is None:
        out = a if cfg.clamp is None else a.clamp(-cfg.clamp, cfg.clamp)
    else:
        if cfg.clamp is not None:
            d = d * ((a >= -cfg.clamp) & (a <= cfg.clamp))
        out = dy.to(ct) * cfg.gain * d
    return out.to(x.dtype)


class _BiasAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, b: torch.Tensor | None, cfg: _Config) -> torch.Tensor:
        x = _dense(x)
        b = None if b is None else b.contiguous()
        ctx.save_for_backward(x, b)
        ctx.cfg = cfg
        return _run_kernel(x, b, None, cfg)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, b = ctx.saved_tensors
        dx = _BiasActGrad.apply(dy, x, b, ctx.cfg)
        db = None
        if ctx.needs_input_grad[1]:
            db = dx.sum([i for i in range(dx.ndim) if i != ctx.cfg.dim])
        return dx, db, None


class _BiasActGrad(torch.autograd.Function):
    """dx = dy * mask(x + b): linear in dy, piecewise constant in x and b."""

    @staticmethod
    def forward(ctx, dy: torch.Tensor, x: torch.Tensor, b: torch.Tensor | None, cfg: _Config):
        ctx.save_for_backward(x, b)
        ctx.cfg = cfg
        return _run_kernel(x, b, _like(dy, x), cfg)

    @staticmethod
    def backward(ctx, d_dx: torch.Tensor):
        x, b = ctx.saved_tensors
        d_dy = _BiasActGrad.apply(d_dx, x, b, ctx.cfg) if ctx.needs_input_grad[0] else None
        # The mask's derivative in x and b is zero almost everywhere.
        return d_dy, None, None, None
