"""A run's figures: chosen by evaluator type, no matplotlib backend selected or needed."""

import json
import subprocess
import sys
import textwrap

import pytest
from dsb_testing import ROOT

from dsb import plots
from dsb.plots import (
    FIGURES,
    figures_for,
    plot_probe_figures,
    plot_run,
    register_figure,
    run_evals,
)

STEPS = [0, 1, 2, 4, 8, 16]

# The evals of the default run (conf/evals/probes.yaml) plus an LM-style entry.
CONFIG = {
    "data": {"name": "digits"},
    "evals": {
        "val": {"type": "classification", "split": "test"},
        "dsb": {"type": "dsb_probes", "maxent_sets": ["ics", "gaussian"], "ot_sets": ["cqn"]},
    },
}


def _records(dsb_keys=("dsb",), ngram_keys=()):
    """metrics.jsonl rows with the names the trainer logs for these entries."""
    out = []
    for i, s in enumerate(STEPS):
        r = {"step": s, "train/loss": 2.3 - 0.1 * i, "train/accuracy": 0.1 + 0.1 * i}
        r |= {"val/loss": 2.2 - 0.1 * i, "val/accuracy": 0.1 + 0.1 * i}
        for k in dsb_keys:
            for p in ("ics", "gaussian"):
                r |= {f"{k}/maxent/{p}/loss": 2.3 - 0.05 * i, f"{k}/maxent/{p}/accuracy": 0.2}
            r |= {f"{k}/ot/cqn/loss": 2.0, f"{k}/ot/cqn/target_accuracy": 0.05 * i}
            r |= {f"{k}/ot/cqn/source_loss": 1.0, f"{k}/ot/cqn/source_accuracy": 0.9}
        for k in ngram_keys:
            for n, name in enumerate(("unigram", "bigram")):
                r |= {f"{k}/{name}/loss": 5.0 - n - i / 4, f"{k}/{name}/floor": 3.0 - n}
                r |= {f"{k}/kl/{name}": 1.0 / (s + 1 + n)}
            r |= {f"{k}/text/loss": 4.0 - i / 5}
        out.append(r)
    return out


def _run(d, records, config=CONFIG):
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return d


def _names(paths, run):
    return sorted(str(p.relative_to(run / "figures")) for p in paths)


