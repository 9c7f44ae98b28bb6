"""upfirdn2d: the reference proven against independent formulas, its derivatives,
the autograd Function the CUDA path uses, the kernel's arithmetic (host emulator)
and the StyleGAN2 helpers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F


from ops import upfirdn2d
from ops.upfirdn2d import _Config, _kernel_filter, _upfirdn2d_ref, _UpFirDn2d

FILTERS = {
    "box1": [1.0],
    "binomial4": [1.0, 3.0, 3.0, 1.0],
    "odd3_2d": [[1.0, 2.0, -1.0], [0.5, 4.0, 1.0], [2.0, -3.0, 1.0]],
    "rect_2x5": [[1.0, -2.0, 3.0, 0.5, 1.5], [2.0, 1.0, -1.0, 0.25, 3.0]],
    "taps6": [0.3, -1.0, 2.0, 0.7, 1.2, -0.4],
}

# (up, down, padding): factors 1..4 per axis, per-side padding including crops.
CASES = [
    (1, 1, 0), (2, 1, (2, 1)), (1, 2, (1, 1)), (2, 2, (1, 2, 0, 3)),
    ((3, 1), (1, 2), (2, 0, 1, 1)), (4, 1, (3, 2, 1, 2)), (1, 4, (2, 2, 3, 1)),
    ((1, 3), (4, 1), (-1, 2, 3, -2)), (3, 3, (-2, -1, 0, 2)), (2, 4, (4, 3, 2, 5)),
]


def _pair(v):
    return (v, v) if isinstance(v, int) else v


def _pad4(p):
    return (p,) * 4 if isinstance(p, int) else (p[0], p[0], p[1], p[1]) if len(p) == 2 else p


def direct_formula(x, f, up, down, pad, flip_filter, gain):
    """Explicit zero insertion, F.pad (crops when negative), full 2-D conv2d, strided slice."""
    (ux, uy), (dx, dy), (px0, px1, py0, py1) = _pair(up), _pair(down), _pad4(pad)
    n, c, h, w = x.shape
    xu = x.new_zeros(n, c, h * uy, w * ux)
    xu[:, :, ::uy, ::ux] = x
    xu = F.pad(xu, [px0, px1, py0, py1])
    f2 = torch.outer(f, f) if f.ndim == 1 else f
    f2 = f2 * gain
    if not flip_filter:
        f2 = torch.flip(f2, [0, 1])
    y = F.conv2d(xu.reshape(n * c, 1, *xu.shape[2:]), f2[None, None].to(x.dtype))
    return y.reshape(n, c, *y.shape[2:])[:, :, ::dy, ::dx]


def loop_formula(x, f, up, down, pad, flip_filter, gain):
    """The definition, one output pixel at a time: y[o] = sum_k f'[k] * xu_padded[o*down + k]."""
    (ux, uy), (dx, dy), (px0, px1, py0, py1) = _pair(up), _pair(down), _pad4(pad)
    x, f = x.double().numpy(), f.double().numpy()
    f2 = np.outer(f, f) if f.ndim == 1 else f
    f2 = (f2 if flip_filter else f2[::-1, ::-1]) * gain
    fh, fw = f2.shape
    n, c, h, w = x.shape
    oh, ow = (h * uy + py0 + py1 - fh) // dy + 1, (w * ux + px0 + px1 - fw) // dx + 1
    y = np.zeros((n, c, oh, ow))
    for oy, ox, ky, kx in itertools.product(range(oh), range(ow), range(fh), range(fw)):
        jy, jx = oy * dy + ky - py0, ox * dx + kx - px0  # position in the zero-inserted image
        if jy % uy or jx % ux:
            continue
        iy, ix = jy // uy, jx // ux
        if 0 <= iy < h and 0 <= ix < w:
            y[:, :, oy, ox] += f2[ky, kx] * x[:, :, iy, ix]
    return torch.from_numpy(y)


def _filter(name, dtype=torch.float64):
    return torch.tensor(FILTERS[name], dtype=dtype)


