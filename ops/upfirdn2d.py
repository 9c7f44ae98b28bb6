"""upfirdn2d: upsample (zero insertion), FIR filter, downsample, in one op.

Semantics, per axis: insert ``up - 1`` zeros after every input pixel, pad by
``(pad0, pad1)`` (negative values crop), convolve with the filter (true
convolution; ``flip_filter=True`` gives correlation), keep every ``down``-th
pixel. Output length: ``(in * up + pad0 + pad1 - taps) // down + 1``. A 1-D
filter is applied separably along both axes; ``gain`` scales the overall result.

``_upfirdn2d_ref`` is the plain-PyTorch reference. The CUDA path runs the kernel
in ``csrc/upfirdn2d.cu`` through ``_UpFirDn2d``, whose backward is upfirdn2d
again (the transposed configuration), so any order of derivative works.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from . import _build, _dispatch

_SOURCES = ["upfirdn2d.cpp", "upfirdn2d.cu"]
_HEADERS = ["common.h", "common.cuh", "binding_utils.h", "upfirdn2d.h", "upfirdn2d_kernel.cuh"]


def _plugin():
    return _build.load_extension("upfirdn2d", _SOURCES, _HEADERS, probe=_probe)


def _probe(mod) -> None:
    """A 1x1 identity filter over ones on the current GPU, synchronised: fails here, at load,
    when the kernel cannot launch on this device."""
    x = torch.ones(1, 1, 4, 4, device="cuda")
    y = mod.upfirdn2d(x, torch.ones(1, 1, device="cuda"), 1, 1, 1, 1, 0, 0, 0, 0,
                      torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    if not torch.equal(y, x):
        raise RuntimeError(f"upfirdn2d of ones with a 1x1 filter of 1 gave {y.flatten()[:4].tolist()}")


# ----------------------------------------------------------------------------
# Argument parsing and filter set-up.

def _parse_scaling(s: int | tuple[int, int]) -> tuple[int, int]:
    sx, sy = (s, s) if isinstance(s, int) else s
    if not (isinstance(sx, int) and isinstance(sy, int) and sx >= 1 and sy >= 1):
        raise ValueError(f"up/down factors must be integers >= 1, got {s!r}")
    return sx, sy


def _parse_padding(p: int | tuple[int, ...]) -> tuple[int, int, int, int]:
    """int -> all sides; (px, py) -> both sides of each axis; (x0, x1, y0, y1)."""
    if isinstance(p, int):
        return p, p, p, p
    p = tuple(int(v) for v in p)
    if len(p) == 2:
        return p[0], p[0], p[1], p[1]
    if len(p) == 4:
        return p  # type: ignore[return-value]
    raise ValueError(f"padding must be an int or 2 or 4 ints, got {p!r}")


def _filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """(width, height) of the filter in taps."""
    if f is None:
        return 1, 1
    if f.ndim not in (1, 2):
        raise ValueError(f"filter must be 1-D (separable) or 2-D, got shape {tuple(f.shape)}")
    return (f.shape[-1], f.shape[0])


def setup_filter(f, device: torch.device | str = "cpu", normalize: bool = True,
                 flip_filter: bool = False, gain: float = 1.0,
                 separable: bool | None = None) -> torch.Tensor:
    """Turns a list of taps into a float32 filter tensor for upfirdn2d.

    A 1-D filter stays 1-D (separable) when ``separable`` is True, or when it is
    None and the filter has 8 or more taps; otherwise it becomes the 2-D outer
    product. ``normalize`` makes the taps sum to 1; ``gain`` then scales the
    overall response (split evenly over the two passes of a separable filter).
    """
    f = torch.as_tensor([1.0] if f is None else f, dtype=torch.float32)
    if f.ndim == 0:
        f = f[None]
    if f.ndim not in (1, 2) or f.numel() == 0:
        raise ValueError(f"filter must be 1-D or 2-D and non-empty, got shape {tuple(f.shape)}")
    if normalize:
        f = f / f.sum()
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if f.ndim == 2 and separable and f.shape[0] != 1 and f.shape[1] != 1:
        raise ValueError("a 2-D filter cannot be made separable")
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


# ----------------------------------------------------------------------------
# Public op and StyleGAN2 helpers.

def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up: int | tuple[int, int] = 1,
              down: int | tuple[int, int] = 1, padding: int | tuple[int, ...] = 0,
              flip_filter: bool = False, gain: float = 1.0, impl: str = "auto") -> torch.Tensor:
    """Upsample, filter and downsample a batch of images ``x`` [N, C, H, W].

    ``f``: 1-D (separable) or 2-D filter, or None for identity. ``up``/``down``:
    factor per axis (int or (x, y)). ``padding``: int, (x, y) or (x0, x1, y0, y1),
    negative crops. ``impl``: "auto", "cuda" or "ref" (see ``ops._dispatch``).
    Cases the kernel does not cover (float64, filters over 64 taps a side, a
    filter that requires a gradient) run the reference under ``auto``.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"upfirdn2d expects x of shape [N, C, H, W], got {getattr(x, 'shape', x)}")
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    cfg = _Config.make(x, f, up, down, padding, flip_filter, gain)
    impl = _dispatch.resolve("upfirdn2d", impl, x.device.type, _plugin,
                             cuda_supported=_cuda_supports(x, f))
    if impl == "cuda":
        return _UpFirDn2d.apply(x, f, cfg)
    return _upfirdn2d_ref(x, f, cfg.up, cfg.down, cfg.pad, flip_filter, gain)


