"""bias_act: the reference proven against independent formulas, its derivatives,
the autograd Functions the CUDA path uses, and the kernel's code (host emulator)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch


from ops import bias_act
from ops.bias_act import ACTIVATIONS, _bias_act_ref, _BiasAct, _make_config

# (act, alpha, gain, clamp)
SETTINGS = [
    ("linear", 0.0, 1.0, None), ("linear", 0.0, 0.5, 0.7), ("relu", 0.0, math.sqrt(2), None),
    ("relu", 0.0, 2.0, 1.1), ("lrelu", 0.2, math.sqrt(2), None), ("lrelu", 0.01, 1.0, 0.9),
    ("lrelu", -0.3, 1.5, None), ("lrelu", 1.7, 0.8, 1.3),
]


def independent(x, b, dim, act, alpha, gain, clamp):
    """Element-wise definition in NumPy, float64."""
    v = x.double().numpy()
    if b is not None:
        shape = [1] * v.ndim
        shape[dim] = -1
        v = v + b.double().numpy().reshape(shape)
    if act == "relu":
        v = np.maximum(v, 0.0)
    elif act == "lrelu":
        v = np.where(v > 0, v, alpha * v)
    v = v * gain
    if clamp is not None:
        v = np.minimum(np.maximum(v, -clamp), clamp)
    return torch.from_numpy(v)


def _inputs(shape=(3, 5, 4, 6), dim=1, dtype=torch.float64):
    x = torch.randn(shape, dtype=dtype)
    b = torch.randn(shape[dim], dtype=dtype)
    return x, b


@pytest.mark.parametrize("act,alpha,gain,clamp", SETTINGS)
@pytest.mark.parametrize("shape,dim", [((3, 5, 4, 6), 1), ((7, 9), 1), ((4, 6, 5), 2), ((6, 2, 3), 0)])
def test_ref_matches_independent_formula(act, alpha, gain, clamp, shape, dim):
    x, b = _inputs(shape, dim)
    for bias in (b, None):
        y = _bias_act_ref(x, bias, dim, act, alpha, gain, clamp)
        torch.testing.assert_close(y, independent(x, bias, dim, act, alpha, gain, clamp))


def test_defaults_per_activation():
    x, b = _inputs()
    torch.testing.assert_close(bias_act.bias_act(x, b, act="lrelu"), independent(x, b, 1, "lrelu", 0.2, math.sqrt(2), None))
    torch.testing.assert_close(bias_act.bias_act(x, b, act="relu"), independent(x, b, 1, "relu", 0, math.sqrt(2), None))
    torch.testing.assert_close(bias_act.bias_act(x, b), x + b[:, None, None])
    assert ACTIVATIONS["lrelu"][1:] == (0.2, math.sqrt(2))


def _away_from_kinks(x, b, dim, alpha, gain, clamp, eps=1e-3):
    """Moves x + b off 0 and off the clamp bounds, where the derivative jumps."""
    shape = [1] * x.ndim
    shape[dim] = -1
    v = x + b.reshape(shape)
    v = torch.where(v.abs() < eps, v + 4 * eps, v)
    if clamp is not None:
        for s in (1.0, alpha):
            if s != 0:
                for bound in (clamp / (gain * s), -clamp / (gain * s)):
                    v = torch.where((v - bound).abs() < 4 * eps, v + 10 * eps, v)
    return (v - b.reshape(shape)).detach()


@pytest.mark.parametrize("act,alpha,gain,clamp", SETTINGS)
def test_ref_gradcheck_and_gradgradcheck(act, alpha, gain, clamp):
    x, b = _inputs((2, 3, 4, 3))
    x = _away_from_kinks(x, b, 1, alpha, gain, clamp).requires_grad_()
    b.requires_grad_()
    fn = lambda x, b: _bias_act_ref(x, b, 1, act, alpha, gain, clamp)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


# ---------------------------------------------------------------------------
# The autograd Functions of the CUDA path, run on CPU with their "torch" backend.

@pytest.mark.parametrize("act,alpha,gain,clamp", SETTINGS)
def test_function_matches_ref_with_derivatives(act, alpha, gain, clamp):
    x, b = _inputs((2, 3, 4, 3))
    x = _away_from_kinks(x, b, 1, alpha, gain, clamp).requires_grad_()
    b.requires_grad_()
    cfg = _make_config(x, b, 1, act, alpha, gain, clamp, backend="torch")
    fn = lambda x, b: _BiasAct.apply(x, b, cfg)  # noqa: E731
    ref = lambda x, b: _bias_act_ref(x, b, 1, act, alpha, gain, clamp)  # noqa: E731
    torch.testing.assert_close(fn(x, b), ref(x, b))
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))
    # First and second derivatives equal the reference's, including the zero ones.
    gy = torch.randn_like(x)
    g1 = torch.autograd.grad(fn(x, b), (x, b), gy, create_graph=True)
    r1 = torch.autograd.grad(ref(x, b), (x, b), gy, create_graph=True)
    for a, r in zip(g1, r1):
        torch.testing.assert_close(a, r)
    # Second derivative in x: zero for piecewise-linear activations (None = zero).
    w = torch.randn_like(x)
    for first in (g1[0], r1[0]):
        if not first.requires_grad:  # no graph back to x at all: zero
            continue
        (second,) = torch.autograd.grad((first * w).sum(), x, allow_unused=True)
        assert second is None or torch.count_nonzero(second) == 0


def test_function_derivative_conventions_at_kinks():
    # Exactly at 0 and at the clamp bounds: same derivative as the reference.
    x = torch.tensor([[-1.0, 0.0, 0.5, 1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64)
    for act, alpha, gain, clamp in [("relu", 0.0, 1.0, 1.0), ("lrelu", 0.25, 1.0, 1.0), ("lrelu", 0.25, 2.0, None)]:
        cfg = _make_config(x, b, 0, act, alpha, gain, clamp, backend="torch")
        (g,) = torch.autograd.grad(_BiasAct.apply(x, b, cfg).sum(), x)
        (r,) = torch.autograd.grad(_bias_act_ref(x, b, 0, act, alpha, gain, clamp).sum(), x)
        torch.testing.assert_close(g, r)


def test_function_channels_last_and_noncontiguous():
    x, b = _inputs((2, 4, 5, 3), dtype=torch.float32)
    cfg = _make_config(x, b, 1, "lrelu", 0.2, 1.4, 0.8, backend="torch")
    ref = _bias_act_ref(x, b, 1, "lrelu", 0.2, 1.4, 0.8)
    y = _BiasAct.apply(x.to(memory_format=torch.channels_last), b, cfg)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, ref)
    big = torch.randn(2, 8, 5, 6)
    torch.testing.assert_close(_BiasAct.apply(big[:, ::2, :, ::2], b, cfg),
                               _bias_act_ref(big[:, ::2, :, ::2], b, 1, "lrelu", 0.2, 1.4, 0.8))


# ---------------------------------------------------------------------------
# The CUDA kernel's own code, run on the host by the emulator.

@pytest.mark.parametrize("act,alpha,gain,clamp", SETTINGS)
@pytest.mark.parametrize("wide", [False, True])
def test_kernel_code_matches_ref(emulator, act, alpha, gain, clamp, wide):
    code = ACTIVATIONS[act][0]
    for shape, dim, fmt in [((3, 5, 4, 6), 1, torch.contiguous_format), ((3, 5, 4, 6), 1, torch.channels_last),
                            ((7, 9), 1, torch.contiguous_format), ((4, 6, 5), 2, torch.contiguous_format)]:
        x, b = _inputs(shape, dim, torch.float32)
        x = x.contiguous(memory_format=fmt) if x.ndim == 4 else x
        y = emulator.bias_act(x, b, None, dim, code, alpha, gain, clamp, wide)
        torch.testing.assert_close(y, _bias_act_ref(x, b, dim, act, alpha, gain, clamp))
        xr = x.detach().clone().requires_grad_()
        dy = torch.randn_like(x)
        (ref_dx,) = torch.autograd.grad(_bias_act_ref(xr, b, dim, act, alpha, gain, clamp), xr, dy)
        torch.testing.assert_close(emulator.bias_act(x, b, dy, dim, code, alpha, gain, clamp, wide), ref_dx)
    x = torch.randn(4, 6)
    torch.testing.assert_close(emulator.bias_act(x, None, None, 1, code, alpha, gain, clamp, wide),
                               _bias_act_ref(x, None, 1, act, alpha, gain, clamp))


def _nonfinite_inputs(dtype=torch.float32):
    """x with NaN, +inf and -inf scattered over it: what a diverging fp16 layer feeds the next."""
    x, b = _inputs((3, 5, 4, 6), 1, dtype)
    flat = x.view(-1)
    flat[::7], flat[3::11], flat[5::13] = float("nan"), float("inf"), float("-inf")
    return x, b


@pytest.mark.parametrize("act,alpha,gain,clamp", SETTINGS)
def test_ref_propagates_nan_through_activation_and_clamp(act, alpha, gain, clamp):
    x, b = _nonfinite_inputs(torch.float64)
    y = _bias_act_ref(x, b, 1, act, alpha, gain, clamp)
    assert torch.isnan(y[torch.isnan(x)]).all()  # never 0 (relu) or -clamp (clamp)
    torch.testing.assert_close(y, independent(x, b, 1, act, alpha, gain, clamp), equal_nan=True)


@pytest.mark.parametrize("act,alpha,gain,clamp", SETTINGS)
def test_function_nonfinite_matches_ref(act, alpha, gain, clamp):
    """The autograd Functions' plain-PyTorch mirror of the kernel treats NaN and inf as the kernel does."""
    x, b = _nonfinite_inputs(torch.float64)
    cfg = _make_config(x, b, 1, act, alpha, gain, clamp, backend="torch")
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, yr = _BiasAct.apply(xf, b, cfg), _bias_act_ref(xr, b, 1, act, alpha, gain, clamp)
    torch.testing.assert_close(y, yr, equal_nan=True)
    dy = torch.randn_like(x)
    torch.testing.assert_close(torch.autograd.grad(y, xf, dy)[0], torch.autograd.grad(yr, xr, dy)[0], equal_nan=True)


