"""ADA: the grid_sample gradient fix and the bgc AugmentPipe.

The pipe is checked transform by transform against formulas written here, with
the random values re-drawn from the same seed in NVlabs' order (which also pins
the order and shapes of the draws), then as a whole: p = 0, reproducibility, RNG
use, dtypes, and R1 through it.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ops.grid_sample_gradfix import _grid_sample_ref, grid_sample
from trainer.gan import augment
from trainer.gan.augment import AugmentConfig, AugmentPipe

MULTIPLIERS = ["xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac",
               "brightness", "contrast", "lumaflip", "hue", "saturation"]


def _only(*names: str, p: float = 1.0) -> AugmentPipe:
    """A pipe with only the named transforms enabled, at probability p."""
    cfg = AugmentConfig(**{m: float(m in names) for m in MULTIPLIERS})
    pipe = AugmentPipe(cfg)
    pipe.set_p(p)
    return pipe


def _smooth(n: int, size: int) -> torch.Tensor:
    """Low-frequency images in [-1, 1] (the resampling filter is exact only on those)."""
    return F.interpolate(torch.rand(n, 3, 4, 4) * 2 - 1, size=size, mode="bilinear", align_corners=False)


def _run(pipe: AugmentPipe, x: torch.Tensor, seed: int = 123) -> torch.Tensor:
    torch.manual_seed(seed)
    return pipe(x)


# ----------------------------------------------------------------------------
# grid_sample_gradfix.

def _grid(n: int, h: int, w: int, dtype=torch.float64) -> torch.Tensor:
    return torch.rand(n, h, w, 2, dtype=dtype) * 2.4 - 1.2  # some points fall outside (zeros)


def test_grid_sample_matches_native_value_and_grads():
    x = torch.randn(2, 3, 5, 7, requires_grad=True)
    g = _grid(2, 4, 6, torch.float32).requires_grad_(True)
    w = torch.randn(2, 3, 4, 6)
    y = grid_sample(x, g)
    y_ref = _grid_sample_ref(x, g)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    dx, dg = torch.autograd.grad((y * w).sum(), [x, g])
    dx_ref, dg_ref = torch.autograd.grad((y_ref * w).sum(), [x, g])
    torch.testing.assert_close(dx, dx_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dg, dg_ref, rtol=1e-6, atol=1e-6)


def test_grid_sample_gradcheck_and_gradgradcheck():
    x = torch.randn(2, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    g = _grid(2, 3, 3)
    assert torch.autograd.gradcheck(grid_sample, (x, g.clone().requires_grad_(True)))
    assert torch.autograd.gradgradcheck(lambda x: grid_sample(x, g), (x,))


def _bilinear_formula(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear sampling with zeros outside and align_corners=False, from its definition:
    four gathers weighted by the distances. Differentiable twice in ``x`` on any torch."""
    n, c, h, w = x.shape
    gx, gy = ((grid[..., 0] + 1) * w - 1) / 2, ((grid[..., 1] + 1) * h - 1) / 2
    out = torch.zeros(n, c, *grid.shape[1:3], dtype=x.dtype)
    for xi in (gx.floor(), gx.floor() + 1):
        for yi in (gy.floor(), gy.floor() + 1):
            weight = (1 - (gx - xi).abs()) * (1 - (gy - yi).abs())
            weight = weight * ((xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1))
            idx = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).long().reshape(n, 1, -1).expand(n, c, -1)
            out = out + x.reshape(n, c, h * w).gather(2, idx).reshape(out.shape) * weight[:, None]
    return out


def _second_derivative(fn, x, g, w):
    gx, = torch.autograd.grad((fn(x, g).tanh() * w).sum(), x, create_graph=True)
    return torch.autograd.grad(gx.square().sum(), x)[0]


def test_grid_sample_second_derivative_matches_the_formula_and_native():
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    g, w = _grid(2, 4, 4), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(_bilinear_formula(x, g), _grid_sample_ref(x, g))  # the formula is right
    ours = _second_derivative(grid_sample, x, g, w)
    torch.testing.assert_close(ours, _second_derivative(_bilinear_formula, x, g, w))
    try:  # PyTorch's own double backward, where it has one (2.13 does)
        native = _second_derivative(_grid_sample_ref, x, g, w)
    except RuntimeError as e:  # torch 2.11: the reason this module exists
        assert "derivative for aten::grid_sampler_2d_backward is not implemented" in str(e)
    else:
        torch.testing.assert_close(ours, native)


