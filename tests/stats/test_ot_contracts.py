"""OT edits' reported numbers by value: the mean shift's interpolation step, the CQN KS
check and group count, the shrunk covariance the Gaussian map uses, and the Gaussian
edit's fraction of pixels outside [0, 1] (recomputed from the unclipped output)."""

import numpy as np
import pytest

from dsb.data.digits import digits_arrays
from dsb.stats import ot
from dsb.stats.moments import ClassStats, fit_class_stats


def _stats(means, d):
    k = len(means)
    covs = np.stack([0.01 * np.eye(d)] * k)
    return ClassStats(np.full(k, 10), np.full(k, 1 / k), np.asarray(means, float), covs)


def test_mean_shift_interpolation_is_exact_where_the_mean_is_linear_in_the_shift():
    # x in [0.3, 0.7] and target mean 0.45: for shifts in [-0.3, 0.3] nothing clips, so
    # f(lam) = mean(x) - lam is linear there. Three bisection steps leave a bracket inside
    # that range (width 1.4 / 8), and the interpolation step must land on the root to
    # rounding, far below what the bracket alone gives (~0.05).
    rng = np.random.default_rng(0)
    d, n = 3, 50
    x = rng.uniform(0.3, 0.7, (n, d))
    st = _stats([np.full(d, 0.5), np.full(d, 0.45)], d)
    e = ot.mean_shift_edit(st, x, np.zeros(n, int), np.ones(n, int), max_iters=3)
    assert e.report.extra["iterations"] == 3
    assert e.report.extra["max_abs_mean_gap"] < 1e-12
    np.testing.assert_allclose(e.x_NxD.mean(0), 0.45, atol=1e-7)  # float32 output
    checks = e.report.checks
    assert checks["mean_gap"]["met"] and checks["mean_gap"]["why"] == ""
    # Every target inside [0, 1]: met, and no reason given.
    assert checks["targets_in_box"] == {"achieved": 0.0, "tol": 0.0, "met": True, "why": ""}
    # Stopped before the bracket is narrow (no bisection step; kinks inside it): the gap is
    # missed and says why, while the box check, met, still gives no reason.
    cut = ot.mean_shift_edit(st, x, np.zeros(n, int), np.ones(n, int), max_iters=0)
    assert cut.report.extra["max_abs_mean_gap"] > 1e-6
    assert not cut.report.checks["mean_gap"]["met"]
    assert cut.report.checks["mean_gap"]["why"] == "bisection stopped after 0 steps (max_iters=0)"
    assert cut.report.checks["targets_in_box"]["why"] == ""


def test_cqn_ks_check_is_in_half_steps_of_each_group():
    # One group (s, t) of n = 4 rows onto a 256-level target: the edited values are the
    # mid-rank quantiles, so the KS distance is about 1 / (2 n); the check reports it in
    # units of 1 / (2 n): ks_max * 2 n, and the group count is the number of (s, t) pairs.
    levels = np.arange(256) / 255.0
    x = np.concatenate([levels[::2], levels])[:, None]
    y = np.repeat([0, 1], [128, 256])
    st = fit_class_stats([(x, y)], 2)
    src = np.array([[0.1], [0.2], [0.6], [0.9]])
    e = ot.cqn_edit(st, src, np.zeros(4, int), np.ones(4, int))
    ks_max = e.report.extra["ks_max"]
    assert ks_max == pytest.approx(1 / 8, abs=1 / 256)
    assert e.report.checks["ks_half_steps"]["achieved"] == pytest.approx(ks_max * 2 * 4)
    assert e.report.extra["groups"] == 1
    two = ot.cqn_edit(st, np.vstack([src, src]), np.repeat([0, 1], 4), np.repeat([1, 0], 4))
    assert two.report.extra["groups"] == 2


def test_gaussian_map_uses_the_recorded_shrinkage_exactly():
    x, y = digits_arrays()["test"]
    st = fit_class_stats([(x.reshape(len(x), -1), y)], 10, shrinkage=(0.9, 0.05))
    for k in (0, 7):
        np.testing.assert_allclose(ot._scratch_cov(st, k), st.covariance(k), rtol=1e-14)


def test_gaussian_edit_fraction_outside_the_box_is_of_the_unclipped_output():
    x, y = digits_arrays()["test"]
    x = x.reshape(len(x), -1)[:300]
    y = y[:300]
    st = fit_class_stats([(x, y)], 10, shrinkage=(1.0, 0.01))
    tgt = ot.draw_targets(y, 10)
    raw = ot.gaussian_ot_edit(st, x, y, tgt, clip=False)
    frac = raw.report.extra["frac_outside_box"]
    want = float(np.mean((raw.x_NxD < 0) | (raw.x_NxD > 1)))
    assert 0 < want < 0.5 and frac == pytest.approx(want, abs=1 / raw.x_NxD.size)
    clipped = ot.gaussian_ot_edit(st, x, y, tgt, clip=True)
    assert clipped.report.extra["frac_outside_box"] == frac  # measured before clipping
    assert np.all((clipped.x_NxD >= 0) & (clipped.x_NxD <= 1))


