"""The results aggregator on real tiny runs, plus running, killed and broken run dirs."""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from dsb_testing import ROOT, tiny_config

from dsb.aggregate import collect, find_run_dirs, flatten, run_status, save
from dsb.metrics import read_metrics
from dsb.train import train


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished tiny runs (seeds 0 and 1, different learning rates) in ``root/sweep``
    and four damaged copies beside them."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TFDS_DATA_DIR", str(tmp_path_factory.getbasetemp() / "tfds"))  # as tfds_dir
    root = tmp_path_factory.mktemp("agg")
    for seed, lr in ((0, "1e-2"), (1, "3e-3")):
        cfg = tiny_config("evals=classification", f"seed={seed}", f"optim.learning_rate={lr}")
        train(cfg, root / "sweep" / str(seed))
    finished = root / "sweep" / "1"
    # Killed mid-run long ago: no summary, the last metrics line torn, old mtime.
    killed = root / "sweep" / "killed"
    shutil.copytree(finished, killed)
    (killed / "summary.json").unlink()
    with (killed / "metrics.jsonl").open("a") as f:
        f.write('{"step": 20, "train/lo')
    old = time.time() - 3600
    os.utime(killed / "metrics.jsonl", (old, old))
    # Still running: no summary, metrics just written.
    running = root / "sweep" / "running"
    shutil.copytree(finished, running)
    (running / "summary.json").unlink()
    os.utime(running / "metrics.jsonl")
    # Crashed at start-up: a half-written config, no metrics, a traceback in the job log.
    crashed = root / "sweep" / "crashed"
    crashed.mkdir()
    (crashed / "config.yaml").write_text("name: x\nmodel: {name: [unclosed\n")
    (crashed / "main.log").write_text("Traceback (most recent call last):\n  boom\n")
    # A SLURM job whose submitit log (in the sweep's .submitit/<array>_<num>/) has the error.
    slurm = root / "sweep" / "7"
    shutil.copytree(killed, slurm)
    sub = root / "sweep" / ".submitit" / "1234_7"
    sub.mkdir(parents=True)
    (sub / "1234_7_0_log.err").write_text("Traceback (most recent call last):\nOOM\n")
    mp.undo()
    return root


def test_flatten_gives_dotted_scalar_keys():
    flat = flatten({"a": {"b": 1, "c": {"d": None}}, "e": [1, 2], "f": {}})
    assert flat == {"a.b": 1, "a.c.d": None, "e": "[1, 2]", "f": "{}"}


def test_status_of_each_kind_of_run_dir(runs):
    sweep = runs / "sweep"
    assert run_status(sweep / "0") == "finished"
    assert run_status(sweep / "killed") == "incomplete"
    assert run_status(sweep / "running") == "running"
    assert run_status(sweep / "crashed") == "failed"
    assert run_status(sweep / "7") == "failed"
    found = {d.name for d in find_run_dirs(runs)}
    assert found == {"0", "1", "killed", "running", "crashed", "7"}  # no .hydra, checkpoints


def test_collect_one_row_per_run_and_step(runs):
    df = collect(runs / "sweep")
    assert df.columns[:3].tolist() == ["run_dir", "status", "step"]
    by_run = {os.path.basename(r): g for r, g in df.groupby("run_dir")}
    steps = [0, 1, 2, 4, 8, 12, 16]  # evaluations at log-spaced checkpoints, train every 4
    for name in ("0", "1"):
        g = by_run[name]
        assert g["step"].tolist() == steps and set(g["status"]) == {"finished"}
        # Every metric of metrics.jsonl is in the table, unchanged.
        for rec in read_metrics(runs / "sweep" / name):
            row = g[g["step"] == rec["step"]].iloc[0]
            for k, v in rec.items():
                assert row[k] == pytest.approx(v), (name, k)
        summary = json.loads((runs / "sweep" / name / "summary.json").read_text())
        assert g.iloc[-1]["val/accuracy"] == pytest.approx(summary["val/accuracy"])
    # Config values, flattened with dotted keys.
    assert by_run["0"]["seed"].iloc[0] == 0 and by_run["1"]["seed"].iloc[0] == 1
    assert by_run["0"]["optim.learning_rate"].iloc[0] == pytest.approx(1e-2)
    assert by_run["1"]["optim.learning_rate"].iloc[0] == pytest.approx(3e-3)
    assert set(df["model.name"].dropna()) == {"mlp"}
    assert by_run["0"]["model.kwargs.widths"].iloc[0] == "[32]"
    assert by_run["0"]["evals.val.type"].iloc[0] == "classification"
    # The killed run keeps every complete line (the torn one is dropped).
    assert by_run["killed"]["step"].tolist() == steps
    assert set(by_run["killed"]["status"]) == {"incomplete"}
    # The crashed run stays visible: one row, no step, no config, no metrics.
    crashed = by_run["crashed"]
    assert len(crashed) == 1 and crashed["status"].iloc[0] == "failed"
    assert pd.isna(crashed["step"].iloc[0]) and pd.isna(crashed["seed"].iloc[0])
    assert np.isnan(crashed["val/accuracy"].iloc[0])
    # Globs and lists of run directories select the same rows.
    same = collect([runs / "sweep" / "0", str(runs / "sweep" / "[1]")])
    assert sorted(same["run_dir"].map(os.path.basename).unique()) == ["0", "1"]


def test_save_round_trips_and_cli(runs, tmp_path):
    df = collect(runs / "sweep")
    for suffix in (".parquet", ".csv"):
        path = save(df, tmp_path / f"t{suffix}")
        back = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path)
        assert back.shape == df.shape and list(back.columns) == list(df.columns)
        np.testing.assert_allclose(back["val/loss"], df["val/loss"].astype(float))
    with pytest.raises(ValueError, match=r"parquet or \.csv"):
        save(df, tmp_path / "t.xlsx")
    out = tmp_path / "cli.parquet"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dsb.aggregate",
            str(runs / "sweep" / "0"),
            str(runs / "sweep" / "crashed"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 runs, 8 rows" in proc.stdout and "'finished': 1" in proc.stdout
    assert len(pd.read_parquet(out)) == 8


def test_over_seeds_means_bands_and_variants(runs):
    from dsb.aggregate import over_seeds, variant_columns

    df = collect([runs / "sweep" / "0", runs / "sweep" / "1"])
    # The two runs differ by seed (not a variant) and learning rate (a variant).
    assert variant_columns(df) == ["optim.learning_rate"]
    # Where a run reports is not a variant either.
    tagged = df.assign(**{"logging.wandb_name": df["run_dir"].astype(str)})
    assert variant_columns(tagged) == ["optim.learning_rate"]
    both = over_seeds(df, ["val/accuracy", "train/loss"], by=[])
    at16 = both[both["step"] == 16].iloc[0]
    vals = df[df["step"] == 16]["val/accuracy"]
    assert at16["val/accuracy/n"] == 2
    assert at16["val/accuracy/mean"] == pytest.approx(vals.mean())
    assert at16["val/accuracy/min"] == vals.min() and at16["val/accuracy/max"] == vals.max()
    assert at16["val/accuracy/std"] == pytest.approx(vals.std())
    # Step 12 has training metrics only: no val row there, a train/loss one.
    assert pd.isna(both.set_index("step").loc[12, "val/accuracy/n"])
    assert both.set_index("step").loc[12, "train/loss/n"] == 2
    per_lr = over_seeds(df, ["val/accuracy"])
    assert per_lr["optim.learning_rate"].nunique() == 2
    assert set(per_lr["val/accuracy/n"]) == {1}
