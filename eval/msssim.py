"""SSIM and MS-SSIM for image batches.

Standard definitions (Wang et al. 2003/2004) with the defaults of the
``pytorch-msssim`` package: an 11-tap Gaussian window (sigma 1.5) applied
separably with *valid* convolution, K = (0.01, 0.03), per-channel means of the
SSIM/contrast-structure maps averaged over channels, and for MS-SSIM 2x2
average pooling between scales (padded by one on odd sides, zeros counted),
relu on cs/ssim before the power, and
``prod_{i<L} relu(cs_i)^w_i * relu(ssim_L)^w_L``.

Images are [N, C, H, W] in [-1, 1] by default (``data_range=2``).

Small images: the five standard scales need ``min(H, W) > (win - 1) * 2**4``
(160 px for the default window). When a side is too small for ``len(weights)``
scales, ``ms_ssim`` uses the largest ``k`` with ``min(H, W) > (win - 1) *
2**(k - 1)`` and the first ``k`` weights renormalised to sum to 1 (a
weighted geometric mean, like the full set). Such values are comparable only
with values computed at the same resolution. A ``ValueError`` is raised when
not even one scale fits (``min(H, W) < win``), or when ``auto_scales=False``
and the requested scales do not fit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1-D Gaussian taps [size], centred on ``size // 2``."""
    coords = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _blur(x: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
    """Separable depthwise valid convolution (rows then columns)."""
    c = x.shape[1]
    w = win.to(x.device, x.dtype)
    x = F.conv2d(x, w.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, w.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _ssim_cs(x: torch.Tensor, y: torch.Tensor, data_range: float, win: torch.Tensor,
             k: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (ssim, cs) means, each [N, C]."""
    c1 = (k[0] * data_range) ** 2
    c2 = (k[1] * data_range) ** 2
    mu_x, mu_y = _blur(x, win), _blur(y, win)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    # Moments as E[x^2] - E[x]^2 over the window, as the reference does.
    var_x = _blur(x * x, win) - mu_xx
    var_y = _blur(y * y, win) - mu_yy
    cov = _blur(x * y, win) - mu_xy
    cs_map = (2 * cov + c2) / (var_x + var_y + c2)
    ssim_map = (2 * mu_xy + c1) / (mu_xx + mu_yy + c1) * cs_map
    return ssim_map.flatten(2).mean(-1), cs_map.flatten(2).mean(-1)


def _check_inputs(x: torch.Tensor, y: torch.Tensor, win_size: int) -> None:
    if x.ndim != 4:
        raise ValueError(f"expected [N, C, H, W] images, got shape {tuple(x.shape)}")
    if x.shape != y.shape or x.dtype != y.dtype:
        raise ValueError(f"images differ: {tuple(x.shape)} {x.dtype} vs {tuple(y.shape)} {y.dtype}")
    if win_size % 2 != 1:
        raise ValueError(f"window size must be odd, got {win_size}")
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"image side {min(x.shape[-2:])} is smaller than the {win_size}-tap window")


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, win_size: int = 11,
         win_sigma: float = 1.5, k: tuple[float, float] = (0.01, 0.03)) -> torch.Tensor:
    """Single-scale SSIM per image [N] (mean over pixels of the valid region and channels)."""
    _check_inputs(x, y, win_size)
    s, _ = _ssim_cs(x, y, data_range, gaussian_window(win_size, win_sigma), k)
    return s.mean(1)


def fitting_scales(side: int, win_size: int = 11) -> int:
    """Largest number of scales whose coarsest level still fits the window
    (``side > (win_size - 1) * 2**(scales - 1)``, the reference's criterion)."""
    scales = 0
    while side > (win_size - 1) * 2**scales:
        scales += 1
    return scales


def ms_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0,
            weights: Sequence[float] | None = None, win_size: int = 11, win_sigma: float = 1.5,
            k: tuple[float, float] = (0.01, 0.03), auto_scales: bool = True) -> torch.Tensor:
    """MS-SSIM per image [N]; one scale per weight, reduced for small images (module doc)."""
    _check_inputs(x, y, win_size)
    w = list(MS_SSIM_WEIGHTS if weights is None else weights)
    fit = fitting_scales(min(x.shape[-2:]), win_size)
    if fit < len(w):
        if not auto_scales:
            raise ValueError(f"{len(w)} scales need a side > {(win_size - 1) * 2 ** (len(w) - 1)}, "
                             f"got {min(x.shape[-2:])}")
        # Exponents summing to 1 keep the score a weighted geometric mean, as
        # the five standard weights (nearly) are.
        w = [v / sum(w[:fit]) for v in w[:fit]]
    win = gaussian_window(win_size, win_sigma)
    factors = []
    for i in range(len(w)):
        s, cs = _ssim_cs(x, y, data_range, win, k)
        if i == len(w) - 1:
            factors.append(torch.relu(s))
            break
        factors.append(torch.relu(cs))
        # Odd sides are padded (zeros counted in the mean) so no row is dropped.
        pad = (x.shape[2] % 2, x.shape[3] % 2)
        x, y = F.avg_pool2d(x, 2, padding=pad), F.avg_pool2d(y, 2, padding=pad)
    exps = torch.tensor(w, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return torch.prod(torch.stack(factors) ** exps, dim=0).mean(1)