def test_default_run_figures_by_evaluator_type(tmp_path):
    run = _run(tmp_path / "run", _records())
    assert run_evals(run) == {"val": "classification", "dsb": "dsb_probes"}
    paths = plot_run(run, num_classes=10)
    assert _names(paths, run) == ["curves.png", "maxent_across_time.png", "ot_across_time.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)
    # The same through the script's entry point, into another folder.
    again = plot_probe_figures(run, out_dir=tmp_path / "out")
    assert sorted(p.name for p in again) == ["maxent_across_time.png", "ot_across_time.png"]


def test_figures_follow_types_not_metric_names(tmp_path):
    # An n-gram entry keyed "lm" and a DSB entry keyed "probes": names alone do not tell.
    recs = _records(dsb_keys=("probes",), ngram_keys=("lm",))
    run = _run(tmp_path / "run", recs, {"data": {"name": "text"}})
    evals = {"val": "classification", "probes": "dsb_probes", "lm": "ngram_probes"}
    paths = plot_run(run, evals=evals, num_classes=10)
    want = ["curves.png", "maxent_across_time.png", "ngram_probes.png", "ot_across_time.png"]
    assert _names(paths, run) == want
    # Types without a figure draw nothing of their own; classification entries are curves.
    run2 = _run(tmp_path / "run2", recs, {"data": {"name": "text"}})
    paths = plot_run(run2, evals={"val": "classification", "probes": "training_jacobian"})
    assert _names(paths, run2) == ["curves.png"]


def test_several_entries_of_one_type_get_subfolders(tmp_path):
    run = _run(tmp_path / "run", _records(dsb_keys=("a", "b")))
    paths = plot_run(run, evals={"a": "dsb_probes", "b": "dsb_probes"}, num_classes=10)
    assert _names(paths, run) == [
        "a/maxent_across_time.png", "a/ot_across_time.png",
        "b/maxent_across_time.png", "b/ot_across_time.png", "curves.png",
    ]  # fmt: skip


def test_figures_from_a_reevaluate_dataframe(tmp_path):
    """A ``dsb.analysis.reevaluate`` table (``step`` and ``<key>/<name>`` columns, NaN
    where an entry was not due) draws the same figures as metrics.jsonl records."""
    import pandas as pd

    recs = [{k: v for k, v in r.items() if not k.startswith("train/")} for r in _records()]
    run = _run(tmp_path / "run", _records())
    df = pd.DataFrame(recs)
    df.loc[1, "dsb/ot/cqn/loss"] = float("nan")
    as_records = plots._as_records(df)
    assert [r["step"] for r in as_records] == STEPS and isinstance(as_records[0]["step"], int)
    assert "dsb/ot/cqn/loss" not in as_records[1] and as_records[2] == recs[2]
    out = tmp_path / "analysis"
    paths = plot_run(run, metrics=df, out_dir=out, title="run (re-evaluated)")
    names = sorted(str(p.relative_to(out)) for p in paths)
    assert names == ["curves.png", "maxent_across_time.png", "ot_across_time.png"]
    assert not (run / "figures").exists()
    # Without a run directory: figures_for, here the probe figures of "dsb" alone.
    evals = {"dsb": "dsb_probes"}
    paths = figures_for(df, evals, tmp_path / "x", num_classes=10, curves=False)
    assert sorted(p.name for p in paths) == ["maxent_across_time.png", "ot_across_time.png"]
    with pytest.raises(ValueError, match="needs a 'step' column"):
        figures_for(df.drop(columns="step"), evals, tmp_path / "y")


def test_register_figure_and_bad_input(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "FIGURES", FIGURES.copy())
    seen = []

    @register_figure("my_probe")
    def my_figures(records, key, out_dir, *, title, num_classes):
        seen.append((len(records), key, out_dir.name, title, num_classes))
        return []

    run = _run(tmp_path / "run", _records())
    plot_run(run, evals={"mine": "my_probe"}, num_classes=3)
    assert seen == [(len(STEPS), "mine", "figures", "run", 3)]
    with pytest.raises(ValueError, match="already registered"):
        register_figure("dsb_probes")(my_figures)
    with pytest.raises(ValueError, match="already registered: its entries are lines of curves"):
        register_figure("classification")
    assert "my_probe" not in FIGURES  # registered into the test's copy only
    with pytest.raises(TypeError, match="evals must map entry keys to type names"):
        plot_run(run, evals={"dsb": {"type": "dsb_probes"}})
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "metrics.jsonl").write_text(json.dumps({"step": 0, "train/loss": 1.0}) + "\n")
    with pytest.raises(FileNotFoundError, match="pass evals="):
        plot_run(bare)
    bad = _run(tmp_path / "bad", _records(), {"evals": {"val": "classification"}})
    with pytest.raises(ValueError, match=r"evals\.val must be a mapping with a 'type'"):
        plot_run(bad)


def test_plotting_modules_leave_the_backend_alone(tmp_path):
    """Importing the plotting modules and drawing a run's figures neither selects a
    backend nor needs one: the backend here is a module that does not exist, so any
    pyplot figure (or ``matplotlib.use``) in that path fails."""
    run = _run(tmp_path / "run", _records(ngram_keys=("ngram",)))
    code = textwrap.dedent(f"""
        import matplotlib
        matplotlib.rcParams["backend"] = "module://no_such_backend"
        import dsb.lm.plots, dsb.plot_helpers, dsb.plots, dsb.stats.plots
        assert matplotlib.get_backend() == "module://no_such_backend", "import"
        paths = dsb.plots.plot_run({str(run)!r}, evals={{
            "val": "classification", "dsb": "dsb_probes", "ngram": "ngram_probes"}})
        assert len(paths) == 4, paths
        assert matplotlib.get_backend() == "module://no_such_backend", "plot_run"
        print("ok")
    """)
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]
