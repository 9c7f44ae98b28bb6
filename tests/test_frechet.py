"""Statistics, the Fréchet distance (against SciPy's sqrtm) and KID."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from eval.frechet import (FeatureStats, feature_stats, frechet_distance, kid, kid_spread_undefined, load_npz,
                          trace_sqrt_product)


def scipy_fid(a: FeatureStats, b: FeatureStats) -> float:
    """pytorch-fid's formula: sqrtm of the product, real part of its trace."""
    covmean = linalg.sqrtm(a.sigma @ b.sigma)
    diff = a.mu - b.mu
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * np.trace(covmean).real)


def test_well_conditioned_matches_sqrtm():
    rng = np.random.default_rng(0)
    a = feature_stats(rng.standard_normal((400, 64)) @ rng.standard_normal((64, 64)))
    b = feature_stats(rng.standard_normal((500, 64)) * 1.3 + 0.2)
    ours, ref = frechet_distance(a, b), scipy_fid(a, b)
    assert ref > 1.0
    assert ours == pytest.approx(ref, rel=1e-10)


def test_rank_deficient_matches_sqrtm():
    # Fewer samples than dimensions: both covariances are singular (rank 19 and 24 of 48).
    rng = np.random.default_rng(1)
    a = feature_stats(rng.standard_normal((20, 48)))
    b = feature_stats(rng.standard_normal((25, 48)) + 0.5)
    assert np.linalg.matrix_rank(a.sigma) < 48 and np.linalg.matrix_rank(b.sigma) < 48
    ours, ref = frechet_distance(a, b), scipy_fid(a, b)
    assert ours == pytest.approx(ref, rel=1e-6)


def test_exact_low_rank_factor_matches_the_eigen_decomposition_and_sqrtm(tmp_path):
    # Statistics from features carry X_c^T / sqrt(N - ddof); statistics without it (a
    # pytorch-fid file) take the eigen-decomposition path: both agree with sqrtm.
    rng = np.random.default_rng(5)
    a = feature_stats(rng.standard_normal((12, 96)) @ rng.standard_normal((96, 96)) * 0.1)
    b = feature_stats(rng.standard_normal((9, 96)) + 0.3, ddof=0)
    assert a.factor.shape == (96, 12) and b.factor.shape == (96, 9)
    np.testing.assert_allclose(a.factor @ a.factor.T, a.sigma, atol=1e-12 * np.abs(a.sigma).max())
    bare = [FeatureStats(s.mu, s.sigma, s.n, s.ddof) for s in (a, b)]
    exact, eig, ref = frechet_distance(a, b), frechet_distance(*bare), scipy_fid(a, b)
    assert exact == pytest.approx(eig, rel=1e-9) and exact == pytest.approx(ref, rel=1e-6)
    # Full-rank statistics keep no factor (Cholesky is cheap there).
    assert feature_stats(rng.standard_normal((200, 8))).factor is None
    # The factor survives a file; one that does not factor the file's sigma is refused.
    again, _ = load_npz(a.save_npz(tmp_path / "a.npz"))
    assert np.array_equal(again.factor, a.factor) and frechet_distance(again, b) == exact
    np.savez(tmp_path / "bad.npz", mu=a.mu, sigma=a.sigma, factor=a.factor * 1.01)
    with pytest.raises(ValueError, match="not a factor"):
        load_npz(tmp_path / "bad.npz")


def test_trace_term_of_known_matrices():
    # Commuting diagonal covariances: tr sqrt(S1 S2) = sum sqrt(d1 * d2).
    d1, d2 = np.array([1.0, 4.0, 9.0, 0.0]), np.array([4.0, 1.0, 1.0, 7.0])
    assert trace_sqrt_product(np.diag(d1), np.diag(d2)) == pytest.approx(2 + 2 + 3 + 0)
    # Identical distributions are at distance 0.
    s = feature_stats(np.random.default_rng(2).standard_normal((300, 16)))
    assert abs(frechet_distance(s, s)) < 1e-9


def test_gaussians_with_known_distance():
    # N(0, I) vs N(m, 4I) in d dims: |m|^2 + d (1 + 4 - 2 * 2) = |m|^2 + d.
    rng = np.random.default_rng(3)
    d, m = 8, np.full(8, 0.5)
    a = feature_stats(rng.standard_normal((200_000, d)), ddof=0)
    b = feature_stats(rng.standard_normal((200_000, d)) * 2 + m, ddof=0)
    assert frechet_distance(a, b) == pytest.approx(m @ m + d, rel=0.02)


