"""Feature statistics, the Fréchet distance and KID, in float64 numpy.

The Fréchet distance needs tr(sqrt(S1 S2)). pytorch-fid and NVIDIA take it from
``scipy.linalg.sqrtm`` (28 s on 2 CPU cores at 2048-d; SciPy 1.18 dropped its
``disp`` argument). Here: with S1 = A A^T and S2 = B B^T, K = B^T A gives
K^T K = A^T S2 A, which is symmetric positive semi-definite and similar to
S1 S2, so tr(sqrt(S1 S2)) is the sum of the square roots of its eigenvalues.
A and B are Cholesky factors (cheap). A rank-deficient covariance (fewer
samples than dimensions) has none: statistics made from features carry the exact
factor X_c^T / sqrt(N - ddof) (D x N, so K is N1 x N2 and the solve is tiny);
statistics read from a file without it fall back to V L^1/2 from an
eigen-decomposition (2.5 s at 2048-d on 2 cores), keeping only the eigenvalues
above round-off. One symmetric eigenvalue solve, no SciPy.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class FeatureStats:
    """Mean and covariance of a feature set (what FID compares)."""

    mu: np.ndarray
    """[D] float64 mean."""
    sigma: np.ndarray
    """[D, D] float64 covariance."""
    n: int
    """Number of samples."""
    ddof: int = 1
    """Covariance normalisation: 0 -> 1/N (NVIDIA), 1 -> 1/(N-1) (numpy, pytorch-fid, clean-fid)."""
    factor: np.ndarray | None = None
    """[D, R] float64 with factor @ factor.T == sigma, kept when N - ddof < D (sigma is then
    singular and has no Cholesky factor); None otherwise."""

    def save_npz(self, path: str | Path, **meta: str) -> Path:
        """Writes ``mu``/``sigma`` (the layout pytorch-fid and clean-fid read) plus ``n``, ``ddof``
        and string metadata, atomically: a reader never sees half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{np.random.randint(1 << 30)}")
        with open(tmp, "wb") as f:
            extra = {} if self.factor is None else {"factor": self.factor}
            np.savez(f, mu=self.mu, sigma=self.sigma, n=np.int64(self.n), ddof=np.int64(self.ddof),
                     **extra, **{k: np.str_(v) for k, v in meta.items()})
        tmp.replace(path)
        return path


def load_npz(path: str | Path) -> tuple[FeatureStats, dict[str, str]]:
    """Statistics from an ``.npz`` with ``mu`` and ``sigma`` (ours, pytorch-fid's or clean-fid's)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            mu, sigma = np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
            n = int(z["n"]) if "n" in z else 0
            ddof = int(z["ddof"]) if "ddof" in z else 1
            factor = np.asarray(z["factor"], np.float64) if "factor" in z else None
            meta = {k: str(z[k]) for k in z.files if k not in ("mu", "sigma", "n", "ddof", "factor")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a statistics file with 'mu' and 'sigma' ({e})") from None
    if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
        raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit together")
    if factor is not None and not _factor_fits(factor, sigma):
        raise ValueError(f"{path}: its 'factor' {factor.shape} is not a factor of its sigma")
    return FeatureStats(mu, sigma, n, ddof, factor), meta


def _factor_fits(factor: np.ndarray, sigma: np.ndarray) -> bool:
    """factor @ factor.T equals sigma up to float64 round-off (a file's factor is not taken on trust)."""
    if factor.ndim != 2 or factor.shape[0] != sigma.shape[0] or factor.shape[1] > sigma.shape[0]:
        return False
    scale = max(float(np.abs(sigma).max()), 1e-300)
    return bool(np.abs(factor @ factor.T - sigma).max() <= 1e-9 * scale)


def feature_stats(features: np.ndarray, ddof: int = 1) -> FeatureStats:
    """Mean and covariance of ``features`` [N, D], accumulated in float64.

    The rows are summed in their given order, so the same features in the same
    order give bit-identical statistics whatever produced them.
    """
    if ddof not in (0, 1):
        raise ValueError(f"ddof must be 0 (1/N) or 1 (1/(N-1)), got {ddof}")
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] <= ddof:
        raise ValueError(f"need a [N, D] feature array with N > {ddof}, got {x.shape}")
    mu = x.mean(axis=0)
    xc = x - mu
    sigma = xc.T @ xc / (x.shape[0] - ddof)
    factor = xc.T / np.sqrt(x.shape[0] - ddof) if x.shape[0] - ddof < x.shape[1] else None
    return FeatureStats(mu, sigma, x.shape[0], ddof, factor)


