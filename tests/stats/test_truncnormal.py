"""Truncated-normal max-ent set: the Gibbs sampler against independent references.

Every tolerance is a multiple of the Monte Carlo standard error of the compared estimate
(4 se: a false failure has probability ~1e-4 per compared number).
"""

import numpy as np
import pytest
from scipy import stats as sps

from dsb.stats import truncnormal as tn
from dsb.stats.evalsets import build_maxent_set
from dsb.stats.moments import ClassStats
from dsb.stats.probesets import MAXENT_SETS

pytestmark = pytest.mark.usefixtures("one_blas_thread")


def _stats(mean_KxD, cov_KxDxD):
    k = len(mean_KxD)
    return ClassStats(
        np.full(k, 500), np.full(k, 1 / k), np.asarray(mean_KxD), np.asarray(cov_KxDxD)
    )


def test_one_dimensional_draws_are_scipy_quantiles():
    # The inverse CDF at fixed u equals scipy's truncnorm.ppf, in the body and the tails
    # (an interval 40 sd beyond the mean uses the exponential tail law: 0.2% relative there).
    u = np.array([0.01, 0.3, 0.5, 0.9, 0.999])
    for m, s, rtol in [(0.3, 0.2, 1e-9), (-0.4, 0.1, 1e-7), (1.6, 0.2, 1e-7), (-2.0, 0.05, 3e-3)]:
        a, b = (0 - m) / s, (1 - m) / s
        ref = sps.truncnorm.ppf(u, a, b, loc=m, scale=s)
        got = tn.truncated_normal_1d(np.full(5, m), np.full(5, s), u)
        if a > 0:  # mirrored to the lower tail: u maps to 1 - u
            ref = sps.truncnorm.ppf(1 - u, a, b, loc=m, scale=s)
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=1e-12, err_msg=f"m={m}, s={s}")
    # s = 0: the clipped mean.
    np.testing.assert_array_equal(
        tn.truncated_normal_1d([0.3, 1.5], [0.0, 0.0], [0.5, 0.5]), [0.3, 1.0]
    )


def _check_moments(x, mean, cov, what):
    """Sample mean / covariance of ``x [n, d]`` against exact values, within 4 se."""
    n = len(x)
    xc = x - x.mean(0)
    se_mean = x.std(0) / np.sqrt(n)
    assert np.all(np.abs(x.mean(0) - mean) < 4 * se_mean), (what, x.mean(0), mean, se_mean)
    prod = xc[:, :, None] * xc[:, None, :]
    se_cov = prod.std(0) / np.sqrt(n)
    assert np.all(np.abs(prod.mean(0) - cov) < 4 * se_cov + 1e-12), (what, prod.mean(0), cov)


def test_diagonal_covariance_matches_scipy_truncnorm_per_coordinate():
    # Independent coordinates: each marginal is scipy's 1-D truncated normal, exactly known.
    mean = np.array([[0.1, 0.5, 0.9], [-0.2, 0.3, 1.3]])
    sd = np.array([[0.3, 0.4, 0.2], [0.25, 0.1, 0.5]])
    st = _stats(mean, np.stack([np.diag(s**2) for s in sd]))
    s = tn.sample_truncnorm(st, 16_000, seed=0, sweeps=20, ridge=0.0)
    assert np.all((s.x_NxD >= 0) & (s.x_NxD <= 1))
    for k in range(2):
        a, b = (0 - mean[k]) / sd[k], (1 - mean[k]) / sd[k]
        m_ref, v_ref = sps.truncnorm.stats(a, b, loc=mean[k], scale=sd[k], moments="mv")
        xk = s.x_NxD[s.y_N == k].astype(np.float64)
        _check_moments(xk, m_ref, np.diag(v_ref), f"class {k}")
        # Off-diagonal covariance is 0 within noise: checked by _check_moments above.


def _rejection(mean, cov, n, seed):
    rng = np.random.default_rng(seed)
    z = rng.multivariate_normal(mean, cov, size=n)
    return z[np.all((z >= 0) & (z <= 1), axis=1)]


def test_correlated_two_dimensional_matches_rejection_sampling():
    # Two strongly correlated classes (rho = 0.8 and -0.9) whose Gaussians reach well
    # outside the box: the Gibbs samples against brute-force rejection from N(mu, Sigma).
    mean = np.array([[0.15, 0.8], [0.5, 0.45]])
    cov = np.array([[[0.09, 0.072], [0.072, 0.09]], [[0.06, -0.054], [-0.054, 0.06]]])
    st = _stats(mean, cov)
    s = tn.sample_truncnorm(st, 20_000, seed=1, sweeps=30, ridge=0.0)
    assert np.all((s.x_NxD >= 0) & (s.x_NxD <= 1))
    for k in range(2):
        ref = _rejection(mean[k], cov[k], 1_000_000, seed=k)
        xk = s.x_NxD[s.y_N == k].astype(np.float64)
        # The reference's own error is ~1/sqrt(#accepted / n) of the sample's: negligible.
        rc = ref - ref.mean(0)
        _check_moments(xk, ref.mean(0), rc.T @ rc / len(ref), f"class {k}")
    conv = [c for name, c in s.report.checks.items() if name.startswith("converged_")]
    assert len(conv) == 6 and all(c["met"] for c in conv), s.report.checks
    # Truncation moves the moments: the set does not claim the class's.
    assert not s.report.checks["mean"]["met"] and not s.report.checks["cov"]["met"]
    assert not s.report.met and "truncat" in s.report.checks["cov"]["why"]


