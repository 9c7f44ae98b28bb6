"""SSIM / MS-SSIM against their definitions, recomputed independently in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from eval.msssim import MS_SSIM_WEIGHTS, fitting_scales, ms_ssim, ssim

K1, K2 = 0.01, 0.03


def _images(n: int, c: int, h: int, w: int, noise: float, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Structured images in [-1, 1] (a smooth pattern plus texture) and a noisy copy."""
    yy, xx = torch.meshgrid(torch.linspace(0, 6, h), torch.linspace(0, 6, w), indexing="ij")
    base = 0.5 * torch.sin(xx + yy)[None, None] + 0.3 * torch.rand(n, c, h, w)
    x = base.clamp(-1, 1).to(dtype)
    y = (x + noise * torch.randn(n, c, h, w, dtype=dtype)).clamp(-1, 1)
    return x, y


# --- numpy reference -------------------------------------------------------------------------

def _np_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    c = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(c**2) / (2 * sigma**2))
    g /= g.sum()
    return np.outer(g, g)


def _np_ssim_cs(x: np.ndarray, y: np.ndarray, data_range: float) -> tuple[float, float]:
    """Mean SSIM and contrast-structure of one channel, window moments taken directly
    (sum w * (x - mu)^2 over every valid 11x11 window)."""
    win = _np_window()
    wx = sliding_window_view(x, win.shape)  # [H-10, W-10, 11, 11]
    wy = sliding_window_view(y, win.shape)
    mu_x = np.einsum("ijkl,kl->ij", wx, win)
    mu_y = np.einsum("ijkl,kl->ij", wy, win)
    dx = wx - mu_x[..., None, None]
    dy = wy - mu_y[..., None, None]
    var_x = np.einsum("ijkl,kl->ij", dx * dx, win)
    var_y = np.einsum("ijkl,kl->ij", dy * dy, win)
    cov = np.einsum("ijkl,kl->ij", dx * dy, win)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    cs = (2 * cov + c2) / (var_x + var_y + c2)
    lum = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return float((lum * cs).mean()), float(cs.mean())


def _np_pool(x: np.ndarray) -> np.ndarray:
    """2x2 mean; an odd side gets one zero row/column on each end, zeros counted."""
    ph, pw = x.shape[0] % 2, x.shape[1] % 2
    x = np.pad(x, ((ph, ph), (pw, pw)))
    h, w = x.shape[0] // 2, x.shape[1] // 2
    return x[: 2 * h, : 2 * w].reshape(h, 2, w, 2).mean(axis=(1, 3))


def _np_ms_ssim(x: np.ndarray, y: np.ndarray, weights: list[float], data_range: float = 2.0) -> np.ndarray:
    """[N] MS-SSIM of [N, C, H, W] arrays: per channel prod relu(cs)^w ... relu(ssim)^w_last."""
    out = np.zeros(x.shape[0])
    for n in range(x.shape[0]):
        per_channel = []
        for c in range(x.shape[1]):
            a, b, val = x[n, c], y[n, c], 1.0
            for i, w in enumerate(weights):
                s, cs = _np_ssim_cs(a, b, data_range)
                val *= max(s if i == len(weights) - 1 else cs, 0.0) ** w
                a, b = _np_pool(a), _np_pool(b)
            per_channel.append(val)
        out[n] = np.mean(per_channel)
    return out


# --- tests -----------------------------------------------------------------------------------

def test_identical_images_score_one():
    x, _ = _images(2, 3, 48, 40, 0.0)
    torch.testing.assert_close(ssim(x, x), torch.ones(2), rtol=0, atol=1e-6)
    torch.testing.assert_close(ms_ssim(x, x), torch.ones(2), rtol=0, atol=1e-6)
    x, _ = _images(1, 3, 192, 192, 0.0)
    torch.testing.assert_close(ms_ssim(x, x), torch.ones(1), rtol=0, atol=1e-6)


def test_symmetric():
    x, y = _images(3, 3, 64, 64, 0.3)
    torch.testing.assert_close(ssim(x, y), ssim(y, x), rtol=0, atol=1e-7)
    torch.testing.assert_close(ms_ssim(x, y), ms_ssim(y, x), rtol=0, atol=1e-7)


