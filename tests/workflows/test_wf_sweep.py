"""Sweep definitions compose and name real models and datasets; a tiny local multirun runs
end to end, aggregates, and a rerun of the same sweep directory resumes every job."""

import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pandas as pd
import pytest
from dsb_testing import ROOT, compose

from dsb.aggregate import collect
from dsb.analysis import load_checkpoint
from dsb.config import to_config
from dsb.data.registry import DATASETS
from dsb.models import available_models

SWEEPS = {  # experiment -> number of jobs in its grid
    "sweep_dsb_probes": 4 * 9 * 3,
    "sweep_dsb_probes_local": 1 * 2 * 2,
    "sweep_lm_ngram": 2 * 3 * 3,
    "sweep_lm_ngram_local": 1 * 2 * 2,
}


def _choices(key: str, value) -> list[str]:
    """The values Hydra's basic sweeper takes for ``key`` (its own override parser)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    (override,) = OverridesParser.create().parse_overrides([f"{key}={value}"])
    if not override.is_sweep_override():  # a single value (e.g. data: digits)
        return [override.get_value_element_as_str()]
    return list(override.sweep_string_iterator())


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_sweep_experiments_compose_and_name_real_things(name):
    cfg = compose([f"experiment={name}"], return_hydra_config=True)
    params = {k: _choices(k, v) for k, v in cfg.hydra.sweeper.params.items()}
    size = 1
    for values in params.values():
        size *= len(values)
    assert size == SWEEPS[name]
    assert len(params["seed"]) >= 2
    known = set(available_models())
    for model in params.get("model.name", []):
        assert model in known, model
    for data in params.get("data", []):
        assert data in DATASETS, data
    # Every value of every axis validates.
    for key, values in params.items():
        for v in values:
            dc = to_config(compose([f"experiment={name}", f"{key}={v}"]))
            assert dc.name == name


def _multirun(sweep_dir, env):
    cmd = [
        sys.executable, "-m", "dsb.main", "-m", "experiment=sweep_dsb_probes_local",
        f"hydra.sweep.dir={sweep_dir}", "model.kwargs.widths=[8]", "train.total_steps=4",
        "train.log_every_steps=2", "data.batch_size=32", "optim.warmup_steps=1",
        "ckpt.async_save=false", "evals.dsb.num_samples=100", "evals.dsb.maxent_sets=[ics]",
        "evals.dsb.ot_sets=[mean_shift]", "figures=false",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow  # ~40 s: two multiruns of two jobs each, in subprocesses
def test_local_multirun_end_to_end_then_resume(tmp_path, tfds_dir):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TFDS_DATA_DIR": tfds_dir}
    sweep = tmp_path / "multirun"
    _multirun(sweep, env)
    df = collect(sweep)
    runs = df.drop_duplicates("run_dir").set_index(df.drop_duplicates("run_dir")["run_dir"])
    assert sorted(os.path.basename(r) for r in runs.index) == ["0", "1"]  # one dir per job
    assert set(runs["status"]) == {"finished"} and sorted(runs["seed"]) == [0, 1]
    assert set(runs["model.kwargs.widths"]) == {"[8]"}  # the command line beats the grid
    assert set(df["step"]) == {0, 1, 2, 4}
    probe = df["dsb/maxent/ics/accuracy"]
    assert probe.notna().sum() == 2 * 4 and probe.between(0, 1).all()  # 2 jobs x 4 ckpts
    # The two seeds really are different runs.
    last = df[df["step"] == 4].set_index("seed")
    assert last.loc[0, "train/loss"] != last.loc[1, "train/loss"]
    before = {r: load_checkpoint(r).state.params for r in runs.index}
    # Job 1 was preempted after its step-2 checkpoint: its step-4 checkpoint and summary
    # never got written.
    job1 = sweep / "1"
    shutil.rmtree(job1 / "checkpoints" / "4")
    (job1 / "summary.json").unlink()
    assert collect(job1)["status"].iloc[0] != "finished"
    # A requeued job reruns with the same overrides in the same sweep dir: job i gets
    # <sweep dir>/i again; the finished job 0 is left as it is (nothing trained or
    # written), job 1 resumes from its newest checkpoint there.
    out = _multirun(sweep, env)
    assert "(the run had already finished: nothing was trained or written)" in out
    assert "(resumed from checkpoint 2)" in out
    # The same table: job 1 finished again with the same metrics (timings aside).
    untimed = [c for c in df.columns if not c.startswith("time/") and "per_s" not in c]
    pd.testing.assert_frame_equal(collect(sweep)[untimed], df[untimed], rtol=1e-6)
    for r, params in before.items():
        after = load_checkpoint(r).state.params
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(after), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