@pytest.mark.parametrize("up,down,pad", CASES)
@pytest.mark.parametrize("fname", list(FILTERS))
def test_ref_matches_direct_formula(up, down, pad, fname):
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    f = _filter(fname)
    for flip, gain in [(False, 1.0), (True, 2.5)]:
        y = _upfirdn2d_ref(x, f, up, down, pad, flip, gain)
        torch.testing.assert_close(y, direct_formula(x, f, up, down, pad, flip, gain))


@pytest.mark.parametrize("up,down,pad", CASES[::2])
def test_ref_matches_loop_definition(up, down, pad):
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64)
    for fname in ("binomial4", "rect_2x5"):
        f = _filter(fname)
        y = _upfirdn2d_ref(x, f, up, down, pad, False, 1.5)
        torch.testing.assert_close(y, loop_formula(x, f, up, down, pad, False, 1.5))


GRAD_CASES = [(1, 1, 1), (2, 1, (2, 1)), (1, 2, (1, 2, 2, 1)), ((3, 2), (2, 3), (2, -1, 1, 3)), (4, 4, (3, 3, 2, 2))]


@pytest.mark.parametrize("up,down,pad", GRAD_CASES)
@pytest.mark.parametrize("fname", ["binomial4", "odd3_2d", "taps6"])
def test_ref_gradcheck_and_gradgradcheck(up, down, pad, fname):
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    f = _filter(fname)
    fn = lambda x: _upfirdn2d_ref(x, f, up, down, pad, False, 1.7)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_ref_gradient_reaches_filter():
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    f = _filter("binomial4").requires_grad_()
    assert torch.autograd.gradcheck(lambda f: _upfirdn2d_ref(x, f, 2, 1, (2, 1)), (f,))


# ---------------------------------------------------------------------------
# The autograd Function of the CUDA path, run on CPU with its "torch" backend.

@pytest.mark.parametrize("up,down,pad", GRAD_CASES + CASES[5:])
@pytest.mark.parametrize("fname,flip", [("binomial4", False), ("rect_2x5", True), ("taps6", False)])
def test_function_forward_and_derivatives(up, down, pad, fname, flip):
    x = torch.randn(1, 1, 5, 6, dtype=torch.float64, requires_grad=True)
    f = _filter(fname)
    cfg = _Config.make(x, f, up, down, pad, flip, 1.3, backend="torch")
    torch.testing.assert_close(_UpFirDn2d.apply(x, f, cfg), _upfirdn2d_ref(x, f, up, down, pad, flip, 1.3))
    fn = lambda x: _UpFirDn2d.apply(x, f, cfg)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_transposed_config_is_the_adjoint_shape():
    x = torch.randn(1, 1, 9, 7)
    f = _filter("binomial4", torch.float32)
    for up, down, pad in CASES:
        cfg = _Config.make(x, f, up, down, pad, False, 1.0)
        t = cfg.transposed(f)
        tt = t.transposed(f)
        # Trailing padding may differ only by slack the stride drops anyway.
        assert t.out_hw(f) == (9, 7) and tt.out_hw(f) == cfg.out_hw(f)
        assert (tt.pad[0], tt.pad[2]) == (cfg.pad[0], cfg.pad[2])


# ---------------------------------------------------------------------------
# The CUDA kernel's own code, run on the host by the emulator.

