"""dsb.mdl.aggregate: the t-interval, the grouping over seeds, the table and the figure."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dsb.mdl.aggregate import _method as aggregate_method
from dsb.mdl.aggregate import collect, main, summarize, t_interval


def test_t_interval_matches_the_formula():
    v = [1.0, 2.0, 4.0]
    m, lo, hi = t_interval(v)
    half = 4.302652729911275 * np.std(v, ddof=1) / math.sqrt(3)  # t_{0.975, 2}
    assert (m, lo, hi) == pytest.approx((7 / 3, 7 / 3 - half, 7 / 3 + half))
    assert t_interval([2.0]) == (2.0, 2.0, 2.0)
    # Two seeds already give an interval: t_{0.975, 1} = 12.706.
    half2 = 12.706204736174707 * np.std([1.0, 2.0], ddof=1) / math.sqrt(2)
    assert t_interval([1.0, 2.0]) == pytest.approx((1.5, 1.5 - half2, 1.5 + half2))


def _write(root, erasure, seed, mdl):
    d = root / str(erasure) / f"seed{seed}"
    d.mkdir(parents=True)
    rec = {
        "bounds": [0, 10, 100],
        "chunk_bits": [10 * math.log2(10), mdl * 100 - 10 * math.log2(10)],
        "mdl_bits_per_sample": mdl,
        "erasure": erasure,
        "erasure_shrinkage": None,
        "dataset": "digits",
        "model": "mlp",
        "seed": seed,
        "log2_num_classes": math.log2(10),
    }
    (d / "mdl.json").write_text(json.dumps(rec))


def test_summary_table_and_figure(tmp_path):
    for seed, (c, le) in enumerate([(1.0, 1.5), (1.2, 1.6), (1.1, 1.7)]):
        _write(tmp_path, None, seed, c)
        _write(tmp_path, "leace", seed, le)
    rows = summarize(collect(tmp_path))
    assert [r["method"] for r in rows] == ["control", "leace"]
    assert rows[0]["mdl_bits_per_sample"] == pytest.approx(1.1)
    assert rows[1]["per_seed"] == pytest.approx([1.5, 1.6, 1.7])
    assert rows[0]["ci95_lo"] < 1.1 < rows[0]["ci95_hi"]
    # Per-chunk curve: bits per example of each chunk, mean over seeds.
    assert rows[0]["chunk_bits_per_example"][0] == pytest.approx(math.log2(10))
    main([str(tmp_path), "--out", str(tmp_path / "out")])
    for name in ("mdl_table.csv", "mdl_table.md", "mdl.png", "mdl_summary.json"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert (
        "| digits | mlp | leace | 3 | 1.6000 |" in (tmp_path / "out" / "mdl_table.md").read_text()
    )


def test_strict_runs_are_never_pooled_with_holdout_runs(tmp_path):
    for seed in range(2):
        _write(tmp_path / "h", None, seed, 1.0 + seed)
        _write(tmp_path / "s", None, seed, 2.0 + seed)
    for p in (tmp_path / "s").rglob("mdl.json"):
        p.write_text(json.dumps(json.loads(p.read_text()) | {"validation": "strict"}))
    rows = summarize(collect(tmp_path))
    assert {r["method"]: r["per_seed"] for r in rows} == {
        "control": [1.0, 2.0],
        "control_strict": [2.0, 3.0],
    }


LOG2_10 = math.log2(10)


def _rec(dataset, model, erasure, seed, mdl, log2k=LOG2_10, validation="holdout"):
    return {
        "bounds": [0, 10, 100],
        "chunk_bits": [10 * log2k, mdl * 100 - 10 * log2k],
        "mdl_bits_per_sample": mdl,
        "erasure": erasure,
        "erasure_shrinkage": None,
        "validation": validation,
        "dataset": dataset,
        "model": model,
        "seed": seed,
        "log2_num_classes": log2k,
        "method": erasure or "control",
    }


def _drawn(monkeypatch):
    """Keep the figures ``plot`` draws (it closes them) to read back what was drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = []
    monkeypatch.setattr(plt, "close", figs.append)
    return figs


