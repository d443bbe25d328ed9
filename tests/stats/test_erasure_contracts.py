"""``dsb.stats.erasure``'s residual measures and refusals, recomputed from their
definitions (the ``erasure_residuals`` docstring; the conditions under which the
concept-erasure shrinkage and QLEACE are undefined)."""

from __future__ import annotations

import numpy as np
import pytest

from dsb.stats import erasure
from dsb.stats.moments import ClassStats


def _residuals_by_definition(x, y):
    ks, counts = np.unique(y, return_counts=True)
    pri = counts / len(y)
    means = np.stack([x[y == k].mean(0) for k in ks])
    covs = [np.cov(x[y == k].T, bias=True) for k in ks]
    pool = sum(p * c for p, c in zip(pri, covs))
    m = pri @ means
    spread = np.sqrt(sum(p * np.sum((mk - m) ** 2) for p, mk in zip(pri, means)))
    scale = np.sqrt(np.trace(np.cov(x.T, bias=True)))
    fro = [np.linalg.norm(c - pool) / np.linalg.norm(pool) for c in covs]
    return spread / scale, max(fro)


def test_erasure_residuals_follow_their_definition():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    x = (
        2.0
        + y[:, None] * np.array([1.0, -0.5, 0.2])
        + rng.standard_normal((600, 3)) * (1 + y)[:, None]
    )
    spread, cov_diff = _residuals_by_definition(x, y)
    got = erasure.erasure_residuals(x, y, support_DxM=np.eye(3)[:, :2])
    assert got["class_mean_spread"] == pytest.approx(spread, rel=1e-10)
    assert got["class_cov_max_rel_diff"] == pytest.approx(cov_diff, rel=1e-10)
    spread_v, cov_diff_v = _residuals_by_definition(x[:, :2], y)
    assert got["class_mean_spread_support"] == pytest.approx(spread_v, rel=1e-10)
    assert got["class_cov_max_rel_diff_support"] == pytest.approx(cov_diff_v, rel=1e-10)


def _stats(mean_KxD, cov_KxDxD, counts_K):
    counts = np.asarray(counts_K, np.float64)
    return ClassStats(
        counts_K=counts,
        priors_K=counts / counts.sum(),
        mean_KxD=np.asarray(mean_KxD, np.float64),
        cov_KxDxD=np.asarray(cov_KxDxD, np.float64),
    )


def test_concept_erasure_shrinkage_is_undefined_without_within_class_variance():
    # Classes that are points: the within-class trace is 0 and the shrinkage (whose
    # denominator it is) undefined; alpha itself is in (0, 1] here.
    st = _stats([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]], np.zeros((3, 2, 2)), [100, 100, 100])
    with pytest.raises(ValueError, match="shrinkage undefined"):
        erasure.concept_erasure_shrinkage(st)


def test_qleace_refuses_covariances_without_a_common_support():
    # Class 0 lives on e1, class 1 on e2: the union of their null spaces is everything.
    st = _stats([[0.0, 0.0], [1.0, 1.0]], [np.diag([1.0, 0.0]), np.diag([0.0, 1.0])], [50, 50])
    with pytest.raises(ValueError, match="share no common support"):
        erasure.fit_qleace(st)


def _sqrtm(s):
    lam, u = np.linalg.eigh(s)
    return (u * np.sqrt(np.clip(lam, 0.0, None))) @ u.T


def _ot_map(c, s):
    """The Monge map ``A`` from ``N(0, c)`` to ``N(0, s)``: ``A c A = s``, A symmetric."""
    r = _sqrtm(c)
    ri = np.linalg.inv(r)
    return ri @ _sqrtm(r @ s @ r) @ ri


def test_qleace_regress_fill_is_the_pooled_regression_on_the_erased_coordinates():
    # Class 0 is flat along e3, class 1 is not: V = span(e1, e2), V-perp = e3. On V the
    # maps are the Gaussian OT maps to the barycenter; on e3 the fill is L z with
    # L = P_c Cov(x, z) Cov(z)^-1, Cov(x, z) = sum_k w_k S_k B A_k and Cov(z) = the
    # barycenter (module docstring); the info fractions are traces of the total covariance.
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((3, 3)), rng.standard_normal((2, 2))
    s1 = a @ a.T + 0.5 * np.eye(3)
    s0 = np.zeros((3, 3))
    s0[:2, :2] = b @ b.T + 0.5 * np.eye(2)
    means = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    st = _stats(means, [s0, s1], [300, 100])
    er = erasure.fit_qleace(st)
    basis = er.support_DxM
    assert basis.shape == (3, 2) and abs(basis[2]).max() < 1e-12
    bar_v = basis.T @ er.barycenter_DxD @ basis
    w = np.array([0.75, 0.25])
    covs_v = [basis.T @ s @ basis for s in (s0, s1)]
    root = _sqrtm(bar_v)  # bar_v is the barycenter: the fixed point of its map
    fixed = sum(wk * _sqrtm(root @ c @ root) for wk, c in zip(w, covs_v))
    np.testing.assert_allclose(
        np.linalg.inv(root) @ fixed @ fixed @ np.linalg.inv(root), bar_v, atol=1e-9
    )
    maps_v = [_ot_map(c, bar_v) for c in covs_v]
    pc = np.eye(3) - basis @ basis.T
    cross = sum(wk * s @ basis @ m for wk, s, m in zip(w, (s0, s1), maps_v))
    lift = basis + pc @ cross @ np.linalg.inv(bar_v)
    for k in range(2):
        np.testing.assert_allclose(er.maps_KxDxD[k], lift @ maps_v[k] @ basis.T, atol=1e-8)
    np.testing.assert_allclose(er.barycenter_DxD, lift @ bar_v @ lift.T, atol=1e-8)
    mu = w @ means
    tot = sum(wk * (s + np.outer(m - mu, m - mu)) for wk, s, m in zip(w, (s0, s1), means))
    in_c = np.trace(pc @ tot)
    info = er.info
    assert info["complement_variance_fraction"] == pytest.approx(in_c / np.trace(tot), rel=1e-9)
    kept = np.trace(pc @ er.barycenter_DxD)
    removed = (in_c - kept) / np.trace(tot)
    assert info["complement_variance_removed_fraction"] == pytest.approx(removed, rel=1e-9)
    assert info["dim_support"] == 2 and info["dim_complement"] == 1


def test_two_class_barycenter_is_closed_form_with_no_iterations():
    # K = 2: McCann's interpolant, no fixed-point step taken (info["iterations"] = 0).
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((2, 3, 3))
    covs = np.stack([a @ a.T + np.eye(3), b @ b.T + np.eye(3)])
    _, info = erasure.wasserstein_barycenter_cov(covs, np.array([0.3, 0.7]))
    assert info["closed_form"] and info["iterations"] == 0 and info["converged"]


def test_barycenter_iteration_cap_is_the_same_default_everywhere():
    import inspect

    cap = inspect.signature(erasure.wasserstein_barycenter_cov).parameters["max_iters"].default
    assert cap == inspect.signature(erasure.fit_qleace).parameters["max_iters"].default