@pytest.mark.parametrize("up,down,pad", CASES)
@pytest.mark.parametrize("fname", ["binomial4", "odd3_2d", "rect_2x5", "taps6"])
def test_kernel_code_matches_ref(emulator, up, down, pad, fname):
    x = torch.randn(2, 3, 11, 13)
    f = _filter(fname, torch.float32)
    cfg = _Config.make(x, f, up, down, pad, False, 1.5)
    y, plan = emulator.upfirdn2d(x, _kernel_filter(f, cfg, x.device), cfg.up, cfg.down, cfg.pad, cfg.out_hw(f))
    assert plan["bad_reads"] == 0
    torch.testing.assert_close(y, _upfirdn2d_ref(x, f, up, down, pad, False, 1.5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,f_taps,up,down,pad", [
    ((1, 2, 150, 97), 4, 1, 1, (2, 1, 1, 2)),        # several tiles in x and y
    ((1, 1, 70, 200), 4, 2, 1, (2, 1, 2, 1)),        # upsampled, ragged last tile
    ((1, 1, 300, 90), 12, 1, 4, (5, 6, 4, 7)),       # down 4 and a 12x12 filter: tile shrinks
    ((1, 1, 40, 40), 60, 1, 1, (30, 29, 30, 29)),    # 60x60 filter: smallest tiles
    ((1, 1, 1, 1), 1, 1, 1, 0),                      # single pixel
])
def test_kernel_tiling_edge_cases(emulator, shape, f_taps, up, down, pad):
    x = torch.randn(shape)
    f = torch.rand(f_taps, f_taps) + 0.1
    cfg = _Config.make(x, f, up, down, pad, False, 1.0)
    y, plan = emulator.upfirdn2d(x, _kernel_filter(f, cfg, x.device), cfg.up, cfg.down, cfg.pad, cfg.out_hw(f))
    assert plan["bad_reads"] == 0 and plan["smem_bytes"] <= 48 * 1024
    torch.testing.assert_close(y, _upfirdn2d_ref(x, f, up, down, pad), rtol=1e-4, atol=1e-4)


def test_kernel_strided_input_and_channels_last_output(emulator):
    base = torch.randn(2, 6, 20, 30)
    x = base[:, ::2, 3:17, 1::2]  # non-contiguous view
    f = _filter("binomial4", torch.float32)
    cfg = _Config.make(x, f, 2, 1, (2, 1), False, 4.0)
    oh, ow = cfg.out_hw(f)
    cl = torch.empty(2, 3, oh, ow).to(memory_format=torch.channels_last).stride()
    y, _ = emulator.upfirdn2d(x, _kernel_filter(f, cfg, x.device), cfg.up, cfg.down, cfg.pad, (oh, ow), cl)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, _upfirdn2d_ref(x, f, 2, 1, (2, 1), False, 4.0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("up,down,pad", [(1, 1, (1, 2, 1, 2)), (2, 1, (2, 1)), (1, 2, (1, 1))])
def test_kernel_code_propagates_nonfinite_like_ref(emulator, up, down, pad):
    """NaN and inf reach exactly the outputs whose window covers them, as in the reference
    (a zero tap times NaN is NaN in both)."""
    x = torch.randn(1, 2, 12, 10)
    x[0, 0, 3, 4], x[0, 1, 7, 2], x[0, 1, 0, 9] = float("nan"), float("inf"), float("-inf")
    f = _filter("binomial4", torch.float32)
    cfg = _Config.make(x, f, up, down, pad, False, 1.0)
    y, _ = emulator.upfirdn2d(x, _kernel_filter(f, cfg, x.device), cfg.up, cfg.down, cfg.pad, cfg.out_hw(f))
    want = _upfirdn2d_ref(x, f, up, down, pad)
    assert torch.isnan(want).any()
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_kernel_rejects_oversized_filter(emulator):
    x = torch.randn(1, 1, 200, 200)
    f = torch.ones(120, 120)
    cfg = _Config.make(x, f, 1, 1, 0, False, 1.0)
    with pytest.raises(RuntimeError, match="filter too large"):
        emulator.upfirdn2d(x, f, cfg.up, cfg.down, cfg.pad, cfg.out_hw(f))


# ---------------------------------------------------------------------------
# Public API: dtypes, layouts, helpers, errors.

@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-2), (torch.bfloat16, 8e-2)])
def test_low_precision_close_to_float32(dtype, tol):
    x = torch.randn(2, 4, 16, 16)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    y32 = upfirdn2d.upfirdn2d(x, f, up=2, padding=(2, 1), impl="ref")
    y = upfirdn2d.upfirdn2d(x.to(dtype), f, up=2, padding=(2, 1), impl="ref")
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), y32, rtol=tol, atol=tol)


