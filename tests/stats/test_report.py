"""Stated targets of edits and samplers: checks, warnings and the figure legend flag."""

import dataclasses
import logging
import math

import pytest

from dsb.stats import plots
from dsb.stats.report import target_check, unmet_checks, warn_unmet


def test_target_check_meets_only_within_tolerance():
    assert target_check(1e-7, 1e-6)["met"]
    assert target_check(1e-6, 1e-6)["met"]  # "at most" the tolerance
    assert not target_check(2e-6, 1e-6)["met"]
    assert not target_check(math.nan, 1e-6)["met"]  # an unresolved error never passes


def test_warn_unmet_logs_each_missed_target(caplog):
    checks = {
        "cov": target_check(0.3, 1e-6, "rank-deficient source"),
        "mean": target_check(0.0, 1e-6),
    }
    with caplog.at_level(logging.WARNING, logger="dsb"):
        assert not warn_unmet("ot set 'gaussian'", checks)
    assert list(unmet_checks(checks)) == ["cov"]
    assert len(caplog.records) == 1
    assert "cov" in caplog.text and "rank-deficient source" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dsb"):
        assert warn_unmet("x", {"mean": checks["mean"]})
    assert not caplog.records


def test_probe_figure_legend_flags_sets_that_missed_their_target(tmp_path):
    recs = [
        {"step": s, "maxent/a/accuracy": 0.5, "maxent/a/loss": 1.0, "maxent/a/target_met": 1.0,
         "maxent/b/accuracy": 0.4, "maxent/b/loss": 1.2, "maxent/b/target_met": 0.0}
        for s in (0, 1, 2)
    ]  # fmt: skip
    fig = plots.plot_probe_curves(recs, tmp_path / "m.png", kind="maxent")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "a" in labels and "b [MISSED TARGET]" in labels


def _gauss_stats(n=20_000, d=6, seed=0):
    import numpy as np

    from dsb.stats.moments import fit_class_stats

    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, d)) * 0.1
    y = rng.integers(0, 2, n)
    x = 0.5 + 0.2 * y[:, None] + rng.standard_normal((n, d)) @ a.T
    return x, y, fit_class_stats([(x, y)], 2, num_projections=128), rng, a


def test_noise_floor_is_the_error_of_an_independent_sample():
    # A fresh i.i.d. sample of the law the stats came from sits at the floor: the Gaussian
    # floor (no data) and the bootstrap floor (with data) agree with what it achieves.
    import numpy as np

    from dsb.stats.report import moment_report

    x, y, st, rng, a = _gauss_stats()
    errs, floors = [], []
    for s in range(8):
        yy = rng.integers(0, 2, 300)
        xx = 0.5 + 0.2 * yy[:, None] + rng.standard_normal((300, 6)) @ a.T
        g = moment_report(xx, yy, st)
        b = moment_report(xx, yy, st, reference_x=x, reference_y=y, floor_seed=s)
        errs.append([g.mean_rel_err, g.cov_rel_err, g.coskew_rel_err])
        moms = ("mean", "cov", "coskew")
        floors.append([[r.noise_floor[f"{m}_rel_err"] for m in moms] for r in (g, b)])
        assert g.noise_floor["source"] == "gaussian" and b.noise_floor["source"] == "bootstrap"
    errs, floors = np.mean(errs, 0), np.mean(floors, 0)
    np.testing.assert_allclose(floors[0], errs, rtol=0.25)  # Gaussian floor
    np.testing.assert_allclose(floors[1], errs, rtol=0.25)  # bootstrap floor


def test_moment_report_checks_inputs():
    import numpy as np
    import pytest

    from dsb.stats.report import moment_report

    x, y, st, _, _ = _gauss_stats(n=500)
    with pytest.raises(ValueError, match="both"):
        moment_report(x, y, st, reference_x=x)
    for bad in (x[:, :3], np.hstack([x, x[:, :1]])):  # fewer or more columns than d
        with pytest.raises(ValueError, match="expected x"):
            moment_report(bad, y, st)
    with pytest.raises(ValueError, match="class 1"):
        moment_report(x, y, st, reference_x=x[y == 0], reference_y=y[y == 0])
    # Default co-skewness projections: the held-out last 64 columns, not all of them.
    rep = moment_report(x, y, st)
    assert rep.extra["coskew_projections"] == "stats_heldout"
    want = moment_report(x, y, st, skew_cols=slice(64, 128)).coskew_rel_err
    assert rep.coskew_rel_err == want
    assert np.isfinite(rep.noise_floor["coskew_rel_err"])


