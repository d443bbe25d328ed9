"""End-to-end training: smoke run, NaN stop, checkpoint fallback, CPU restore, resume."""

import json
import logging
import shutil

import jax
import numpy as np
import pytest
from dsb_testing import HELD_OUT_ONLY, tiny_config

from dsb.analysis import load_checkpoint
from dsb.metrics import NonFiniteLossError, read_metrics
from dsb.train import train


def _params_close(a, b, rtol=0.0, atol=0.0):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_end_to_end_smoke(tmp_path, tfds_dir):
    cfg = tiny_config("train.total_steps=20")
    result = train(cfg, tmp_path / "run")
    run = tmp_path / "run"
    records = read_metrics(run)
    eval_steps = [r["step"] for r in records if "val/accuracy" in r]
    assert eval_steps == [0, 1, 2, 4, 8, 16, 20]
    assert all(0.0 <= r["val/accuracy"] <= 1.0 for r in records if "val/accuracy" in r)
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 4, 8, 12, 16, 20]
    # The model learns something in 20 steps on digits.
    assert records[-1]["val/accuracy"] > 0.4 > records[0]["val/accuracy"]
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir()) == eval_steps
    assert (run / "figures" / "curves.png").stat().st_size > 10_000
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((run / "summary.json").read_text())["final_step"] == 20
    assert result.resumed_from is None
    # Rerunning in the same directory resumes at the end and does no work.
    again = train(cfg, run)
    assert again.resumed_from == 20
    _params_close(again.state.params, result.state.params)
    assert [r["step"] for r in read_metrics(run)] == [r["step"] for r in records]


def test_evaluator_when_option(tmp_path, tfds_dir):
    cfg = tiny_config(
        "+evals.last={type: classification, split: train, when: last}",
        "+evals.some={type: classification, split: test, when: [2, 16]}",
    )
    train(cfg, tmp_path / "run")
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records if "last/accuracy" in r] == [16]
    assert [r["step"] for r in records if "some/accuracy" in r] == [2, 16]
    assert [r["step"] for r in records if "val/accuracy" in r] == [0, 1, 2, 4, 8, 16]


def test_nan_loss_stops_with_the_step(tmp_path, tfds_dir):
    cfg = tiny_config(
        "optim.name=sgd",
        "optim.learning_rate=1e30",
        "optim.schedule=constant",
        "optim.momentum=0.0",
        "ckpt.log_spaced=false",
    )
    with pytest.raises(NonFiniteLossError, match=r"at step \d+") as ei:
        train(cfg, tmp_path / "run")
    assert 1 <= ei.value.step <= 16
    # Nothing after the failure was checkpointed.
    assert sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()) == [0]


def test_corrupt_latest_checkpoint_falls_back_and_resume_matches(tmp_path, tfds_dir, caplog):
    cfg = tiny_config(*HELD_OUT_ONLY)
    full = train(cfg, tmp_path / "full")
    run = tmp_path / "run"
    shutil.copytree(tmp_path / "full", run)
    # Damage the newest checkpoint (step 16): truncate every array file in it.
    damaged = 0
    for f in (run / "checkpoints" / "16" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
            f.write_bytes(f.read_bytes()[:7])
            damaged += 1
    assert damaged
    with caplog.at_level(logging.WARNING, logger="dsb.checkpoint"):
        resumed = train(cfg, run)
    warned = [r.getMessage() for r in caplog.records if r.name == "dsb.checkpoint"]
    assert len(warned) == 1 and "checkpoint 16 is damaged" in warned[0], warned
    assert "\n" not in warned[0]
    assert resumed.resumed_from == 8
    _params_close(resumed.state.params, full.state.params)


def test_load_checkpoint_on_cpu_without_mesh(tmp_path, tfds_dir):
    cfg = tiny_config(*HELD_OUT_ONLY)
    result = train(cfg, tmp_path / "run")
    restored = load_checkpoint(tmp_path / "run")
    assert restored.step == 16 and restored.available_steps == [0, 1, 2, 4, 8, 16]
    _params_close(restored.state.params, result.state.params)
    early = load_checkpoint(tmp_path / "run", step=2)
    assert int(early.state.step) == 2 and early.meta["data"]["next_step"] == 2
    from dsb.data.digits import digits_arrays

    x, y = digits_arrays()["test"]
    logits = np.asarray(restored.model(x))
    acc = float((logits.argmax(-1) == y).mean())
    assert acc == pytest.approx(read_metrics(tmp_path / "run")[-1]["val/accuracy"])
    with pytest.raises(ValueError, match="no checkpoint at step 3"):
        load_checkpoint(tmp_path / "run", step=3)


def test_augmentation_is_per_example_and_deterministic():
    import jax.numpy as jnp

    from dsb.config import AugmentConfig
    from dsb.step import augment_batch

    x = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 4, 1) + 1
    aug = AugmentConfig(crop_padding=1, horizontal_flip=True)
    key = jax.random.key(0)
    a = augment_batch(x, key, jnp.arange(2), aug)
    b = augment_batch(x, key, jnp.arange(2), aug)
    np.testing.assert_array_equal(a, b)
    # Example i's augmentation depends only on its global id, not on its batch neighbours.
    c = augment_batch(x[1:], key, jnp.arange(1, 2), aug)
    np.testing.assert_array_equal(a[1:], c)
    # Crops are shifts of the padded image: every output pixel is 0 or an input pixel.
    assert set(np.unique(a)).issubset(set(np.unique(x)) | {0.0})
    outs = {augment_batch(x, jax.random.key(k), jnp.arange(2), aug).tobytes() for k in range(20)}
    assert len(outs) > 5
    assert augment_batch(x, key, jnp.arange(2), AugmentConfig()) is x
