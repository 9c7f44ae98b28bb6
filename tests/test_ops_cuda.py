"""CUDA implementations against the (separately proven) references: forward,
gradient and gradient of gradient, in float32, float16 and bfloat16, with
channels_last, non-contiguous and large inputs. Skipped without a GPU.

Tolerances: float32 results agree to 1e-5 (only summation order differs; TF32 is
off while these run, so the references are true float32);
float16 / bfloat16 results are compared with the float32 reference on the same
(rounded) inputs, within 1e-2 / 4e-2 relative + absolute (one rounding of the
output; the kernels accumulate in float32)."""

from __future__ import annotations

import pytest
import torch

import ops
from benchmarks.ops import _median_ms
from ops import bias_act, upfirdn2d

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 4e-2}
DTYPES = list(TOL)
UFD_CASES = [
    (1, 1, (1, 2, 1, 2)), (2, 1, (2, 1)), (1, 2, (1, 1)), (2, 2, (1, 2, 0, 3)),
    ((3, 1), (1, 2), (2, 0, 1, 1)), (4, 1, (3, 2, 1, 2)), (1, 4, (2, 2, 3, 1)), ((1, 3), (4, 1), (-1, 2, 3, -2)),
]
FILTERS = {"binomial4": [1, 3, 3, 1], "taps12": [0.1 * i - 0.4 for i in range(12)], "rect": [[1, 2, -1], [0.5, 3, 1]]}


@pytest.fixture(autouse=True)
def _strict():
    ops.set_strict(True)  # a failed build must fail these tests, not fall back
    yield
    ops.set_strict(None)