def test_figure_draws_each_rows_interval_labels_and_chunk_curve(tmp_path, monkeypatch):
    from dsb.mdl.aggregate import plot

    recs = [
        _rec("digits", model, erasure, seed, mdl)
        for model, base in (("mlp", 1.0), ("lenet5", 2.0))
        for erasure, shift in ((None, 0.0), ("leace", 0.5), ("qleace", 0.3))
        for seed, mdl in enumerate(base + shift + np.array([0.0, 0.1, 0.4]))
    ]
    rows = summarize(recs)
    figs = _drawn(monkeypatch)
    plot(rows, tmp_path / "mdl.png")
    ax0, ax1 = figs[0].axes
    # Bars at the means, error bars from ci95_lo to ci95_hi (asymmetric form, by value).
    from matplotlib.container import BarContainer

    (bars,) = [c for c in ax0.containers if isinstance(c, BarContainer)]
    assert [b.get_height() for b in bars] == pytest.approx([r["mdl_bits_per_sample"] for r in rows])
    segs = bars.errorbar.lines[2][0].get_segments()
    np.testing.assert_allclose(
        [(s[0][1], s[1][1]) for s in segs], [(r["ci95_lo"], r["ci95_hi"]) for r in rows]
    )
    # Two models: each tick names method and model.
    assert [t.get_text() for t in ax0.get_xticklabels()] == [
        f"{r['method']}\n{r['model']}" for r in rows
    ]
    # The uniform code line on both panels is log2 K.
    for ax in (ax0, ax1):
        hl = [ln for ln in ax.get_lines() if ln.get_linestyle() == ":"]
        assert [ln.get_ydata()[0] for ln in hl] == pytest.approx([math.log2(10)])
    # Chunk curves: chunk j plotted at the prefix size b[j] that coded it (b[0] = 0 -> 1).
    curves = [ln for ln in ax1.get_lines() if ln.get_linestyle() != ":"]
    assert len(curves) == len(rows)
    for ln, r in zip(curves, rows):
        assert list(ln.get_xdata()) == [1, 10]
        assert list(ln.get_ydata()) == pytest.approx(r["chunk_bits_per_example"])
    # One model: ticks name the method only.
    one = summarize([r for r in recs if r["model"] == "mlp"])
    plot(one, tmp_path / "one.png")
    assert [t.get_text() for t in figs[1].axes[0].get_xticklabels()] == [
        "control",
        "leace",
        "qleace",
    ]


def test_rows_order_methods_control_leace_qleace_then_others():
    recs = [
        _rec("digits", "mlp", e, 0, 1.0, validation=v)
        for e, v in (
            ("qleace", "holdout"),
            (None, "strict"),
            ("leace", "holdout"),
            (None, "holdout"),
        )
    ]
    for r in recs:
        r["method"] = aggregate_method(r)
    assert [r["method"] for r in summarize(recs)] == [
        "control",
        "leace",
        "qleace",
        "control_strict",
    ]


def test_one_figure_per_dataset_with_its_own_uniform_code(tmp_path, monkeypatch):
    from dsb.mdl.aggregate import plot

    for ds, log2k in (("digits", math.log2(10)), ("toy", 1.0)):
        for seed in range(2):
            d = tmp_path / ds / f"seed{seed}"
            d.mkdir(parents=True)
            rec = _rec(ds, "mlp", None, seed, 0.5 + seed, log2k=log2k)
            (d / "mdl.json").write_text(json.dumps(rec))
    rows = summarize(collect(tmp_path))
    for bad in (rows, []):  # two datasets, or none
        with pytest.raises(ValueError, match="one dataset per figure"):
            plot(bad, tmp_path / "mixed.png")
    figs = _drawn(monkeypatch)
    out = tmp_path / "out"
    out.mkdir()  # an existing output directory is fine, and so is a second run
    for _ in range(2):
        main([str(tmp_path), "--out", str(out)])
    assert sorted(p.name for p in out.glob("*.png")) == ["mdl_digits.png", "mdl_toy.png"]
    uniform = [
        ln.get_ydata()[0]
        for f in figs[:2]
        for ln in f.axes[0].get_lines()
        if ln.get_linestyle() == ":"
    ]
    assert uniform == pytest.approx([math.log2(10), 1.0])
