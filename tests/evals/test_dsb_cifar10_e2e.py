"""The paper's CIFAR-10 recipe (experiment=dsb_cifar10) end to end on CIFAR-shaped mock data.

``tfds.testing.mock_data`` serves random 32x32x3 images through the same
``tfds.data_source`` path a prepared cifar10 takes. The FULL probe list runs (every max-ent
set, box3 included, and every OT edit) at d = 3072 with a tiny ResNet, a few steps and tiny
probe sets (the Gaussian OT edit costs two 3072 x 3072 eighs per (s, t) pair, ~10 s each
on a loaded CPU core, so 4 source images keep it to a few pairs). Two jobs of a sweep share
the probe-set cache under ``data.data_dir``: the second loads every set the first built.
"""

import json

import pytest
import tensorflow_datasets as tfds
from dsb_testing import compose

from dsb.config import to_config
from dsb.evals.dsb_probes import CACHE_SUBDIR, MOMENTS_FILE
from dsb.metrics import read_metrics
from dsb.train import train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_blas_thread")]

MAXENT = ["ics", "box1", "gaussian", "box2", "box3"]
OT = ["cqn", "mean_shift", "gaussian"]


def _cfg(data_dir, seed):
    return to_config(
        compose(
            [
                "experiment=dsb_cifar10",
                f"data.data_dir={data_dir}",
                f"seed={seed}",
                "model.kwargs.width=8",
                "data.batch_size=16",
                "train.total_steps=4",
                "train.eval_batch_size=64",
                "train.progress_bar=false",
                "optim.warmup_steps=2",
                "ckpt.async_save=false",
                "evals.dsb.num_samples=4",
                "+evals.dsb.particle_steps=20",
            ]
        )
    )


def test_dsb_cifar10_recipe_end_to_end_with_shared_probe_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("DSB_PROBE_CACHE", raising=False)
    data_dir = tmp_path / "tfds"
    cfg = _cfg(data_dir, seed=0)
    # The recipe's full probe list, unchanged by the overrides.
    assert list(cfg.evals["dsb"]["maxent_sets"]) == MAXENT
    assert list(cfg.evals["dsb"]["ot_sets"]) == OT
    assert cfg.evals["dsb"]["cache_dir"] == "data_dir"
    with tfds.testing.mock_data(num_examples=48):
        train(cfg, tmp_path / "job0")
        train(_cfg(data_dir, seed=1), tmp_path / "job1")
    records = read_metrics(tmp_path / "job0")
    evals = [r for r in records if "val/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 1, 2, 4]
    for r in evals:
        for s in MAXENT:
            assert 0 <= r[f"dsb/maxent/{s}/accuracy"] <= 1 and r[f"dsb/maxent/{s}/loss"] > 0
        for s in OT:
            for m in ("target_accuracy", "source_accuracy", "loss", "source_loss"):
                assert f"dsb/ot/{s}/{m}" in r
    shared = data_dir / CACHE_SUBDIR
    assert len(list(shared.glob("maxent-*.npz")) + list(shared.glob("ot-*.npz"))) == len(
        MAXENT
    ) + len(OT)
    assert len(list(shared.glob("classstats-*.npz"))) == 1  # fitted once, loaded by job1
    first = json.loads((tmp_path / "job0" / MOMENTS_FILE).read_text())
    second = json.loads((tmp_path / "job1" / MOMENTS_FILE).read_text())
    assert first["stats_hash"] == second["stats_hash"]
    for group in ("maxent", "ot"):
        assert not any(v["cached"] for v in first[group].values())
        assert all(v["cached"] for v in second[group].values())  # built once per sweep