@pytest.mark.parametrize("act,alpha,gain,clamp", SETTINGS)
def test_kernel_code_nonfinite_matches_ref(emulator, act, alpha, gain, clamp):
    code = ACTIVATIONS[act][0]
    x, b = _nonfinite_inputs()
    y = emulator.bias_act(x, b, None, 1, code, alpha, gain, clamp, False)
    assert torch.isnan(y[torch.isnan(x)]).all()
    torch.testing.assert_close(y, _bias_act_ref(x, b, 1, act, alpha, gain, clamp), equal_nan=True)
    xr = x.detach().clone().requires_grad_()
    dy = torch.randn_like(x)
    (ref_dx,) = torch.autograd.grad(_bias_act_ref(xr, b, 1, act, alpha, gain, clamp), xr, dy)
    torch.testing.assert_close(emulator.bias_act(x, b, dy, 1, code, alpha, gain, clamp, False), ref_dx,
                               equal_nan=True)


# ---------------------------------------------------------------------------
# Public API: dtypes and errors.

@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_low_precision_close_to_float32(dtype, tol):
    x, b = _inputs((2, 8, 6, 6), dtype=torch.float32)
    y32 = bias_act.bias_act(x, b, act="lrelu", clamp=2.0)
    y = bias_act.bias_act(x.to(dtype), b, act="lrelu", clamp=2.0)  # float32 bias is cast to x's dtype
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), y32, rtol=tol, atol=tol)


def test_empty_tensor():
    x = torch.randn(0, 4)
    assert bias_act.bias_act(x, torch.randn(4), act="lrelu").shape == (0, 4)


def test_bad_arguments_raise_clear_errors():
    x, b = _inputs()
    with pytest.raises(ValueError, match="unknown activation"):
        bias_act.bias_act(x, b, act="gelu")
    with pytest.raises(ValueError, match="shape"):
        bias_act.bias_act(x, torch.randn(4, dtype=x.dtype))
    with pytest.raises(ValueError, match="dim"):
        bias_act.bias_act(x, b, dim=4)
    with pytest.raises(ValueError, match="clamp"):
        bias_act.bias_act(x, b, clamp=-1.0)
