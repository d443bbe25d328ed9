"""Early stopping (dsb.early_stopping, train.early_stopping) and training on a subset of
the erased training split (data.train_indices)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from dsb_testing import tiny_config

from dsb.config import EarlyStoppingConfig
from dsb.early_stopping import EarlyStopping, cross_entropy_nats

K = 4


def _stopper(tmp_path, patience=2, min_delta=0.0, resume_step=0):
    rng = np.random.default_rng(0)
    data = {"image": rng.normal(size=(20, 3)).astype(np.float32), "label": rng.integers(0, K, 20)}
    np.save(tmp_path / "val.npy", np.arange(10, 20))
    np.save(tmp_path / "chunk.npy", np.arange(5, 10))
    cfg = EarlyStoppingConfig(
        val_indices=str(tmp_path / "val.npy"),
        patience=patience,
        min_delta=min_delta,
        report_indices={"chunk": str(tmp_path / "chunk.npy")},
    )
    return EarlyStopping(cfg, data, tmp_path, np.arange(5), resume_step), data


def _predict_with_loss(data, target_nats):
    """A predictor whose cross-entropy on every example is ``target_nats``: the true
    label gets logit a, the others 0, with log(1 + (K-1) e^-a) = target_nats."""
    a = -math.log((math.exp(target_nats) - 1) / (K - 1))
    lookup = {x.tobytes(): y for x, y in zip(data["image"], data["label"])}

    def predict(x):
        out = np.zeros((len(x), K))
        out[np.arange(len(x)), [lookup[r.tobytes()] for r in x]] = a
        return out

    return predict


def test_cross_entropy_uniform_logits_is_log_k_bits(tmp_path):
    stop, _ = _stopper(tmp_path)
    values = stop.evaluate(0, lambda x: np.zeros((len(x), K)))
    assert values["early_stopping/chunk/sum_bits"] == pytest.approx(5 * math.log2(K))
    assert values["early_stopping/val/loss"] == pytest.approx(math.log(K))
    np.testing.assert_allclose(cross_entropy_nats(np.zeros((3, K)), [0, 1, 2]), math.log(K))


def test_patience_min_delta_best_and_resume(tmp_path):
    stop, data = _stopper(tmp_path, patience=2, min_delta=0.01)
    losses = [1.0, 0.5, 0.495, 0.6, 0.4]  # 0.495: not an improvement by min_delta
    stopped_at = None
    for i, loss in enumerate(losses):
        stop.evaluate(10 * i, _predict_with_loss(data, loss))
        if stop.stopped:
            stopped_at = 10 * i
            break
    assert stopped_at == 30 and stop.best["step"] == 10
    rec = json.loads((tmp_path / "early_stopping.json").read_text())
    assert rec["best_step"] == 10 and rec["stopped"]
    assert rec["best"]["chunk/sum_bits"] == pytest.approx(5 * 0.5 / math.log(2))
    # Resuming from step 20 keeps the evaluations before it (they are redone from 20 on).
    resumed, _ = _stopper(tmp_path, patience=2, min_delta=0.01, resume_step=20)
    assert [h["step"] for h in resumed.history] == [0, 10] and not resumed.stopped


def test_validation_must_be_held_out(tmp_path):
    np.save(tmp_path / "val.npy", np.arange(3))
    data = {"image": np.zeros((5, 2), np.float32), "label": np.zeros(5, int)}
    cfg = EarlyStoppingConfig(val_indices=str(tmp_path / "val.npy"))
    with pytest.raises(ValueError, match="overlaps"):
        EarlyStopping(cfg, data, tmp_path, np.arange(2, 4))
    np.save(tmp_path / "bad.npy", np.array([0, 9]))
    with pytest.raises(ValueError, match="must lie in"):
        EarlyStopping(
            EarlyStoppingConfig(val_indices=str(tmp_path / "bad.npy")), data, tmp_path, None
        )


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("train.early_stopping.patience=0", "patience"),
        ("train.early_stopping.min_delta=-1", "min_delta"),
        ("+train.early_stopping.report_indices.a=x.npy", "needs val_indices"),
        ("mdl.num_chunks=1", "num_chunks"),
        ("mdl.val_fraction=1.0", "val_fraction"),
        ("mdl.validation=both", "holdout or strict"),
        ("mdl.first_chunk=1 mdl.validation=strict", "first_chunk"),
    ],
)
def test_config_validation(override, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(*override.split())


@pytest.mark.usefixtures("tfds_dir", "one_blas_thread")
def test_train_stops_early_on_a_subset_of_the_erased_split(tmp_path):
    """A run on 64 examples of the LEACE-erased split stops before total_steps; its
    sampler sees only those examples, erased with the maps fitted on the whole split."""
    from dsb.run_context import RunContext
    from dsb.train import train

    np.save(tmp_path / "train.npy", np.arange(64))
    np.save(tmp_path / "val.npy", np.arange(64, 128))
    cfg = tiny_config(
        "data.erasure=leace",
        f"data.train_indices={tmp_path / 'train.npy'}",
        f"train.early_stopping.val_indices={tmp_path / 'val.npy'}",
        "train.early_stopping.patience=2",
        "optim.learning_rate=0.1",
        "ckpt.log_spaced=false",
        "ckpt.every_steps=20",
        "train.total_steps=600",
        "figures=false",
    )
    result = train(cfg, tmp_path / "run")
    assert result.final_step < 600
    es = json.loads((tmp_path / "run" / "early_stopping.json").read_text())
    assert es["stopped"] and result.final_step == es["history"][-1]["step"]
    ctx = RunContext(cfg, tmp_path / "run", write_reports=False)
    full = RunContext(tiny_config("data.erasure=leace"), tmp_path / "x", write_reports=False)
    np.testing.assert_array_equal(ctx.train_data["image"], full.full_train_data["image"][:64])
    assert ctx.sampler().n == 64