@pytest.fixture(autouse=True)
def _no_tf32():
    """The references' convolutions (the single-channel, R1 and channels_last cases go through
    cuDNN) and matmuls would run in TF32 on Ampere and later, about 1e-3 relative: far outside
    the 1e-5 float32 tolerance, failing for the reference's rounding, not the kernel's."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def assert_close_tol(a, b, dtype):
    torch.testing.assert_close(a.float(), b.float(), rtol=TOL[dtype], atol=TOL[dtype] * max(1.0, b.abs().max().item()))


def _setup_f(name):
    return upfirdn2d.setup_filter(FILTERS[name], device="cuda", separable=name == "taps12", normalize=False)


def _ufd_three_ways(x, f, kw, dtype):
    """y, dx and d(dx)/d(dy) for cuda (in dtype) and ref (float32 on the same inputs)."""
    results = {}
    for impl, dt in (("cuda", dtype), ("ref", torch.float32)):
        xi = x.to(dt).detach().requires_grad_()
        y = upfirdn2d.upfirdn2d(xi, f, impl=impl, **kw)
        assert ops.last_impl("upfirdn2d") == impl
        dy = torch.ones_like(y).mul_(0.5).add_(torch.linspace(-1, 1, y.numel(), device=y.device, dtype=dt).reshape(y.shape)).requires_grad_()
        (dx,) = torch.autograd.grad(y, xi, dy, create_graph=True)
        (ddy,) = torch.autograd.grad((dx * xi.detach()).sum(), dy)
        results[impl] = (y, dx, ddy)
    return results


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("up,down,pad", UFD_CASES)
@pytest.mark.parametrize("fname", list(FILTERS))
def test_upfirdn2d_cuda_matches_ref(dtype, up, down, pad, fname):
    x = torch.randn(2, 3, 19, 23, device="cuda").to(dtype)
    res = _ufd_three_ways(x, _setup_f(fname), dict(up=up, down=down, padding=pad, gain=1.5), dtype)
    for got, want in zip(res["cuda"], res["ref"]):
        assert got.dtype == dtype
        assert_close_tol(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_upfirdn2d_cuda_layouts(dtype):
    f = _setup_f("binomial4")
    base = torch.randn(2, 16, 40, 36, device="cuda").to(dtype)
    for x in (base.to(memory_format=torch.channels_last), base[:, 1::2, 3:-2, ::2], base.transpose(2, 3)):
        y = upfirdn2d.upsample2d(x, f, impl="cuda")
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            assert y.is_contiguous(memory_format=torch.channels_last)
        assert_close_tol(y, upfirdn2d.upsample2d(x.float(), f, impl="ref"), dtype)
        xg = x.detach().requires_grad_()
        (g,) = torch.autograd.grad(upfirdn2d.downsample2d(xg, f, impl="cuda").square().sum(), xg)
        xr = x.float().detach().requires_grad_()
        (gr,) = torch.autograd.grad(upfirdn2d.downsample2d(xr, f, impl="ref").square().sum(), xr)
        assert_close_tol(g, gr, dtype)


def test_upfirdn2d_cuda_large_shapes():
    f = _setup_f("binomial4")
    for shape, kw in [((4, 32, 513, 513), dict(padding=1)), ((4, 3, 512, 512), dict(up=2, padding=(2, 1))),
                      ((2, 64, 512, 512), dict(down=2, padding=(1, 1)))]:
        x = torch.randn(shape, device="cuda")
        assert_close_tol(upfirdn2d.upfirdn2d(x, f, impl="cuda", **kw), upfirdn2d.upfirdn2d(x, f, impl="ref", **kw), torch.float32)
    x = torch.randn(70000, 1, 8, 8, device="cuda")  # more planes than one grid dimension holds
    assert_close_tol(upfirdn2d.filter2d(x, f, impl="cuda"), upfirdn2d.filter2d(x, f, impl="ref"), torch.float32)


ACTS = [("linear", None, 1.0, None), ("relu", None, None, 1.0), ("lrelu", 0.2, None, None), ("lrelu", 0.1, 2.0, 0.5)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act,alpha,gain,clamp", ACTS)
@pytest.mark.parametrize("shape,dim", [((4, 32, 17, 9), 1), ((8, 512), 1), ((3, 5, 7), 2)])
def test_bias_act_cuda_matches_ref(dtype, act, alpha, gain, clamp, shape, dim):
    x = torch.randn(shape, device="cuda").to(dtype)
    b = torch.randn(shape[dim], device="cuda").to(dtype)  # same rounded values on both sides of the kinks
    dy0 = torch.randn(shape, device="cuda").to(dtype)
    out = {}
    for impl, dt in (("cuda", dtype), ("ref", torch.float32)):
        xi, bi = x.to(dt).detach().requires_grad_(), b.to(dt).detach().requires_grad_()
        y = bias_act.bias_act(xi, bi, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp, impl=impl)
        assert ops.last_impl("bias_act") == impl
        dy = dy0.to(dt).requires_grad_()
        dx, db = torch.autograd.grad(y, (xi, bi), dy, create_graph=True)
        (ddy,) = torch.autograd.grad((dx * torch.cos(xi.detach())).sum(), dy)
        out[impl] = (y, dx, db, ddy)
    for got, want in zip(out["cuda"], out["ref"]):
        assert_close_tol(got, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_act_cuda_layouts(dtype):
    base = torch.randn(2, 16, 12, 10, device="cuda").to(dtype)
    for x, b in ((base.to(memory_format=torch.channels_last), torch.randn(16, device="cuda")),
                 (base[:, ::2, 1:, ::3], torch.randn(8, device="cuda"))):
        y = bias_act.bias_act(x, b, act="lrelu", clamp=1.0, impl="cuda")
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            assert y.is_contiguous(memory_format=torch.channels_last)
        assert_close_tol(y, bias_act.bias_act(x.float(), b, act="lrelu", clamp=1.0, impl="ref"), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act,alpha,gain,clamp", ACTS)
def test_nonfinite_inputs_match_ref(dtype, act, alpha, gain, clamp):
    """NaN and inf leave both ops exactly where the reference puts them: a diverging fp16 layer
    stays visible (relu does not turn NaN into 0, nor the clamp into -clamp)."""
    x = torch.randn(2, 8, 9, 11, device="cuda")
    flat = x.view(-1)
    flat[::7], flat[3::11], flat[5::13] = float("nan"), float("inf"), float("-inf")
    x = x.to(dtype)
    b = torch.randn(8, device="cuda").to(dtype)
    y = bias_act.bias_act(x, b, act=act, alpha=alpha, gain=gain, clamp=clamp, impl="cuda")
    yr = bias_act.bias_act(x.float(), b.float(), act=act, alpha=alpha, gain=gain, clamp=clamp, impl="ref")
    assert torch.isnan(y[torch.isnan(x)]).all()
    torch.testing.assert_close(y.float(), yr, rtol=TOL[dtype], atol=TOL[dtype], equal_nan=True)
    f = _setup_f("binomial4")
    u = upfirdn2d.upfirdn2d(x, f, up=2, padding=(2, 1), impl="cuda")
    ur = upfirdn2d.upfirdn2d(x.float(), f, up=2, padding=(2, 1), impl="ref")
    assert torch.equal(torch.isnan(u), torch.isnan(ur))


def test_bias_act_cuda_large_tensor():
    x = torch.randn(4, 64, 512, 512, device="cuda")  # 256 MiB
    b = torch.randn(64, device="cuda")
    assert_close_tol(bias_act.bias_act(x, b, act="lrelu", impl="cuda"), bias_act.bias_act(x, b, act="lrelu", impl="ref"), torch.float32)


@pytest.mark.slow
def test_bias_act_cuda_64bit_indexing():
    x = torch.randn(2**31 + 4096, device="cuda", dtype=torch.float16).reshape(-1, 4096)
    b = torch.randn(4096, device="cuda", dtype=torch.float16)
    y = bias_act.bias_act(x, b, act="lrelu", impl="cuda")
    tail = slice(-3, None)
    assert_close_tol(y[tail], bias_act.bias_act(x[tail].float(), b.float(), act="lrelu", impl="ref"), torch.float16)


def test_r1_penalty_through_both_ops_matches_ref():
    """A tiny D-like net: R1 gradient penalty and its parameter gradients agree."""
    torch.manual_seed(0)
    w = torch.randn(8, 3, 3, 3, device="cuda", requires_grad=True)
    b = torch.zeros(8, device="cuda", requires_grad=True)
    f = _setup_f("binomial4")
    img = torch.randn(4, 3, 32, 32, device="cuda")
    grads = {}
    for impl in ("cuda", "ref"):
        x = img.clone().requires_grad_()
        h = torch.nn.functional.conv2d(upfirdn2d.filter2d(x, f, impl=impl), w, padding=1)
        h = bias_act.bias_act(h, b, act="lrelu", impl=impl)
        logits = upfirdn2d.downsample2d(h, f, impl=impl).mean([1, 2, 3])
        (gx,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
        grads[impl] = torch.autograd.grad(gx.square().sum(), (w, b))
    for got, want in zip(grads["cuda"], grads["ref"]):
        assert_close_tol(got, want, torch.float32)


def test_load_time_probes_pass_on_this_gpu():
    """The tiny call each extension makes when it loads (ops/_build.py) succeeds here, so auto
    uses the kernels: a probe that failed would have fallen back to the reference."""
    for mod in (upfirdn2d, bias_act):
        mod._probe(mod._plugin())
    x = torch.randn(1, 2, 8, 8, device="cuda")
    bias_act.bias_act(upfirdn2d.filter2d(x, upfirdn2d.setup_filter([1, 2, 1], device="cuda")), act="lrelu")
    assert ops.last_impl("upfirdn2d") == "cuda" and ops.last_impl("bias_act") == "cuda"


# ---------------------------------------------------------------------------
# Streams, graphs, devices, extreme shapes, and speed.

def test_side_stream_and_cuda_graph_capture():
    """The kernels run on the caller's current stream (a side stream, a graph being captured):
    a replay after the input changes in place gives the reference's result for the new input."""
    f = _setup_f("binomial4")
    b = torch.randn(16, device="cuda")
    x = torch.randn(2, 16, 20, 24, device="cuda")

    def both(impl, t):
        return bias_act.bias_act(upfirdn2d.upsample2d(t, f, impl=impl), b, act="lrelu", clamp=1.5, impl=impl)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y = both("cuda", x)  # also the warm-up a capture needs (builds, allocator)
    side.synchronize()
    assert_close_tol(y, both("ref", x), torch.float32)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y_static = both("cuda", x)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert_close_tol(y_static, both("ref", x), torch.float32)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_input_on_another_gpu_than_the_current_one():
    f = _setup_f("binomial4").to("cuda:1")
    x = torch.randn(2, 8, 17, 19, device="cuda:1")
    b = torch.randn(8, device="cuda:1")
    with torch.cuda.device(0):
        y = bias_act.bias_act(upfirdn2d.downsample2d(x, f, impl="cuda"), b, act="lrelu", impl="cuda")
    assert y.device == x.device
    assert_close_tol(y, bias_act.bias_act(upfirdn2d.downsample2d(x, f, impl="ref"), b, act="lrelu", impl="ref"),
                     torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_act_backward_on_channels_last_and_mixed_strides(dtype):
    base = torch.randn(2, 16, 12, 10, device="cuda").to(dtype)
    b = torch.randn(16, device="cuda").to(dtype)
    for x in (base.to(memory_format=torch.channels_last), base.permute(0, 1, 3, 2), base[:, :, ::2, 1:]):
        grads = {}
        for impl, dt in (("cuda", dtype), ("ref", torch.float32)):
            xi, bi = x.to(dt).detach().requires_grad_(), b.to(dt).detach().requires_grad_()
            y = bias_act.bias_act(xi, bi, act="lrelu", clamp=1.0, impl=impl)
            dy = torch.cos(torch.arange(y.numel(), device="cuda", dtype=torch.float32)).reshape(y.shape).to(dt)
            grads[impl] = torch.autograd.grad(y, (xi, bi), dy)
        for got, want in zip(grads["cuda"], grads["ref"]):
            assert_close_tol(got, want, dtype)


@pytest.mark.parametrize("taps,up,down", [(64, 1, 1), (64, 4, 1), (32, 1, 4), (48, 4, 4)])
def test_upfirdn2d_largest_filters_and_factors(taps, up, down):
    """Filters up to the kernel's 64 taps a side with large factors: the tile plan's shared-memory
    bound (48 KB) shrinks the tiles; results still match the reference."""
    torch.manual_seed(taps + up)
    f = torch.rand(taps, taps, device="cuda") + 0.1
    x = torch.randn(1, 3, 70, 90, device="cuda")
    pad = (taps // 2, taps // 2 - 1)
    for dtype in DTYPES:
        y = upfirdn2d.upfirdn2d(x.to(dtype), f, up=up, down=down, padding=pad, impl="cuda")
        assert_close_tol(y, upfirdn2d.upfirdn2d(x.to(dtype).float(), f, up=up, down=down, padding=pad, impl="ref"), dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_at_large_shapes(dtype):
    f = _setup_f("binomial4")
    x = torch.randn(4, 32, 513, 513, device="cuda").to(dtype)
    for kw in (dict(padding=1), dict(up=2, padding=(2, 1)), dict(down=2, padding=(1, 1))):
        y = upfirdn2d.upfirdn2d(x, f, impl="cuda", **kw)
        assert_close_tol(y, upfirdn2d.upfirdn2d(x.float(), f, impl="ref", **kw), dtype)
    b = torch.randn(32, device="cuda").to(dtype)
    assert_close_tol(bias_act.bias_act(x, b, act="lrelu", clamp=256.0, impl="cuda"),
                     bias_act.bias_act(x.float(), b.float(), act="lrelu", clamp=256.0, impl="ref"), dtype)


@pytest.mark.slow
def test_upfirdn2d_past_2_31_elements():
    """An fp16 input of more than 2^31 elements (4 GiB): the kernel's 64-bit offsets reach the
    last plane, checked against the reference on that plane alone (planes are independent)."""
    f = _setup_f("binomial4")
    x = torch.randn(1, 2049, 1024, 1024, device="cuda", dtype=torch.float16)
    assert x.numel() > 2**31
    y = upfirdn2d.filter2d(x, f, padding=1, impl="cuda")
    assert_close_tol(y[:, -1:], upfirdn2d.filter2d(x[:, -1:].float(), f, padding=1, impl="ref"), torch.float16)


def test_cuda_is_faster_than_ref_at_benchmark_shapes():
    """Forward + backward at three shapes of a 1024 px step (benchmarks/ops.py; batch 1): the
    reason the kernels exist. The 3x target is the benchmark's, not this test's."""
    f = _setup_f("binomial4")
    b = torch.randn(32, device="cuda")
    # Each case its own leaf of 128 MiB, so that GPU time, not Python dispatch, is measured.
    cases = {"G blur after up-conv": (lambda t, impl: upfirdn2d.filter2d(t, f, padding=1, impl=impl)),
             "D downsample": (lambda t, impl: upfirdn2d.downsample2d(t, f, impl=impl)),
             "bias_act": (lambda t, impl: bias_act.bias_act(t, b, act="lrelu", impl=impl))}
    for name, op in cases.items():
        x = torch.randn(1, 32, 1024, 1024, device="cuda", requires_grad=True)
        ms = {impl: _median_ms(lambda: torch.autograd.grad(op(x, impl).square().sum(), x), torch.device("cuda"), 1, 10)
              for impl in ("cuda", "ref")}
        assert ms["cuda"] < ms["ref"], (name, ms)
