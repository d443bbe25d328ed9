"""An end-to-end digits run whose metrics include every DSB probe, and its figures."""

import pytest
from dsb_testing import tiny_config

from dsb.metrics import read_metrics
from dsb.train import train

MAXENT = ["ics", "box1", "gaussian", "truncnorm", "box2", "box3"]
OT = ["cqn", "mean_shift", "gaussian"]


@pytest.mark.slow  # ~50-120 s (box3 and truncnorm built in the run); each set: tests/stats
def test_digits_run_with_every_probe(tmp_path, tfds_dir):
    cfg = tiny_config(
        "evals=probes",
        f"evals.dsb.maxent_sets=[{','.join(MAXENT)}]",
        f"evals.dsb.ot_sets=[{','.join(OT)}]",
        "evals.dsb.num_samples=200",
        "+evals.dsb.particle_steps=60",
        "+evals.dsb.gibbs_sweeps=10",
        "train.total_steps=8",
    )
    train(cfg, tmp_path / "run")
    records = read_metrics(tmp_path / "run")
    evals = [r for r in records if "val/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 1, 2, 4, 8]
    for r in evals:
        for s in MAXENT:
            assert 0 <= r[f"dsb/maxent/{s}/accuracy"] <= 1 and r[f"dsb/maxent/{s}/loss"] > 0
        for s in OT:
            for m in ("target_accuracy", "source_accuracy", "loss", "source_loss"):
                assert f"dsb/ot/{s}/{m}" in r
            # Target and source labels always differ, so the two accuracies sum to <= 1.
            assert r[f"dsb/ot/{s}/target_accuracy"] + r[f"dsb/ot/{s}/source_accuracy"] <= 1 + 1e-9
        # conf/evals/probes.yaml's poly_approx entry (the MLP's approximants, both orders).
        poly_r2 = [k for k in r if k.startswith("poly/") and k.endswith("/val/r2")]
        assert len(poly_r2) == 2 and "poly/linear_ols/gauss/r2" in r
    # Every checkpoint sees the same fixed sets: at step 0 (same init) two runs agree exactly.
    train(cfg, tmp_path / "run2")

    def untimed(rec):
        return {k: v for k, v in rec.items() if not k.startswith("time/")}

    assert untimed(read_metrics(tmp_path / "run2")[0]) == untimed(records[0])
    figs = tmp_path / "run" / "figures"
    for name in (
        "curves.png", "maxent_across_time.png", "ot_across_time.png",
        "poly_across_time.png", "poly_eigenvectors.png",
    ):  # fmt: skip
        assert (figs / name).stat().st_size > 10_000
    assert (tmp_path / "run" / "dsb_probes_moments.json").exists()