def _cuda_supports(x: torch.Tensor, f: torch.Tensor) -> bool:
    """Cases the kernel covers: its dtypes, filters up to 64 taps a side (shared
    memory), and filters that need no gradient."""
    return x.dtype in _dispatch.KERNEL_DTYPES and max(_filter_size(f)) <= 64 and not f.requires_grad


def filter2d(x: torch.Tensor, f: torch.Tensor | None, padding: int | tuple[int, ...] = 0,
             flip_filter: bool = False, gain: float = 1.0, impl: str = "auto") -> torch.Tensor:
    """Filters ``x`` keeping its size (plus any extra ``padding``)."""
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    pad = (px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2)
    return upfirdn2d(x, f, padding=pad, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x: torch.Tensor, f: torch.Tensor | None, up: int | tuple[int, int] = 2,
               padding: int | tuple[int, ...] = 0, flip_filter: bool = False,
               gain: float = 1.0, impl: str = "auto") -> torch.Tensor:
    """Upsamples ``x`` by ``up`` with filter ``f``: output size is input size times ``up``.

    The gain is multiplied by ``up_x * up_y`` so a normalised filter keeps the
    mean intensity (zero insertion leaves only one pixel in up_x * up_y).
    """
    ux, uy = _parse_scaling(up)
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    pad = (px0 + (fw + ux - 1) // 2, px1 + (fw - ux) // 2, py0 + (fh + uy - 1) // 2, py1 + (fh - uy) // 2)
    return upfirdn2d(x, f, up=(ux, uy), padding=pad, flip_filter=flip_filter,
                     gain=gain * ux * uy, impl=impl)


def downsample2d(x: torch.Tensor, f: torch.Tensor | None, down: int | tuple[int, int] = 2,
                 padding: int | tuple[int, ...] = 0, flip_filter: bool = False,
                 gain: float = 1.0, impl: str = "auto") -> torch.Tensor:
    """Filters then downsamples ``x`` by ``down``: output size is input size over ``down``."""
    dx, dy = _parse_scaling(down)
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    pad = (px0 + (fw - dx + 1) // 2, px1 + (fw - dx) // 2, py0 + (fh - dy + 1) // 2, py1 + (fh - dy) // 2)
    return upfirdn2d(x, f, down=(dx, dy), padding=pad, flip_filter=flip_filter, gain=gain, impl=impl)


# ----------------------------------------------------------------------------
# Reference implementation (plain PyTorch).

def _upfirdn2d_ref(x: torch.Tensor, f: torch.Tensor, up=1, down=1, padding=0,
                   flip_filter: bool = False, gain: float = 1.0) -> torch.Tensor:
    """Zero insertion by reshape + pad, padding by F.pad, filtering by grouped conv2d."""
    upx, upy = _parse_scaling(up)
    downx, downy = _parse_scaling(down)
    px0, px1, py0, py1 = _parse_padding(padding)
    n, c, h, w = x.shape
    _check_out_size(h, w, f, upx, upy, px0, px1, py0, py1)
    # Zero insertion: a zero block after every pixel, then fold back.
    if upx > 1 or upy > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
        x = x.reshape(n, c, h * upy, w * upx)
    # F.pad crops with negative padding.
    x = F.pad(x, [px0, px1, py0, py1])
    # conv2d correlates, so flipping the taps gives a true convolution.
    f = f.to(device=x.device, dtype=x.dtype) * (gain ** (f.ndim / 2))
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].expand(c, 1, *f.shape), groups=c)
    else:
        x = F.conv2d(x, f[None, None, None, :].expand(c, 1, 1, f.shape[0]), groups=c)
        x = F.conv2d(x, f[None, None, :, None].expand(c, 1, f.shape[0], 1), groups=c)
    return x[:, :, ::downy, ::downx]


