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
