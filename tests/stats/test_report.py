"""Stated targets of edits and samplers: checks, warnings and the figure legend flag."""

import logging
import math

from dsb.stats import plots
from dsb.stats.report import target_check, unmet_checks, warn_unmet


def test_target_check_meets_only_within_tolerance():
    assert target_check(1e-7, 1e-6)["met"]
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
    with pytest.raises(ValueError, match="expected x"):
        moment_report(x[:, :3], y, st)
    with pytest.raises(ValueError, match="class 1"):
        moment_report(x, y, st, reference_x=x[y == 0], reference_y=y[y == 0])
    # Default co-skewness projections: the held-out last 64 columns, not all of them.
    rep = moment_report(x, y, st)
    assert rep.extra["coskew_projections"] == "stats_heldout"
    want = moment_report(x, y, st, skew_cols=slice(64, 128)).coskew_rel_err
    assert rep.coskew_rel_err == want
    assert np.isfinite(rep.noise_floor["coskew_rel_err"])