def _check_out_size(h, w, f, upx, upy, px0, px1, py0, py1) -> None:
    fw, fh = _filter_size(f)
    if h * upy + py0 + py1 < fh or w * upx + px0 + px1 < fw:
        raise ValueError(f"upfirdn2d: padded input ({h * upy + py0 + py1}x{w * upx + px0 + px1}) "
                         f"is smaller than the filter ({fh}x{fw})")


# ----------------------------------------------------------------------------
# CUDA path: autograd Function around the kernel.

@dataclass(frozen=True)
class _Config:
    """Everything but the tensors; ``backend`` "torch" runs the kernel's job in
    plain PyTorch so the Function's derivative rules are testable without a GPU."""
    up: tuple[int, int]
    down: tuple[int, int]
    pad: tuple[int, int, int, int]
    flip: bool
    gain: float
    in_hw: tuple[int, int]
    backend: str = "cuda"

    @staticmethod
    def make(x, f, up, down, padding, flip_filter, gain, backend="cuda") -> "_Config":
        up, down, pad = _parse_scaling(up), _parse_scaling(down), _parse_padding(padding)
        _check_out_size(x.shape[2], x.shape[3], f, *up, *pad)
        return _Config(up, down, pad, bool(flip_filter), float(gain), (x.shape[2], x.shape[3]), backend)

    def out_hw(self, f: torch.Tensor) -> tuple[int, int]:
        fw, fh = _filter_size(f)
        (h, w), (upx, upy), (dx, dy), (px0, px1, py0, py1) = self.in_hw, self.up, self.down, self.pad
        return (h * upy + py0 + py1 - fh) // dy + 1, (w * upx + px0 + px1 - fw) // dx + 1

    def transposed(self, f: torch.Tensor) -> "_Config":
        """The configuration whose op is the adjoint (gradient) of this one."""
        fw, fh = _filter_size(f)
        (h, w), (upx, upy), (dx, dy), (px0, _, py0, _) = self.in_hw, self.up, self.down, self.pad
        oh, ow = self.out_hw(f)
        # Tap k of output o reads padded position o*down + k = i*up + pad0; solving for
        # the input i gives padding fw-1-pad0 in front, and the back padding that makes
        # the result exactly the input size.
        pad = (fw - 1 - px0, w * upx - ow * dx + px0 - upx + 1,
               fh - 1 - py0, h * upy - oh * dy + py0 - upy + 1)
        return replace(self, up=self.down, down=self.up, pad=pad, flip=not self.flip, in_hw=(oh, ow))


def _kernel_filter(f: torch.Tensor, cfg: _Config, device: torch.device,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The 2-D correlation taps the kernel applies (flip and gain folded in)."""
    f = f.to(device=device, dtype=dtype)
    g = torch.outer(f, f) if f.ndim == 1 else f
    g = g * cfg.gain
    return (g if cfg.flip else g.flip([0, 1])).contiguous()


def _run_kernel(x: torch.Tensor, f: torch.Tensor, cfg: _Config) -> torch.Tensor:
    if cfg.backend == "torch":  # float64 taps for float64 tests, like the kernel's float32 for the rest
        g = _kernel_filter(f, cfg, x.device, torch.promote_types(x.dtype, torch.float32))
        return _upfirdn2d_ref(x, g, cfg.up, cfg.down, cfg.pad, flip_filter=True)
    g = _kernel_filter(f, cfg, x.device)
    stream = torch.cuda.current_stream(x.device).cuda_stream
    return _plugin().upfirdn2d(x, g, *cfg.up, *cfg.down, *cfg.pad, stream)


class _UpFirDn2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, f: torch.Tensor, cfg: _Config) -> torch.Tensor:
        ctx.save_for_backward(f)
        ctx.cfg = cfg
        return _run_kernel(x, f, cfg)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        (f,) = ctx.saved_tensors
        dx = None
        if ctx.needs_input_grad[0]:
            # Through apply, so the gradient is itself differentiable.
            dx = _UpFirDn2d.apply(dy, f, ctx.cfg.transposed(f))
        return dx, None, None
