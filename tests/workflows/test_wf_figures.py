"""The sweep figure scripts of experiments/ on synthetic run directories (no training)."""

import importlib.util
import json

import numpy as np
import pytest
from dsb_testing import ROOT

STEPS = [0, 1, 2, 4, 8, 16]


def _script(folder: str, name: str = "plot_sweep"):
    spec = importlib.util.spec_from_file_location(
        f"{folder}_{name}", ROOT / "experiments" / folder / f"{name}.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write_run(d, config: dict, records: list[dict], finished=True):
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if finished:
        (d / "summary.json").write_text("{}")


def test_dsb_probes_sweep_figure_layout_and_bands(tmp_path):
    n = 0
    for data in ("digits", "cifar10"):
        for width in (8, 64):
            for seed in (0, 1):
                recs = []
                for s in STEPS:
                    acc = min(1.0, 0.1 + 0.05 * np.log2(s + 1) + 0.01 * seed + width / 1000)
                    r = {"step": s, "val/accuracy": acc}
                    for p in ("ics", "gaussian"):
                        r[f"dsb/maxent/{p}/accuracy"] = acc / 2
                        r[f"dsb/maxent/{p}/loss"] = 2.3 - acc
                    r["dsb/ot/cqn/target_accuracy"] = acc / 3
                    r["dsb/ot/cqn/source_accuracy"] = 1 - acc
                    r["dsb/ot/cqn/loss"] = 2.0
                    recs.append(r)
                cfg = {"seed": seed, "data": {"name": data}, "model": {"name": "mlp",
                       "kwargs": {"widths": [width]}}}  # fmt: skip
                _write_run(tmp_path / "sweep" / str(n), cfg, recs)
                n += 1
    mod = _script("dsb_probes")
    out = tmp_path / "fig"
    paths = mod.main([str(tmp_path / "sweep"), "--out", str(out)])
    assert sorted(p.name for p in paths) == sorted(
        f"{k}_across_time.{e}" for k in ("maxent", "ot") for e in ("png", "pdf")
    )
    assert all(p.stat().st_size > 5_000 for p in paths)
    # Layout: 2 datasets x (accuracy, loss) rows, one column per probe set, one mean line
    # per width with a min-max band over the two seeds.
    fig = mod.make_figure(mod.load_table([str(tmp_path / "sweep")]), "maxent")
    axes = fig.axes
    assert len(axes) == 4 * 2  # rows cifar10-acc, cifar10-loss, digits-acc, digits-loss
    assert [ax.get_title() for ax in axes[:2]] == ["cifar10: ics", "cifar10: gaussian"]
    assert axes[4].get_title() == "digits: ics" and axes[2].get_ylabel() == "cross-entropy"
    lines = [ln for ln in axes[0].get_lines() if ln.get_linestyle() == "-"]
    assert sorted(ln.get_label() for ln in lines) == ["widths=[64]", "widths=[8]"]
    assert len(axes[0].collections) == 2  # the seed bands
    narrow = next(ln for ln in lines if ln.get_label() == "widths=[8]")
    want = [np.mean([min(1.0, 0.1 + 0.05 * np.log2(s + 1) + 0.01 * sd + 0.008) / 2
                     for sd in (0, 1)]) for s in STEPS]  # fmt: skip
    np.testing.assert_allclose(narrow.get_ydata(), want)
    # A table written by the aggregator gives the same figure inputs.
    from dsb.aggregate import collect, save

    table = save(collect(tmp_path / "sweep"), tmp_path / "t.parquet")
    assert mod.main([str(table), "--out", str(tmp_path / "fromtable")])


def test_lm_ngram_sweep_figure(tmp_path):
    for d_model in (32, 64):
        for seed in (0, 1):
            recs = []
            for s in [*STEPS, 12]:  # 12: an interval checkpoint, not log-spaced
                r = {"step": s}
                for i, name in enumerate(("unigram", "bigram", "trigram")):
                    r[f"ngram/{name}/loss"] = 5 - i - np.log2(s + 1) / 4 - d_model / 100
                    r[f"ngram/{name}/floor"] = 3.0 - i
                    r[f"ngram/kl/{name}"] = 1 / (s + 1 + i + seed)
                r["ngram/text/loss"] = 4 - np.log2(s + 1) / 5
                recs.append(r)
            cfg = {"seed": seed, "data": {"name": "text"}, "train": {"total_steps": 16},
                   "model": {"name": "transformer", "kwargs": {"d_model": d_model}}}  # fmt: skip
            _write_run(tmp_path / "sweep" / f"{d_model}_{seed}", cfg, recs, finished=seed == 0)
    mod = _script("lm_ngram")
    paths = mod.main([str(tmp_path / "sweep"), "--out", str(tmp_path / "fig")])
    assert [p.name for p in paths] == ["ngram_across_time.png", "ngram_across_time.pdf"]
    assert paths[0].stat().st_size > 10_000
    df = mod.load_table([str(tmp_path / "sweep")], finished_only=True)
    assert df["run_dir"].nunique() == 2 and set(df["status"]) == {"finished"}
    assert sorted(set(df["step"])) == STEPS  # interval checkpoints dropped by default
    assert 12 in set(mod.load_table([str(tmp_path / "sweep")], all_steps=True)["step"])
    with pytest.raises(SystemExit, match="no n-gram probe metrics"):
        empty = tmp_path / "empty"
        _write_run(empty / "r", {"seed": 0}, [{"step": 0, "val/loss": 1.0}])
        mod.main([str(empty), "--out", str(tmp_path / "none")])
