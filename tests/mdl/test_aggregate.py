"""dsb.mdl.aggregate: the t-interval, the grouping over seeds, the table and the figure."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dsb.mdl.aggregate import collect, main, summarize, t_interval


def test_t_interval_matches_the_formula():
    v = [1.0, 2.0, 4.0]
    m, lo, hi = t_interval(v)
    half = 4.302652729911275 * np.std(v, ddof=1) / math.sqrt(3)  # t_{0.975, 2}
    assert (m, lo, hi) == pytest.approx((7 / 3, 7 / 3 - half, 7 / 3 + half))
    assert t_interval([2.0]) == (2.0, 2.0, 2.0)


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