@pytest.mark.parametrize("size", [32, 64, 192])
def test_decreases_monotonically_with_noise(size: int):
    x, _ = _images(2, 3, size, size, 0.0)
    noise = torch.randn_like(x)
    levels = [0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8]
    s = torch.stack([ssim(x, x + lv * noise) for lv in levels])  # [levels, N]
    m = torch.stack([ms_ssim(x, x + lv * noise) for lv in levels])
    assert (s[1:] < s[:-1]).all(), s
    assert (m[1:] < m[:-1]).all(), m
    assert s[-1].max() < 0.5 and m[-1].max() < 0.5


def test_ssim_matches_numpy_definition():
    x, y = _images(2, 3, 23, 19, 0.25, dtype=torch.float64)
    xn, yn = x.numpy(), y.numpy()
    want = np.array([np.mean([_np_ssim_cs(xn[n, c], yn[n, c], 2.0)[0] for c in range(3)]) for n in range(2)])
    got = ssim(x, y).numpy()
    # The window is built in float32 as in the reference package, hence 1e-6 rather than 1e-12.
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert 0.1 < want.min() < want.max() < 0.95  # a non-trivial comparison


@pytest.mark.parametrize("hw", [(192, 192), (192, 197)])  # 197: odd-side padding at every scale
def test_ms_ssim_matches_numpy_scale_loop(hw: tuple[int, int]):
    x, y = _images(2, 1, *hw, 0.3, dtype=torch.float64)
    want = _np_ms_ssim(x.numpy(), y.numpy(), list(MS_SSIM_WEIGHTS))
    got = ms_ssim(x, y).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert 0.1 < want.min() < want.max() < 0.95
    # Five scales really ran: a three-scale value differs.
    assert np.abs(ms_ssim(x, y, weights=MS_SSIM_WEIGHTS[:3]).numpy() - want).max() > 1e-3


def test_negative_structure_is_clipped_in_ms_ssim_only():
    # Texture around a flat 0.5 and its mirror about 0.5: same local means, covariance < 0.
    x = 0.5 + 0.3 * (torch.rand(2, 3, 64, 64) - 0.5)
    y = 1.0 - x
    assert (ssim(x, y) < -0.5).all()  # single-scale SSIM keeps its sign
    torch.testing.assert_close(ms_ssim(x, y), torch.zeros(2), rtol=0, atol=0)  # relu(cs) = 0


def test_float32_close_to_float64():
    x, y = _images(2, 3, 192, 192, 0.3, dtype=torch.float64)
    torch.testing.assert_close(ms_ssim(x.float(), y.float()).double(), ms_ssim(x, y), rtol=0, atol=1e-4)


@pytest.mark.parametrize("side, scales", [(11, 1), (20, 1), (21, 2), (32, 2), (41, 3), (64, 3), (81, 4),
                                          (160, 4), (161, 5), (192, 5)])
def test_fitting_scales(side: int, scales: int):
    assert fitting_scales(side) == scales


@pytest.mark.parametrize("hw, scales", [((32, 32), 2), ((64, 64), 3), ((64, 33), 2), ((100, 120), 4)])
def test_small_images_use_fewer_renormalised_scales(hw: tuple[int, int], scales: int):
    x, y = _images(2, 3, *hw, 0.3, dtype=torch.float64)
    w = [v / sum(MS_SSIM_WEIGHTS[:scales]) for v in MS_SSIM_WEIGHTS[:scales]]
    got = ms_ssim(x, y)
    torch.testing.assert_close(got, ms_ssim(x, y, weights=w), rtol=0, atol=0)
    np.testing.assert_allclose(got.numpy(), _np_ms_ssim(x.numpy(), y.numpy(), w), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="scales need a side"):
        ms_ssim(x, y, auto_scales=False)


def test_too_small_for_one_window_raises():
    x, y = _images(1, 3, 10, 64, 0.1)
    with pytest.raises(ValueError, match="smaller than the 11-tap window"):
        ssim(x, y)
    with pytest.raises(ValueError, match="smaller than the 11-tap window"):
        ms_ssim(x, y)


def test_rejects_mismatched_inputs():
    x, y = _images(1, 3, 32, 32, 0.1)
    with pytest.raises(ValueError):
        ssim(x, y[..., :31])
    with pytest.raises(ValueError):
        ms_ssim(x, y.double())
    with pytest.raises(ValueError):
        ssim(x[0], y[0])
