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
                    # One digits run's gaussian set missed a target it states.
                    r["dsb/maxent/gaussian/target_met"] = float(data != "digits" or seed == 0)
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
    assert axes[5].get_title() == "digits: gaussian [MISSED TARGET]"
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


def test_dsb_findings_recomputed_from_their_definitions(tmp_path):
    """experiments/dsb_probes/findings.py: every number recomputed by hand from the
    metrics the synthetic runs were written with."""
    steps = [0, 1, 2, 4, 8, 16, 32]
    # Per seed: ics loss dips at step 4 then rises (the claim); box3 falls to the end (no
    # minimum before the end). OT cqn: target accuracy peaks at step 8, source overtakes at
    # step 16 in seed 0 only; seed 1 never crosses. mean_shift: the source accuracy is
    # already above the target's peak at its step (8), so the claim fails there, and the
    # crossing counted is the first one after the peak (16). box1 and gaussian have their
    # minima at 16 and 8: an order-2 minimum before an order-1 one.
    ics = {0: [2.3, 2.0, 1.0, 0.5, 0.8, 1.1, 1.4], 1: [2.3, 2.1, 1.1, 0.6, 0.7, 0.9, 1.0]}
    box3 = {0: [2.3, 2.2, 2.0, 1.5, 1.0, 0.6, 0.5], 1: [2.3, 2.2, 2.1, 1.6, 1.1, 0.7, 0.4]}
    tgt = {0: [0.1, 0.1, 0.3, 0.5, 0.6, 0.3, 0.2], 1: [0.1, 0.1, 0.3, 0.5, 0.6, 0.5, 0.45]}
    src = {0: [0.1, 0.1, 0.1, 0.1, 0.2, 0.4, 0.7], 1: [0.1, 0.1, 0.1, 0.1, 0.2, 0.3, 0.4]}
    for seed in (0, 1):
        # fmt: off
        recs = [
            {"step": s, "val/accuracy": 0.9, "dsb/maxent/ics/loss": ics[seed][i],
             "dsb/maxent/box3/loss": box3[seed][i], "dsb/ot/cqn/target_accuracy": tgt[seed][i],
             "dsb/ot/cqn/source_accuracy": src[seed][i],
             "dsb/ot/mean_shift/target_accuracy": [0.1, 0.1, 0.3, 0.5, 0.6, 0.3, 0.2][i],
             "dsb/ot/mean_shift/source_accuracy": [0.1, 0.1, 0.1, 0.1, 0.7, 0.8, 0.9][i],
             "dsb/maxent/box1/loss": [2.3, 2.0, 1.5, 1.2, 1.0, 0.9, (1.0, 0.91)[seed]][i],
             "dsb/maxent/gaussian/loss": [2.3, 2.0, 1.5, 1.2, 1.0, 1.1, 1.2][i]}
            for i, s in enumerate(steps)
        ]
        # fmt: on
        cfg = {"seed": seed, "data": {"name": "digits"}, "model": {"name": "mlp"}}
        _write_run(tmp_path / "sweep" / str(seed), cfg, recs)
    mod = _script("dsb_probes", "findings")
    res = mod.main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out")])
    runs = {r["seed"]: r for r in res["runs"]}
    for seed in (0, 1):
        m = {x["set"]: x for x in runs[seed]["maxent"]}
        i = int(np.argmin(ics[seed]))
        assert m["ics"]["min_step"] == steps[i] == 4
        assert m["ics"]["rise"] == pytest.approx(ics[seed][-1] - ics[seed][i])
        assert m["ics"]["holds"] is True
        assert m["box3"]["min_step"] == 32 and m["box3"]["rise"] == 0.0
        assert m["box3"]["holds"] is False
    o0, o1 = (next(o for o in runs[s]["ot"] if o["set"] == "cqn") for s in (0, 1))
    ms = next(o for o in runs[0]["ot"] if o["set"] == "mean_shift")
    assert (ms["target_peak_step"], ms["source_at_peak"], ms["cross_step"]) == (8, 0.7, 16)
    assert ms["holds"] is False
    assert (o0["target_peak"], o0["target_peak_step"], o0["cross_step"]) == (0.6, 8, 16)
    assert o0["source_at_peak"] == 0.2 and o0["holds"] is True
    assert o1["cross_step"] is None and o1["holds"] is False  # final source 0.4 < 0.45
    rows = {(r["kind"], r["set"]): r for r in res["claims"]}
    rises = np.array([ics[s][-1] - min(ics[s]) for s in (0, 1)])
    ics_row = rows[("maxent", "ics")]
    assert ics_row["rise_mean"] == pytest.approx(rises.mean())
    assert ics_row["rise_sem"] == pytest.approx(rises.std(ddof=1) / np.sqrt(2))
    assert ics_row["holds"] == "yes"  # mean 0.65 > 2 x sem 0.25
    assert rows[("maxent", "box3")]["holds"] == "no"
    # box1 rises in both seeds (0.1, 0.01) but its mean 0.055 is below 2 x sem 0.045.
    assert rows[("maxent", "box1")]["seeds_holding"] == 2
    assert rows[("maxent", "box1")]["holds"] == "no"
    assert rows[("ot", "cqn")]["holds"] == "1/2 seeds"
    (order,) = res["higher_orders_later"]
    assert order["min_step_by_order"] == {1: [16.0, 4.0], 2: [8.0], 3: [32.0]}
    assert order["holds"] is False  # the order-2 minimum (8) precedes box1's (16)
    md = (tmp_path / "out" / "findings.md").read_text()
    assert "| digits | mlp | 2 | ics | 1 | 4 |" in md