def test_heldout_cols_are_the_last_64_or_all():
    from types import SimpleNamespace

    import numpy as np

    from dsb.stats.report import heldout_cols

    for r, want in ((10, (0, 10)), (64, (0, 64)), (100, (36, 100))):
        s = heldout_cols(SimpleNamespace(proj_DxR=np.zeros((3, r))))
        assert (s.start, s.stop) == want
    assert heldout_cols(SimpleNamespace(proj_DxR=None)) == slice(0, 0)


def _three_class_case():
    """Stats of 3 classes in d = 4 with 80 projections, and a set whose class 1 has one
    row (NaN errors, weight 0) while classes 0 and 2 have 50 and 30 rows."""
    import numpy as np

    from dsb.stats.moments import fit_class_stats

    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 3000)
    x = 1.0 + 0.5 * y[:, None] + rng.gamma(2.0, size=(3000, 4)) @ rng.standard_normal((4, 4))
    st = fit_class_stats([(x, y)], 3, num_projections=80)
    yy = np.array([0] * 50 + [1] + [2] * 30)
    xx = 1.0 + 0.5 * yy[:, None] + rng.gamma(2.0, size=(81, 4)) @ rng.standard_normal((4, 4))
    return st, xx, yy


def test_moment_report_errors_and_gaussian_floor_follow_their_definitions():
    # Recomputed from the MomentReport docstring and the _gaussian_floor formulas:
    # relative L2 / Frobenius errors per class, third moments of the held-out projections
    # (columns 16..79 of 80), averages weighted by the class counts of the classes with at
    # least two rows.
    import numpy as np

    from dsb.stats.report import moment_report

    st, xx, yy = _three_class_case()
    rep = moment_report(xx, yy, st)
    w = st.proj_DxR[:, 16:]
    mean_e, cov_e, skew_e, fm, fc, fs = [], [], [], [], [], []
    for k in (0, 2):
        xk = xx[yy == k]
        n = len(xk)
        mu, s = st.mean_KxD[k], st.cov_KxDxD[k]
        m = xk.mean(0)
        c = (xk - m).T @ (xk - m) / n
        z = (xk - m) @ w
        skew = st.proj_skew_KxR[k, 16:]
        mean_e.append(np.linalg.norm(m - mu) / np.linalg.norm(mu))
        cov_e.append(np.linalg.norm(c - s) / np.linalg.norm(s))
        skew_e.append(np.linalg.norm((z**3).mean(0) - skew) / np.linalg.norm(skew))
        tr, fro = np.trace(s), np.linalg.norm(s)
        s2 = np.array([w[:, r] @ s @ w[:, r] for r in range(w.shape[1])])
        fm.append(np.sqrt(tr / n) / np.linalg.norm(mu))
        fc.append(np.sqrt((fro**2 + tr**2) / n) / fro)
        fs.append(np.sqrt(6 * np.sum(s2**3) / n) / np.linalg.norm(skew))
    assert rep.count_K == (50, 1, 30)
    np.testing.assert_allclose(rep.mean_rel_err_K[::2], mean_e, rtol=1e-10)
    np.testing.assert_allclose(rep.cov_rel_err_K[::2], cov_e, rtol=1e-10)
    np.testing.assert_allclose(rep.coskew_rel_err_K[::2], skew_e, rtol=1e-10)
    assert np.isnan([rep.mean_rel_err_K[1], rep.cov_rel_err_K[1], rep.coskew_rel_err_K[1]]).all()
    wk = np.array([50, 30]) / 80
    got = [rep.mean_rel_err, rep.cov_rel_err, rep.coskew_rel_err]
    np.testing.assert_allclose(got, [wk @ mean_e, wk @ cov_e, wk @ skew_e], rtol=1e-10)
    floor = [rep.noise_floor[f"{m}_rel_err"] for m in ("mean", "cov", "coskew")]
    np.testing.assert_allclose(floor, [wk @ fm, wk @ fc, wk @ fs], rtol=1e-10)
    assert rep.noise_floor["source"] == "gaussian"
    assert rep.extra["coskew_projections"] == "stats_heldout"
    d = rep.to_dict()
    assert d["met"] is True and d["mean_rel_err"] == rep.mean_rel_err
    with pytest.raises(dataclasses.FrozenInstanceError):
        rep.mean_rel_err = 0.0
    # Explicit columns are recorded as such; two rows are enough for a class's errors.
    two = np.array([0] * 50 + [1] * 2 + [2] * 30)
    x1 = xx[50:51].repeat(2, 0) + np.array([[0.1], [-0.1]])
    rep = moment_report(np.concatenate([xx[:50], x1, xx[51:]]), two, st, skew_cols=slice(0, 8))
    assert rep.extra["coskew_projections"] == "stats_cols"
    want = np.linalg.norm(x1.mean(0) - st.mean_KxD[1]) / np.linalg.norm(st.mean_KxD[1])
    assert rep.mean_rel_err_K[1] == pytest.approx(want, rel=1e-10)