def test_grid_sample_second_derivative_through_grid_raises():
    x = torch.randn(1, 1, 4, 4, requires_grad=True)
    g = _grid(1, 3, 3, torch.float32).requires_grad_(True)
    gx, = torch.autograd.grad(grid_sample(x, g).square().sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="grid"):
        gx.sum().backward()
    gg, = torch.autograd.grad(grid_sample(x, g).sum(), g, create_graph=True)
    with pytest.raises(NotImplementedError, match="grid"):
        gg.square().sum().backward()


def test_grid_sample_rejects_bad_shapes():
    with pytest.raises(ValueError):
        grid_sample(torch.zeros(1, 1, 4, 4), torch.zeros(1, 3, 3, 3))


# ----------------------------------------------------------------------------
# Geometric transforms.

def test_xflip_only_flips_or_keeps():
    x = _smooth(64, 32)
    torch.manual_seed(5)
    flip = torch.floor(torch.rand(64) * 2).bool()  # drawn first; the p mask always passes at p = 1
    y = _run(_only("xflip"), x, seed=5)
    expected = torch.where(flip[:, None, None, None], x.flip(3), x)
    # sym6 is not linear-phase: a flip carries a small sub-pixel shift (as in NVlabs).
    err = (y - expected).abs().amax(dim=(1, 2, 3))
    wrong = (y - torch.where(flip[:, None, None, None], x, x.flip(3))).abs().amax(dim=(1, 2, 3))
    assert err.max() < 0.06 and (wrong > 10 * err).all()
    assert 0 < flip.sum() < 64


def test_rotate90_only_rotates_by_drawn_multiple():
    x = _smooth(64, 32)
    torch.manual_seed(6)
    k = torch.floor(torch.rand(64) * 4).long()
    y = _run(_only("rotate90"), x, seed=6)
    for n in range(64):
        errs = [(y[n] - torch.rot90(x[n], r, dims=(1, 2))).abs().max().item() for r in range(4)]
        assert errs[k[n]] < 0.06 and sorted(errs)[1] > 10 * errs[k[n]], (n, errs)
    assert set(k.tolist()) == {0, 1, 2, 3}


def test_xint_only_is_an_exact_shift_with_reflection():
    x = torch.randn(16, 3, 16, 16)  # integer shifts are exact even for noise
    torch.manual_seed(7)
    t = torch.round((torch.rand(16, 2) * 2 - 1) * 0.125 * 16).long()
    y = _run(_only("xint"), x, seed=7)
    padded = F.pad(x, [2, 2, 2, 2], mode="reflect")
    for n in range(16):
        tx, ty = t[n].tolist()
        torch.testing.assert_close(y[n], padded[n, :, 2 - ty:18 - ty, 2 - tx:18 - tx], atol=2e-5, rtol=0)
    assert (t != 0).any()


def _rot(theta: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(theta), torch.sin(theta)
    m = torch.zeros(theta.shape[0], 3, 3)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1], m[:, 2, 2] = c, -s, s, c, 1
    return m


