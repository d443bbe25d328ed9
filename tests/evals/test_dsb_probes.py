"""The dsb_probes evaluator end to end on digits, with a fixed linear 'model'."""

import functools
import json
import logging
import re

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import dsb.evals.dsb_probes as probes
from dsb.cache import probe_cache_dir
from dsb.data.digits import digits_arrays
from dsb.evals.base import EvalContext, Snapshot
from dsb.stats.plots import plot_probe_curves

pytestmark = pytest.mark.usefixtures("one_blas_thread", "fresh_user_cache")  # counts cold builds


def _ctx(tmp_path):
    d = digits_arrays()

    def load_split(name):
        x, y = d[name]
        return {"image": x, "label": y.astype(np.int32)}

    return EvalContext(load_split, "train", 10, (8, 8, 1), tmp_path / "run", seed=0)


@functools.cache
def _snapshot(step=0):
    x, y = digits_arrays()["train"]
    clf = LogisticRegression(max_iter=500).fit(x.reshape(len(x), -1), y)

    def predict(xb):
        return clf.decision_function(np.asarray(xb).reshape(len(xb), -1)).astype(np.float32)

    return Snapshot(step=step, predict=predict, graphdef=None, params=None, rest=None)


def test_evaluator_names_values_and_moment_file(tmp_path):
    opts = dict(
        maxent_sets=["ics", "box1", "gaussian"],
        ot_sets=["cqn", "mean_shift", "gaussian"],
        num_samples=400,
        seed=0,
        shrinkage=[1.0, 0.01],
        clip=True,
    )
    ev = probes.DsbProbes(_ctx(tmp_path), **opts)
    out = dict(ev.run(_snapshot()))
    for s in ("ics", "box1", "gaussian"):
        assert 0.0 <= out[f"maxent/{s}/accuracy"] <= 1.0 and out[f"maxent/{s}/loss"] > 0
    for s in ("cqn", "mean_shift", "gaussian"):
        for m in ("loss", "target_accuracy", "source_loss", "source_accuracy", "target_met"):
            assert f"ot/{s}/{m}" in out
    assert len(out) == 3 * 3 + 3 * 5
    # target_met mirrors each set's stated checks in the moments file.
    moments = json.loads((tmp_path / "run" / probes.MOMENTS_FILE).read_text())
    for kind in ("maxent", "ot"):
        for name, rep in moments[kind].items():
            assert out[f"{kind}/{name}/target_met"] == float(rep["met"])
    # A trained linear model reads first-order ICS samples better than chance.
    assert out["maxent/ics/accuracy"] > 0.3
    # And the whole set is counted: accuracy is a multiple of 1/n.
    assert abs(out["maxent/ics/accuracy"] * 400 - round(out["maxent/ics/accuracy"] * 400)) < 1e-9
    moments = json.loads((tmp_path / "run" / probes.MOMENTS_FILE).read_text())
    assert set(moments["maxent"]) == {"ics", "box1", "gaussian"}
    assert moments["shrinkage"] == [1.0, 0.01]
    assert moments["ot"]["mean_shift"]["mean_rel_err"] < 1e-5
    # Rebuilding loads the same sets from the cache.
    ev2 = probes.DsbProbes(_ctx(tmp_path), **opts)
    assert all(s.from_cache for s in ev2.maxent + ev2.ot)
    assert dict(ev2.run(_snapshot())) == out


def test_sweep_jobs_share_the_data_dir_cache(tmp_path):
    # cache_dir="data_dir": two jobs (run dirs) with the same statistics, seed and options
    # build once and load the same arrays; another seed builds new sets.
    import types

    opts = dict(maxent_sets=["ics", "gaussian"], ot_sets=["mean_shift"], num_samples=200)
    cfg = types.SimpleNamespace(data=types.SimpleNamespace(data_dir=str(tmp_path / "data")))

    def ctx(run):
        c = _ctx(tmp_path / run)
        c.config = cfg
        return c

    a = probes.DsbProbes(ctx("job0"), cache_dir="data_dir", **opts)
    b = probes.DsbProbes(ctx("job1"), cache_dir="data_dir", **opts)
    assert not any(s.from_cache for s in a.maxent + a.ot)
    assert all(s.from_cache for s in b.maxent + b.ot)
    for sa, sb in zip(a.maxent + a.ot, b.maxent + b.ot, strict=True):
        np.testing.assert_array_equal(sa.x_NxD, sb.x_NxD)
    shared = tmp_path / "data" / probes.CACHE_SUBDIR

    def sets(d):
        return [p for p in d.glob("*.npz") if not p.name.startswith("classstats-")]

    # One file of class statistics beside the sets: the data, not the seed, keys it.
    assert len(sets(shared)) == 3 and len(list(shared.glob("classstats-*.npz"))) == 1
    assert not (tmp_path / "job0" / "run" / probes.CACHE_SUBDIR).exists()
    c = probes.DsbProbes(ctx("job2"), cache_dir="data_dir", seed=1, **opts)
    assert not any(s.from_cache for s in c.maxent + c.ot)
    assert len(sets(shared)) == 6 and len(list(shared.glob("classstats-*.npz"))) == 1
    # Without data.data_dir the user's cache is used, as with the default.
    d = probes.DsbProbes(_ctx(tmp_path / "job3"), cache_dir="data_dir", **opts)
    assert not any(s.from_cache for s in d.maxent)
    assert len(sets(probe_cache_dir())) == 3
    assert not (tmp_path / "job3" / "run" / probes.CACHE_SUBDIR).exists()


