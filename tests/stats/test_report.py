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