def test_too_few_sweeps_fail_the_convergence_check():
    # rho = 0.99: Gibbs moves ~sqrt(1 - rho^2) per sweep along the long axis, so chains
    # started at the mean have not spread after one sweep; the halves check says so.
    cov = np.array([[[0.04, 0.0396], [0.0396, 0.04]]])
    st = _stats([[0.5, 0.5]], cov)
    one = tn.sample_truncnorm(st, 4000, seed=0, sweeps=1, ridge=0.0).report
    for name in ("converged_halves_cov", "converged_halves_top_variance"):
        assert not one.checks[name]["met"], one.checks
    # Ten sweeps: still short of the ~1 / (1 - rho^2) = 50 sweeps the long axis needs.
    ten = tn.sample_truncnorm(st, 4000, seed=0, sweeps=10, ridge=0.0).report
    assert not ten.checks["converged_halves_top_variance"]["met"], ten.checks
    many = tn.sample_truncnorm(st, 4000, seed=0, sweeps=300, ridge=0.0).report
    conv = [c for name, c in many.checks.items() if name.startswith("converged_")]
    assert len(conv) == 6 and all(c["met"] for c in conv), many.checks
    assert many.extra["sweeps"] == 300 and many.extra["burn_in_sweeps"] == 300


def test_rank_deficient_covariance_fixes_the_constant_pixels():
    # Pixel 0 is constant (variance 0, like MNIST's border), pixels 1 and 2 are collinear.
    rng = np.random.default_rng(0)
    z = rng.uniform(0.2, 0.8, 1000)
    x = np.stack([np.zeros(1000), z, 1 - z, rng.uniform(0, 1, 1000)], 1)
    cov = np.cov(x.T, bias=True)[None]
    st = _stats(x.mean(0)[None], cov)
    s = tn.sample_truncnorm(st, 2000, seed=0, sweeps=30)
    assert np.all(np.isfinite(s.x_NxD)) and np.all((s.x_NxD >= 0) & (s.x_NxD <= 1))
    assert np.all(s.x_NxD[:, 0] == 0.0)
    assert s.report.extra["support_K"] == [3] and s.report.extra["ridge"] == tn.RIDGE
    # The ridge leaves the collinear pair nearly collinear.
    assert np.corrcoef(s.x_NxD[:, 1], s.x_NxD[:, 2])[0, 1] < -0.95


def test_labels_follow_the_generating_class_and_cache_round_trips(tmp_path):
    # Classes far apart in the box: every sample lies near its own class's mean.
    mean = np.array([[0.1, 0.1], [0.9, 0.9], [0.1, 0.9]])
    cov = np.tile(0.002 * np.eye(2), (3, 1, 1))
    st = _stats(mean, cov)
    built = build_maxent_set(st, "truncnorm", 600, seed=3, cache_dir=tmp_path, sweeps=5)
    dist = np.linalg.norm(built.x_NxD[:, None, :] - mean[None], axis=2)
    np.testing.assert_array_equal(np.argmin(dist, 1), built.y_N)
    again = build_maxent_set(st, "truncnorm", 600, seed=3, cache_dir=tmp_path, sweeps=5)
    fresh = build_maxent_set(st, "truncnorm", 600, seed=3, cache_dir=None, sweeps=5)
    assert again.from_cache and not fresh.from_cache
    for other in (again, fresh):
        np.testing.assert_array_equal(other.x_NxD, built.x_NxD)
        np.testing.assert_array_equal(other.y_N, built.y_N)
    assert again.report == built.report and built.report["config"]["sweeps"] == 5
    # Another sweep count is another set.
    other = build_maxent_set(st, "truncnorm", 600, seed=3, cache_dir=tmp_path, sweeps=6)
    assert not other.from_cache and other.key != built.key


def test_registered_with_its_options():
    spec = MAXENT_SETS.get("truncnorm")
    assert spec.fn is tn.sample_truncnorm and spec.version == 1
    assert spec.options == {"gibbs_sweeps": "sweeps", "truncnorm_ridge": "ridge"}
    with pytest.raises(ValueError, match="sweeps"):
        tn.sample_truncnorm(_stats([[0.5]], [[[0.01]]]), 10, sweeps=0)


def test_drift_check_flags_an_ensemble_that_still_moves():
    # Same law in both halves at the end, but the ensemble at the middle sweep sits lower:
    # only the drift checks fail.
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 0.8, (4000, 3))
    y = np.zeros(4000, np.int64)
    half = np.arange(4000) % 2 == 0
    top = np.eye(3)[None]
    checks, extra = tn._convergence(x, x - 0.05, y, half, 1, top)
    assert all(checks[f"converged_halves_{n}"]["met"] for n in ("mean", "cov", "top_variance"))
    assert not checks["converged_drift_mean"]["met"]
    assert extra["drift_mean_rel_diff"] > 0.05 and extra["top_directions"] == tn.TOP_DIRECTIONS
    checks, _ = tn._convergence(x, x, y, half, 1, top)
    assert all(c["met"] for c in checks.values())