def test_default_cache_is_the_users_and_runs_share_it(tmp_path, monkeypatch, caplog):
    # No cache_dir: $DSB_PROBE_CACHE (here a temporary directory, see conftest), so a
    # second run directory loads every set the first one built, and says so.
    opts = dict(maxent_sets=["ics"], ot_sets=["mean_shift"], num_samples=100)
    with caplog.at_level(logging.INFO, logger="dsb.stats.evalsets"):
        a = probes.DsbProbes(_ctx(tmp_path / "job0"), **opts)
        b = probes.DsbProbes(_ctx(tmp_path / "job1"), **opts)
    assert [s.from_cache for s in a.maxent + a.ot] == [False, False]
    assert [s.from_cache for s in b.maxent + b.ot] == [True, True]
    lines = [r.getMessage() for r in caplog.records]
    assert sum("built in" in m for m in lines) == 2 and sum("loaded from" in m for m in lines) == 2
    assert not (tmp_path / "job0" / "run" / probes.CACHE_SUBDIR).exists()
    # Where the default points, and how it is turned off.
    monkeypatch.setenv("DSB_PROBE_CACHE", "none")
    assert probes.cache_dir_of(_ctx(tmp_path), None) is None
    monkeypatch.delenv("DSB_PROBE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert probes.cache_dir_of(_ctx(tmp_path), None) == tmp_path / "xdg" / "dsb" / "probe_sets"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    want = tmp_path / "home" / ".cache" / "dsb" / "probe_sets"
    assert probes.cache_dir_of(_ctx(tmp_path), None) == want
    assert probes.cache_dir_of(_ctx(tmp_path), "none") is None
    assert probes.cache_dir_of(_ctx(tmp_path), str(tmp_path / "x")) == tmp_path / "x"


def test_cross_entropy_and_accuracy():
    logits = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
    loss, acc = probes.cross_entropy_and_accuracy(logits, np.array([0, 0]))
    np.testing.assert_allclose(loss, -(np.log(0.7) + np.log(0.1)) / 2)
    assert acc == 0.5


def test_plot_probe_curves(tmp_path):
    recs = []
    for i, step in enumerate([0, 1, 2, 4, 8, 16]):
        recs.append(
            {
                "step": step,
                "dsb/maxent/ics/accuracy": 0.1 + 0.05 * i,
                "dsb/maxent/ics/loss": 2.3 - 0.1 * i,
                "maxent/box1/accuracy": 0.2,
                "maxent/box1/loss": 2.0,
                "ot/cqn/target_accuracy": 0.3,
                "ot/cqn/source_accuracy": 0.5,
                "ot/cqn/loss": 2.0,
                "val/loss": 1.0,
            }
        )
    for kind in ("maxent", "ot"):
        out = tmp_path / f"{kind}.png"
        fig = plot_probe_curves(recs, out, kind=kind, num_classes=10)
        assert out.stat().st_size > 1000
        ax_acc, ax_loss = fig.axes
        assert ax_loss.get_xscale() == "symlog"  # log2 axis that still shows step 0
        labels = [line.get_label() for line in ax_acc.get_lines()]
        if kind == "maxent":
            assert {"ics", "box1", "chance"} <= set(labels)
            xs = ax_acc.get_lines()[0].get_xdata()
            assert xs[0] == 0 and ax_acc.get_xlim()[0] <= 0  # step 0 (init) is on the plot
        else:
            assert {"cqn (target)", "cqn (source)"} <= set(labels)
        ys = [line.get_ydata()[0] for line in ax_loss.get_lines() if line.get_label() == "ln K"]
        np.testing.assert_allclose(ys, [np.log(10)])


def test_every_set_kind_is_registered_with_its_version_and_options():
    from dsb.registry import signature_of
    from dsb.stats.probesets import MAXENT_SETS, OT_SETS

    # The cache versions are part of every cache key: changing one is a new set.
    assert {n: k.version for n, k in MAXENT_SETS.items()} == {
        "box1": None, "box2": 3, "box3": 3, "gaussian": None, "ics": None, "truncnorm": 1
    }  # fmt: skip
    assert {n: k.version for n, k in OT_SETS.items()} == {
        "cqn": 2, "gaussian": 2, "mean_shift": 2
    }  # fmt: skip
    assert set(probes.SET_OPTIONS) <= set(signature_of(probes.DsbProbes).parameters)
    for registry in (MAXENT_SETS, OT_SETS):
        for name, kind in registry.items():
            # Each option a kind takes is an evaluator option, passed to a keyword it has.
            assert set(kind.options) <= set(probes.SET_OPTIONS), name
            params = signature_of(kind.fn).parameters.values()
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                assert set(kind.options.values()) <= {p.name for p in params}, name
    assert MAXENT_SETS.get("box2").options == {"particle_steps": "steps"}
    assert OT_SETS.get("gaussian").options == {"clip": "clip"}


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("gibbs_sweeps", 0, "evals.dsb.gibbs_sweeps=0 (used by max-ent set 'truncnorm'): must"),
        ("truncnorm_ridge", -1, "evals.dsb.truncnorm_ridge=-1 (used by max-ent set 'truncnorm')"),
    ],
)
def test_truncnorm_options_are_checked(option, value, message):
    options = {"maxent_sets": ["truncnorm"], option: value}
    with pytest.raises(ValueError, match=re.escape(message)):
        probes.DsbProbes.check_options("evals.dsb", options)
    probes.DsbProbes.check_options("evals.dsb", {"maxent_sets": ["truncnorm"], option: 3})