def _diag(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    return torch.diag_embed(torch.stack([sx, sy, torch.ones_like(sx)], dim=1))


def _expected_matrix(name: str, n: int, size: int) -> torch.Tensor:
    """Output -> input matrix of one transform from the values drawn (after seeding)."""
    if name == "scale":
        s = torch.exp2(torch.randn(n) * 0.2)
        return _diag(1 / s, 1 / s)
    if name == "aniso":
        s = torch.exp2(torch.randn(n) * 0.2)
        return _diag(1 / s, s)
    if name == "xfrac":
        t = torch.randn(n, 2) * 0.125 * size
        m = torch.eye(3).repeat(n, 1, 1)
        m[:, :2, 2] = -t
        return m
    # rotate at p = 1: p_rot = 1, so both the pre- and the post-rotation always apply.
    theta1 = (torch.rand(n) * 2 - 1) * math.pi
    torch.rand(n)  # its mask
    theta2 = (torch.rand(n) * 2 - 1) * math.pi
    return _rot(theta1 + theta2)


@pytest.mark.parametrize("name", ["scale", "rotate", "aniso", "xfrac"])
def test_geometric_matrix_matches_formula(name):
    x = torch.zeros(8, 3, 16, 16)
    torch.manual_seed(8)
    expected = _expected_matrix(name, 8, 16)
    torch.manual_seed(8)
    G = _only(name)._geometric_matrix(x, torch.tensor(1.0))
    torch.testing.assert_close(G, expected, atol=1e-5, rtol=1e-5)


def test_scale_resamples_about_the_centre():
    """A linear ramp scaled by s about the image centre is the ramp divided by s."""
    ramp = torch.linspace(-0.5, 0.5, 32).expand(4, 3, 32, 32).contiguous()
    torch.manual_seed(9)
    s = torch.exp2(torch.randn(4) * 0.2)
    y = _run(_only("scale"), ramp, seed=9)
    centre = slice(10, 22)  # away from the reflected border
    torch.testing.assert_close(y[..., centre, centre], ramp[..., centre, centre] / s[:, None, None, None],
                               atol=2e-3, rtol=0)


# ----------------------------------------------------------------------------
# Colour transforms: formulas on the per-pixel RGB vectors.

def _luma(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=1, keepdim=True)  # projection on v = [1, 1, 1] / sqrt(3), per channel


def test_brightness_only_adds_a_constant_per_sample():
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    torch.manual_seed(10)
    b = torch.randn(8) * 0.2
    y = _run(_only("brightness"), x, seed=10)
    torch.testing.assert_close(y, x + b[:, None, None, None], atol=1e-6, rtol=0)


def test_contrast_only_scales_about_zero():
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    torch.manual_seed(11)
    c = torch.exp2(torch.randn(8) * 0.5)
    y = _run(_only("contrast"), x, seed=11)
    torch.testing.assert_close(y, x * c[:, None, None, None], atol=1e-5, rtol=1e-5)


def test_lumaflip_only_negates_luma_or_keeps():
    x = torch.rand(64, 3, 8, 8) * 2 - 1
    torch.manual_seed(12)
    i = torch.floor(torch.rand(64) * 2)[:, None, None, None]
    y = _run(_only("lumaflip"), x, seed=12)
    torch.testing.assert_close(y, x - 2 * i * _luma(x), atol=1e-5, rtol=0)
    assert 0 < i.sum() < 64


def test_hue_only_rotates_chroma_around_luma():
    x = torch.rand(8, 3, 8, 8) * 2 - 1
    torch.manual_seed(13)
    theta = (torch.rand(8) * 2 - 1) * math.pi
    y = _run(_only("hue"), x, seed=13)
    torch.testing.assert_close(_luma(y), _luma(x), atol=1e-5, rtol=0)
    cx, cy = x - _luma(x), y - _luma(y)
    torch.testing.assert_close(cy.norm(dim=1), cx.norm(dim=1), atol=1e-5, rtol=0)
    cos = (cx * cy).sum(1) / (cx.norm(dim=1) * cy.norm(dim=1))
    torch.testing.assert_close(cos, theta.cos()[:, None, None].expand_as(cos), atol=1e-3, rtol=0)


def test_saturation_only_scales_chroma_keeps_luma():
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    torch.manual_seed(14)
    s = torch.exp2(torch.randn(8))[:, None, None, None]
    y = _run(_only("saturation"), x, seed=14)
    torch.testing.assert_close(_luma(y), _luma(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(y - _luma(y), s * (x - _luma(x)), atol=1e-5, rtol=1e-5)


def _uniform_gated(n: int, *shape: int) -> torch.Tensor:
    """A uniform draw followed by its (always passing, at p = 1) mask draw."""
    u = torch.rand(n, *shape)
    torch.rand(n)
    return u


def _normal_gated(n: int, *shape: int) -> torch.Tensor:
    z = torch.randn(n, *shape)
    torch.rand(n)
    return z


def test_full_matrices_compose_in_nvlabs_order():
    """All transforms at p = 1: G_inv = flip R90 Tint S Rpre A Rpost Tfrac (inverses, applied
    on the right); C = Sat Hue Lumaflip Contrast Brightness (applied on the left)."""
    n, size = 6, 16
    x = torch.zeros(n, 3, size, size)
    torch.manual_seed(19)
    flip = torch.floor(_uniform_gated(n) * 2)
    k = torch.floor(_uniform_gated(n) * 4)
    t_int = torch.round((_uniform_gated(n, 2) * 2 - 1) * 0.125 * size)
    s = torch.exp2(_normal_gated(n) * 0.2)
    theta1 = (_uniform_gated(n) * 2 - 1) * math.pi
    a = torch.exp2(_normal_gated(n) * 0.2)
    theta2 = (_uniform_gated(n) * 2 - 1) * math.pi
    t_frac = _normal_gated(n, 2) * 0.125 * size
    b = _normal_gated(n) * 0.2
    c = torch.exp2(_normal_gated(n) * 0.5)
    luma_flip = torch.floor(_uniform_gated(n) * 2)
    hue = (_uniform_gated(n) * 2 - 1) * math.pi
    sat = torch.exp2(_normal_gated(n))

    def shift(t):
        m = torch.eye(3).repeat(n, 1, 1)
        m[:, :2, 2] = -t
        return m

    G = (_diag(1 - 2 * flip, torch.ones(n)) @ _rot(math.pi / 2 * k) @ shift(t_int) @ _diag(1 / s, 1 / s)
         @ _rot(theta1) @ _diag(1 / a, a) @ _rot(theta2) @ shift(t_frac))
    v = torch.ones(3) / math.sqrt(3)
    P = torch.outer(v, v)
    cross = torch.tensor([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    hue_rot = torch.linalg.matrix_exp(hue[:, None, None] * cross)  # rotation about v by hue
    eye = torch.eye(3)
    saturation = P + (eye - P) * sat[:, None, None]
    M = saturation @ hue_rot @ (eye - 2 * P * luma_flip[:, None, None]) * c[:, None, None]
    offset = M @ b[:, None].expand(n, 3)[..., None]  # brightness is added first, then transformed

    pipe, p = _only(*MULTIPLIERS), torch.tensor(1.0)
    torch.manual_seed(19)
    torch.testing.assert_close(pipe._geometric_matrix(x, p), G, atol=1e-5, rtol=1e-5)
    C = pipe._color_matrix(x, p)
    torch.testing.assert_close(C[:, :3, :3], M, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(C[:, :3, 3:], offset, atol=1e-5, rtol=1e-5)
    assert flip.any() and (k > 0).any() and luma_flip.any()


# ----------------------------------------------------------------------------
# The whole bgc pipe.

def test_defaults_are_bgc_and_p_is_a_saved_buffer():
    pipe = AugmentPipe()
    assert all(getattr(pipe.cfg, m) == 1.0 for m in MULTIPLIERS)
    assert list(pipe.state_dict()) == ["p"] and pipe.p.dtype == torch.float32 and pipe.p.item() == 0
    pipe.set_p(0.25)
    other = AugmentPipe()
    other.load_state_dict(pipe.state_dict())
    assert other.p.item() == 0.25
    with pytest.raises(ValueError):
        pipe.set_p(-0.1)


def test_p_zero_returns_input_exactly():
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    assert torch.equal(AugmentPipe()(x), x)


def test_rng_use_does_not_depend_on_p():
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    states = []
    for p in (0.0, 0.3, 1.0):
        _run(_only(*MULTIPLIERS, p=p), x, seed=15)
        states.append(torch.get_rng_state())
    assert all(torch.equal(states[0], s) for s in states[1:])


def test_same_seed_same_output_and_p_changes_it():
    x = torch.rand(5, 3, 16, 16) * 2 - 1
    pipe = _only(*MULTIPLIERS, p=0.6)
    a, b = _run(pipe, x, seed=16), _run(pipe, x, seed=16)
    assert torch.equal(a, b)
    assert not torch.equal(a, _run(pipe, x, seed=17))
    assert not torch.allclose(a, x, atol=1e-3)


@pytest.mark.parametrize("dtype,shape", [(torch.float32, (1, 3, 8, 8)), (torch.float64, (5, 3, 16, 16)),
                                         (torch.bfloat16, (3, 3, 32, 32)), (torch.float32, (2, 1, 16, 16)),
                                         (torch.float32, (2, 3, 12, 20))])
def test_shape_and_dtype_preserved(dtype, shape):
    x = (torch.rand(shape) * 2 - 1).to(dtype)
    y = _run(_only(*MULTIPLIERS, p=1.0), x)
    assert y.shape == x.shape and y.dtype == dtype and torch.isfinite(y.float()).all()


def _tiny_d() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.LeakyReLU(0.2), torch.nn.Conv2d(4, 1, 3))


def _r1_grads(real: torch.Tensor, pipe: AugmentPipe) -> tuple[torch.Tensor, list[torch.Tensor]]:
    D = _tiny_d()
    x = real.detach().requires_grad_(True)
    torch.manual_seed(18)
    logits = D(pipe(x)).sum()
    gx, = torch.autograd.grad(logits, x, create_graph=True)
    (gx.square().sum() + 0 * logits).backward()  # the zero term gives biases a (zero) gradient
    return gx.detach(), [p.grad for p in D.parameters()]


def test_r1_through_bgc_pipe(monkeypatch):
    real = _smooth(4, 16)
    pipe = _only(*MULTIPLIERS, p=0.5)
    gx, grads = _r1_grads(real, pipe)
    assert torch.isfinite(gx).all() and gx.abs().sum() > 0
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # The penalty depends on the weights; the biases only move the piecewise-linear kinks.
    assert all(g.abs().sum() > 0 for g in grads if g.ndim == 4)
    # Same penalty gradients as through bilinear sampling written out (twice differentiable on
    # every torch; 2.13's native double backward agrees, see above).
    monkeypatch.setattr(augment, "grid_sample", _bilinear_formula)
    gx_ref, grads_ref = _r1_grads(real, pipe)
    torch.testing.assert_close(gx, gx_ref)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-4)