def test_an_unmeasured_error_is_nan_never_zero():
    # Stats fitted without projections: co-skewness is not measured, so its average and
    # floor are NaN (they used to read 0.0); with no class of two rows every average is.
    import numpy as np

    from dsb.stats.moments import fit_class_stats
    from dsb.stats.report import floor_checks, moment_report

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)) + np.arange(4)
    y = np.repeat([0, 1], 30)
    st = fit_class_stats([(x, y)], 2, num_bins=0, num_projections=0)
    rep = moment_report(x, y, st)
    assert np.isfinite([rep.mean_rel_err, rep.cov_rel_err]).all()
    assert np.isnan(rep.coskew_rel_err) and np.isnan(rep.noise_floor["coskew_rel_err"])
    assert not floor_checks(rep, names=("coskew",))["coskew"]["met"]
    one = moment_report(x[[0, 30]], y[[0, 30]], st)
    assert np.isnan([one.mean_rel_err, one.cov_rel_err, one.noise_floor["mean_rel_err"]]).all()
    # The Gaussian floor of the mean is relative to ||mu|| however small (here < 1).
    small = 0.01 * x
    st_s = fit_class_stats([(small, y)], 2, num_bins=0, num_projections=0)
    rep = moment_report(small, y, st_s)
    norms = np.linalg.norm(st_s.mean_KxD, axis=1)
    assert norms.max() < 1
    want = [np.sqrt(np.trace(st_s.cov_KxDxD[k]) / 30) / norms[k] for k in (0, 1)]
    assert rep.noise_floor["mean_rel_err"] == pytest.approx(np.mean(want), rel=1e-10)


def test_floor_checks_allow_one_and_a_half_times_the_floor():
    # FLOOR_FACTOR's documented 1.5: tolerance = 1.5 x floor, met at exactly that error.
    from dsb.stats.report import MomentReport, floor_checks

    rep = MomentReport(
        0.375, 0.75, 0.0, (), (), (), (), noise_floor={"mean_rel_err": 0.25, "cov_rel_err": 0.5}
    )
    checks = floor_checks(rep)
    assert checks["mean"]["tol"] == pytest.approx(0.375, rel=1e-12)
    assert checks["cov"]["tol"] == pytest.approx(0.75, rel=1e-12)
    assert checks["mean"]["met"] and checks["cov"]["met"]
    assert not floor_checks(rep, factor=1.0)["mean"]["met"]


def test_bootstrap_floor_of_a_constant_class_is_known_exactly():
    # Reference rows that are constant within each class: every bootstrap draw is that
    # row repeated, whatever indices are drawn, so the floor's mean error is
    # ||r_k - mu_k|| / ||mu_k|| and its covariance error ||0 - S_k|| / ||S_k|| = 1.
    import numpy as np

    from dsb.stats.report import moment_report

    st, xx, yy = _three_class_case()
    r = np.stack([st.mean_KxD[k] + 0.1 * (k + 1) for k in range(3)])
    ref_y = np.repeat([0, 1, 2], [5, 5, 2])  # two rows are enough for a class
    rep = moment_report(xx, yy, st, reference_x=r[ref_y], reference_y=ref_y, floor_repeats=2)
    mean_floor = [
        np.linalg.norm(r[k] - st.mean_KxD[k]) / np.linalg.norm(st.mean_KxD[k]) for k in (0, 2)
    ]
    wk = np.array([50, 30]) / 80
    assert rep.noise_floor["mean_rel_err"] == pytest.approx(wk @ mean_floor, rel=1e-12)
    assert rep.noise_floor["cov_rel_err"] == pytest.approx(1.0, rel=1e-12)
    assert rep.noise_floor["repeats"] == 2 and rep.noise_floor["source"] == "bootstrap"
    assert rep.extra["coskew_projections"] == "fresh:64"


def test_moment_report_rejects_a_flat_x():
    import numpy as np

    from dsb.stats.report import moment_report

    st, xx, yy = _three_class_case()
    for bad in (np.zeros(len(yy)), xx[:, :, None], np.concatenate([xx, xx[:1]])):
        with pytest.raises(ValueError, match="expected x"):
            moment_report(bad, yy, st)
    for d in (3, 5):
        with pytest.raises(ValueError, match=f"^reference_x has dimension {d}, not 4$"):
            moment_report(xx, yy, st, reference_x=np.ones((len(yy), d)), reference_y=yy)
    for kw in ({"fresh_projections": 0}, {"floor_repeats": 0}):
        with pytest.raises(ValueError, match=">= 1"):
            moment_report(xx, yy, st, reference_x=xx, reference_y=yy, **kw)