def _psd_factor(sigma: np.ndarray) -> np.ndarray:
    """A with A A^T = sigma: Cholesky, else V L^1/2 over the eigenvalues above round-off
    (the numerical rank's threshold; the rest would add only the square roots of noise)."""
    try:
        return np.linalg.cholesky(sigma)
    except np.linalg.LinAlgError:
        vals, vecs = np.linalg.eigh(sigma)
        keep = vals > max(float(vals[-1]), 0.0) * sigma.shape[0] * np.finfo(np.float64).eps
        return vecs[:, keep] * np.sqrt(vals[keep])


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray,
                       factor1: np.ndarray | None = None, factor2: np.ndarray | None = None) -> float:
    """tr(sqrt(sigma1 @ sigma2)) for symmetric PSD matrices, without a matrix square root.

    With sigma1 = A A^T and sigma2 = B B^T, K = B^T A gives K^T K = A^T sigma2 A, similar to
    sigma1 sigma2; ``K.T @ K`` is one symmetric rank-k product (BLAS syrk, half a matmul).
    ``factor1``/``factor2``, when known, are such A and B (see FeatureStats.factor).
    """
    a = _psd_factor(np.asarray(sigma1, np.float64)) if factor1 is None else factor1
    b = _psd_factor(np.asarray(sigma2, np.float64)) if factor2 is None else factor2
    k = b.T @ a
    m = k.T @ k
    # torch's LAPACK call is 1.5x numpy's eigvalsh at 2048-d on the benchmark machine.
    vals = torch.linalg.eigvalsh(torch.from_numpy(m)).numpy()
    return float(np.sqrt(np.clip(vals, 0, None)).sum())


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 sqrt(S_a S_b)), in float64."""
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"feature sizes differ: {a.mu.shape} vs {b.mu.shape}")
    diff = a.mu - b.mu
    cross = trace_sqrt_product(a.sigma, b.sigma, a.factor, b.factor)
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * cross)


def kid_spread_undefined(n_real: int, n_fake: int, subsets: int, subset_size: int) -> str | None:
    """Why KID's standard deviation over subsets means nothing for these counts, or None when it does.

    A subset holding every image of both sides is the same set each time: the subsets' KIDs
    differ only by summation round-off (about 1e-16), which would read as certainty. One subset
    has no spread either. The caller reports the spread as undefined (None, JSON null) instead.
    """
    m = min(subset_size, n_real, n_fake)
    if m >= n_real and m >= n_fake:
        return (f"undefined: every KID subset held all {n_real} real and {n_fake} generated images (subset "
                f"size {subset_size} >= both counts), so all {subsets} subsets are the same set; a subset "
                "size below the image counts gives a spread")
    if subsets < 2:
        return "undefined: a single KID subset has no spread; use two or more subsets"
    return None


def _mmd2_unbiased(a: np.ndarray, b: np.ndarray) -> float:
    m, d = a.shape
    kxx, kyy, kxy = (a @ a.T / d + 1) ** 3, (b @ b.T / d + 1) ** 3, (a @ b.T / d + 1) ** 3
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2 * kxy.mean())


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float | None]:
    """Kernel Inception Distance: unbiased MMD^2 with the kernel (x.y / d + 1)^3, averaged over
    ``subsets`` random subsets of ``subset_size`` from each side (NVIDIA's protocol). Returns
    (mean, std). Subsets shrink to the smaller feature set when it has fewer rows.

    The std is None where ``kid_spread_undefined`` says it has no meaning: every subset then
    holds all rows of both sides, so the MMD of the whole sets is computed once.
    """
    x, y = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"KID needs two [N, D] arrays of the same D, got {x.shape} and {y.shape}")
    if subsets < 1:
        raise ValueError(f"KID needs at least one subset, got {subsets}")
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per side, got {x.shape[0]} and {y.shape[0]}")
    if m == x.shape[0] and m == y.shape[0]:
        return _mmd2_unbiased(x, y), None
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        values[i] = _mmd2_unbiased(x[rng.choice(x.shape[0], m, replace=False)],
                                   y[rng.choice(y.shape[0], m, replace=False)])
    undefined = kid_spread_undefined(x.shape[0], y.shape[0], subsets, subset_size)
    return float(values.mean()), None if undefined else float(values.std())
