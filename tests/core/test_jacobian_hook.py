"""The training-Jacobian checkpoint hook replays the trainer's own run."""

from pathlib import Path

import numpy as np
import pytest
from dsb_testing import tiny_config

from dsb.metrics import read_metrics
from dsb.train import train


def test_jacobian_hook_replays_the_run_and_tracks_the_spectrum(tmp_path, tfds_dir):
    cfg = tiny_config(
        "experiment=jacobian_digits",
        "model.kwargs.widths=[8]",  # P = 64*8 + 8 + 8*10 + 10 = 610
        "train.total_steps=16",
        "evals.jac.when=[0,8,16]",
        "+evals.jac.num_bulk=100",
    )
    train(cfg, tmp_path / "run")
    recs = {r["step"]: r for r in read_metrics(tmp_path / "run") if "jac/sigma_1" in r}
    assert sorted(recs) == [0, 8, 16]
    for r in recs.values():
        assert r["jac/num_params"] == 610
        # The pure replay reproduces the trainer's parameters (same batches, optimizer).
        assert r["jac/replay_rel_error"] < 1e-5
    # At step 0 the Jacobian is the identity; training moves the spectrum off 1.
    assert recs[0]["jac/sigma_1"] == pytest.approx(1.0, abs=1e-6)
    assert recs[0]["jac/count_abs_s_minus_1_below_0.001"] == 610
    assert recs[16]["jac/sigma_1"] > 1.01
    assert recs[16]["jac/count_abs_s_minus_1_below_0.001"] < 610
    saved = np.load(tmp_path / "run" / "jacobian" / "step_16.npz")
    assert saved["s"].shape == (610,) and np.isclose(saved["s"][0], recs[16]["jac/sigma_1"])


def test_jacobian_hook_refuses_augmentation():
    cfg = tiny_config("experiment=jacobian_digits", "data.augment.crop_padding=1")
    from dsb.evals.base import EvalContext
    from dsb.evals.jacobian_probe import TrainingJacobianProbe

    ctx = EvalContext(
        load_split=lambda split: {},
        train_split="train",
        num_classes=10,
        input_shape=(8, 8, 1),
        run_dir=Path("unused"),
        seed=0,
        config=cfg,
        train_batch=lambda step: {},
    )
    with pytest.raises(ValueError, match="augmentation"):
        TrainingJacobianProbe(ctx)