def test_channels_last_and_noncontiguous_inputs():
    x = torch.randn(2, 4, 12, 12)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    y = upfirdn2d.downsample2d(x, f)
    torch.testing.assert_close(upfirdn2d.downsample2d(x.to(memory_format=torch.channels_last), f), y)
    big = torch.randn(2, 8, 12, 24)
    torch.testing.assert_close(upfirdn2d.downsample2d(big[:, ::2, :, ::2], f), upfirdn2d.downsample2d(big[:, ::2, :, ::2].contiguous(), f))


def test_setup_filter_normalises_and_chooses_separable():
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4) and torch.isclose(f.sum(), torch.tensor(1.0))
    g = upfirdn2d.setup_filter(list(range(1, 9)))
    assert g.ndim == 1 and torch.isclose(g.sum(), torch.tensor(1.0))
    assert upfirdn2d.setup_filter([1, 3, 3, 1], separable=True).ndim == 1
    torch.testing.assert_close(upfirdn2d.setup_filter([1, 2], flip_filter=True, separable=True), torch.tensor([2.0, 1.0]) / 3)
    torch.testing.assert_close(upfirdn2d.setup_filter([1, 1], gain=4, separable=True), torch.tensor([1.0, 1.0]))


@pytest.mark.parametrize("taps", [[1, 3, 3, 1], [1, 7, 21, 35, 35, 21, 7, 1]])
def test_helpers_keep_size_ratio_and_mean(taps):
    # Binomial filters: each polyphase component sums to the same value, so
    # upsampling and downsampling preserve a constant.
    x = torch.full((1, 2, 16, 16), 3.0)
    f = upfirdn2d.setup_filter(taps, separable=True)
    up, down, same = upfirdn2d.upsample2d(x, f), upfirdn2d.downsample2d(x, f), upfirdn2d.filter2d(x, f)
    assert up.shape[2:] == (32, 32) and down.shape[2:] == (8, 8) and same.shape[2:] == (16, 16)
    # Away from the zero-padded border a normalised filter keeps a constant image.
    for y in (up, down, same):
        torch.testing.assert_close(y[:, :, 4:-4, 4:-4], torch.full_like(y[:, :, 4:-4, 4:-4], 3.0))


def test_upsample_by_factor_per_axis():
    x = torch.randn(1, 1, 5, 6)
    y = upfirdn2d.upsample2d(x, upfirdn2d.setup_filter([1, 3, 3, 1]), up=(3, 2))
    assert y.shape[2:] == (10, 18)


def test_identity_filter_is_exact():
    x = torch.randn(2, 3, 7, 5)
    torch.testing.assert_close(upfirdn2d.upfirdn2d(x, None), x)
    torch.testing.assert_close(upfirdn2d.upfirdn2d(x, None, padding=(-1, -2, 0, -3)), x[:, :, :-3, 1:-2])


def test_kernel_coverage_decides_auto():
    x = torch.randn(1, 1, 8, 8)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    assert upfirdn2d._cuda_supports(x, f) and upfirdn2d._cuda_supports(x.half(), f)
    assert not upfirdn2d._cuda_supports(x.double(), f)
    assert not upfirdn2d._cuda_supports(x, torch.ones(65, 3))
    assert not upfirdn2d._cuda_supports(x, f.clone().requires_grad_())


def test_bad_arguments_raise_clear_errors():
    x = torch.randn(1, 1, 4, 4)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    with pytest.raises(ValueError, match="smaller than the filter"):
        upfirdn2d.upfirdn2d(x, f, padding=-1)
    with pytest.raises(ValueError, match="factors"):
        upfirdn2d.upfirdn2d(x, f, up=0)
    with pytest.raises(ValueError, match="padding"):
        upfirdn2d.upfirdn2d(x, f, padding=(1, 2, 3))
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        upfirdn2d.upfirdn2d(torch.randn(4, 4), f)
    with pytest.raises(ValueError, match="impl"):
        upfirdn2d.upfirdn2d(x, f, impl="fast")