def test_unreachable_pair_reports_its_floor_and_the_factor_it_reaches():
    # Rank-2 source, rank-3 target in R^4: no linear map reaches Sigma_t. The map goes onto
    # the best rank-2 approximation; the floor is the Eckart-Young one (the dropped
    # eigenvalue over ||lambda_t||), and the check's reason gives cov_err / floor.
    rng = np.random.default_rng(3)
    d = 4
    bs, bt = rng.standard_normal((d, 2)), rng.standard_normal((d, 3))
    covs = np.stack([bs @ bs.T, bt @ bt.T])
    st = ClassStats(np.full(2, 10), np.full(2, 0.5), rng.uniform(0.3, 0.7, (2, d)), covs)
    x = st.mean_KxD[0] + rng.standard_normal((6, 2)) @ bs.T
    e = ot.gaussian_ot_edit(st, x, np.zeros(6, int), np.ones(6, int), factor_dtype=np.float64)
    (info,) = e.report.extra["pair_info"]
    lam = np.linalg.eigvalsh(covs[1])[::-1]
    assert (info["rank_s"], info["rank_t"], info["reachable"]) == (2, 3, False)
    assert info["floor"] == pytest.approx(lam[2] / np.linalg.norm(lam), rel=1e-9)
    check = e.report.checks["cov_unreachable"]
    assert not check["met"] and check["achieved"] == info["cov_err"]
    ratio = info["cov_err"] / info["floor"]
    assert 0.99 < ratio < 1.1  # it reaches the floor
    assert f"within a factor {ratio:.3g} " in check["why"]
    assert check["why"].startswith("1 of 1 (s, t) pairs have rank Sigma_t > rank Sigma_s")
    assert f"floor {info['floor']:.3g}, achieved {info['cov_err']:.3g}" in check["why"]
    assert "cov_reachable" not in e.report.checks


def test_cov_err_is_the_pushed_covariance_error_with_cut_and_filled_directions():
    # Sigma_s = the range of e1, e2, e3 (null e4); Sigma_t = B B' with B = [e1, e2, e4 +
    # delta e3], all in a random rotation. P_s Sigma_t P_s has eigenvalues 1, 1, delta^2:
    # delta^2 = 1e-12 falls under the rcond cut, so that source direction is "free": the
    # Monge part drops the e3 variance delta^2 and the e3-e4 covariance delta, and the
    # free direction fills the Schur complement (e4's variance). cov_err, computed from
    # the factors, must be the error of the map actually applied: sqrt(2) delta / ||Sigma_t||.
    delta, d = 1e-6, 4
    q, _ = np.linalg.qr(np.random.default_rng(4).standard_normal((d, d)))
    e = np.eye(d)
    bs = q @ e[:, :3]
    bt = q @ np.stack([e[0], e[1], e[3] + delta * e[2]], 1)
    covs = np.stack([bs @ bs.T, bt @ bt.T])
    st = ClassStats(np.full(2, 10), np.full(2, 0.5), np.full((2, d), 0.5), covs)
    a = ot.gaussian_ot_map(st, 0, 1)
    pushed = a @ covs[0] @ a.T
    norm_t = np.linalg.norm(covs[1])
    actual = np.linalg.norm(pushed - covs[1]) / norm_t
    assert actual == pytest.approx(np.sqrt(2) * delta / norm_t, rel=1e-4)
    x = st.mean_KxD[0] + np.random.default_rng(5).standard_normal((5, 3)) @ bs.T
    edit = ot.gaussian_ot_edit(st, x, np.zeros(5, int), np.ones(5, int), factor_dtype=np.float64)
    (info,) = edit.report.extra["pair_info"]
    assert (info["rank_s"], info["rank_t"], info["lift_rank"], info["filled"]) == (3, 3, 2, 1)
    assert info["cov_err"] == pytest.approx(actual, rel=1e-4)


def test_sym_eig_and_the_map_leave_their_inputs_alone_by_default():
    # overwrite=False by default: LAPACK works on a copy, so the caller's covariance (for
    # gaussian_ot_map: the statistics' own array, without shrinkage) is unchanged.
    rng = np.random.default_rng(6)
    a = rng.standard_normal((5, 5))
    c = np.asfortranarray(a @ a.T)
    keep = c.copy()
    lam, u = ot.sym_eig(c)
    np.testing.assert_array_equal(c, keep)
    np.testing.assert_allclose((u * lam) @ u.T, keep, atol=1e-12)
    covs = np.stack([keep, keep + np.eye(5)])
    st = ClassStats(np.full(2, 10), np.full(2, 0.5), np.zeros((2, 5)), covs.copy())
    ot.gaussian_ot_map(st, 0, 1)
    np.testing.assert_array_equal(st.cov_KxDxD, covs)