def test_ddof_normalisation():
    x = np.random.default_rng(4).standard_normal((10, 3))
    np.testing.assert_allclose(feature_stats(x, ddof=1).sigma, np.cov(x, rowvar=False), rtol=1e-12)
    np.testing.assert_allclose(feature_stats(x, ddof=0).sigma, np.cov(x, rowvar=False, bias=True), rtol=1e-12)
    with pytest.raises(ValueError, match="ddof"):
        feature_stats(x, ddof=2)


def test_npz_round_trip_and_foreign_files(tmp_path):
    s = feature_stats(np.random.default_rng(5).standard_normal((30, 4)))
    back, meta = load_npz(s.save_npz(tmp_path / "ref.npz", preprocess="tf"))
    assert np.array_equal(back.mu, s.mu) and np.array_equal(back.sigma, s.sigma)
    assert (back.n, back.ddof, meta["preprocess"]) == (30, 1, "tf")
    np.savez(tmp_path / "pytorch_fid.npz", mu=s.mu.astype(np.float32), sigma=s.sigma)  # other tools' layout
    other, _ = load_npz(tmp_path / "pytorch_fid.npz")
    assert other.mu.dtype == np.float64 and other.mu.shape == (4,)
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="mu"):
        load_npz(tmp_path / "bad.npz")
    np.savez(tmp_path / "wrong.npz", mu=np.zeros(3), sigma=np.zeros((4, 4)))
    with pytest.raises(ValueError, match="do not fit"):
        load_npz(tmp_path / "wrong.npz")


def test_kid_on_known_distributions():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((600, 16))
    same = rng.standard_normal((600, 16))
    shifted = rng.standard_normal((600, 16)) + 1.0
    k_same, std_same = kid(x, same, subsets=20, subset_size=200, seed=0)
    k_shift, _ = kid(x, shifted, subsets=20, subset_size=200, seed=0)
    # Unbiased: near 0 for equal distributions (within a few subset standard deviations).
    assert abs(k_same) < 3 * std_same + 1e-3
    assert k_shift > 0.1 and k_shift > 50 * abs(k_same)
    assert kid(x, shifted, 20, 200, seed=0) == kid(x, shifted, 20, 200, seed=0)
    assert kid(x, shifted, 20, 200, seed=1) != kid(x, shifted, 20, 200, seed=0)


def test_kid_matches_a_direct_mmd():
    # One subset covering everything: the unbiased MMD^2 written out with loops over pairs.
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((12, 5)), rng.standard_normal((12, 5)) + 0.3
    k = lambda a, b: (a @ b / 5 + 1) ** 3  # noqa: E731
    m = 12
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    mean, std = kid(x, y, subsets=3, subset_size=12, seed=0)
    assert mean == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
    assert std is None  # every subset is the whole set


def test_kid_std_is_none_when_every_subset_holds_every_image():
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((10, 5)), rng.standard_normal((10, 5)) + 0.3
    mean, std = kid(x, y, subsets=50, subset_size=1000, seed=0)
    assert std is None  # was the round-off of 50 equal values, about 1e-16
    assert kid(x, y, subsets=50, subset_size=1000, seed=1) == (mean, None)  # one set: no seed to depend on
    why = kid_spread_undefined(10, 10, 50, 1000)
    assert "all 10 real and 10 generated" in why and "subset size 1000" in why
    # Two more real rows: subsets of 10 then cover the generated side only, the real rows
    # drawn differ, and the spread is real.
    x12 = np.concatenate([x, rng.standard_normal((2, 5))])
    assert kid(x12, y, subsets=50, subset_size=1000, seed=0)[1] > 1e-6
    assert kid_spread_undefined(12, 10, 50, 1000) is None
    # One subset has no spread either.
    assert kid(x12, y, subsets=1, subset_size=10, seed=0)[1] is None
    assert "single" in kid_spread_undefined(12, 10, 1, 10)
    with pytest.raises(ValueError, match="at least one subset"):
        kid(x, y, subsets=0, subset_size=10)
