"""Prequential MDL (dsb.mdl): the chunk schedule, the code-length bookkeeping, the two
ground truths (random labels ~ log2 K, a trivially learnable split ~ the first chunk's
uniform code only), and resuming a killed MDL sweep without retraining finished prefixes."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from dsb_testing import tiny_config

from dsb.mdl import chunk_bounds, mdl_from_chunks, run_mdl

pytestmark = pytest.mark.usefixtures("tfds_dir", "one_blas_thread")

K = 10
LOG2K = math.log2(K)

# A small sweep: 4 chunks of the 1440 coded digits (160 held out), a 32-unit MLP,
# evaluation every 10 steps, patience 3, at most 200 steps per prefix.
SMALL = [
    "model.kwargs.widths=[32]",
    "data.batch_size=64",
    "optim.schedule=constant",
    "optim.warmup_steps=0",
    "optim.learning_rate=3e-3",
    "ckpt.log_spaced=false",
    "ckpt.every_steps=10",
    "train.total_steps=200",
    "train.log_every_steps=10",
    "train.early_stopping.patience=3",
    "logging.tensorboard=false",
    "figures=false",
    "mdl.num_chunks=4",
    "mdl.first_chunk=32",
]


def _patch_split(monkeypatch, relabel):
    """Make the trainer read digits/train through ``relabel(image, label) -> (image,
    label)`` (every other split unchanged)."""
    import dsb.data.pipeline as pipeline

    real = pipeline.load_split

    def load(name, split, data_dir=None):
        d = real(name, split, data_dir)
        if split != "train":
            return d
        image, label = relabel(d["image"].copy(), d["label"].copy())
        return {"image": image, "label": label.astype(np.int32)}

    monkeypatch.setattr(pipeline, "load_split", load)


def test_chunk_bounds_log_spaced():
    b = chunk_bounds(1440, 10, 16)
    assert b[0] == 0 and b[1] == 16 and b[-1] == 1440 and len(b) == 11
    assert all(x < y for x, y in itertools.pairwise(b))
    ratios = np.diff(np.log(b[1:]))
    np.testing.assert_allclose(ratios, math.log(1440 / 16) / 9, atol=0.05)  # log-spaced
    with pytest.raises(ValueError, match="distinct log-spaced"):
        chunk_bounds(20, 10, 16)
    with pytest.raises(ValueError, match="first_chunk"):
        chunk_bounds(20, 3, 20)


def test_chunk_sum_equals_total_and_uniform_first_chunk():
    bounds = [0, 10, 30, 100]
    r = mdl_from_chunks(bounds, [20.0, 35.0], K)
    assert r.chunk_bits[0] == pytest.approx(10 * LOG2K)  # uniform code, bits
    assert r.total_bits == pytest.approx(sum(r.chunk_bits))
    assert r.mdl_bits_per_sample == pytest.approx((10 * LOG2K + 55.0) / 100)
    with pytest.raises(ValueError, match="coded lengths"):
        mdl_from_chunks(bounds, [1.0], K)


def test_random_labels_cost_log2k(monkeypatch, tmp_path):
    """Labels drawn uniformly at random, independent of the images: no model can code
    them in fewer than log2 K bits on average (the cross-entropy of any predictor
    independent of the labels is >= the label entropy, log2 K), so MDL >= log2 K up to
    the sampling noise of 1440 labels (sd of the mean code length ~ 0.01 bit; tolerance
    0.05). Early stopping keeps each prefix model near its initial, almost uniform
    prediction, so MDL <= log2 K + 0.1 (measured: log2 K + 0.036)."""
    rng = np.random.default_rng(0)
    _patch_split(monkeypatch, lambda x, y: (x, rng.integers(0, K, len(y))))
    r = run_mdl(tiny_config(*SMALL), tmp_path)
    assert LOG2K - 0.05 <= r.mdl_bits_per_sample <= LOG2K + 0.1, r
    assert r.total_bits == pytest.approx(sum(r.chunk_bits))
    rec = json.loads((tmp_path / "mdl.json").read_text())
    assert rec["total_bits"] == pytest.approx(sum(rec["chunk_bits"]))
    assert rec["mdl_bits_per_sample"] == pytest.approx(rec["total_bits"] / rec["num_coded"])


def test_trivially_learnable_approaches_uniform_first_chunk(monkeypatch, tmp_path):
    """Images that are the one-hot label (pixel y on, the rest off): a model trained on
    32 examples already predicts every label, so every coded chunk costs almost nothing
    and MDL is the uniform first chunk, 32 log2 K / 1440 = 0.074 bits/sample, plus at
    most 0.05 (measured: 0.017 more)."""

    def onehot(x, y):
        x = np.zeros_like(x).reshape(len(y), -1)
        x[np.arange(len(y)), y] = 1.0
        return x.reshape(-1, 8, 8, 1), y

    _patch_split(monkeypatch, onehot)
    r = run_mdl(tiny_config(*SMALL), tmp_path)
    first = 32 * LOG2K / 1440
    assert first <= r.mdl_bits_per_sample <= first + 0.05, r


@pytest.mark.slow  # ~60 s: nine prefix trainings
def test_killed_sweep_resumes_without_retraining(monkeypatch, tmp_path):
    """An exception after prefix 1 (the second) kills the sweep; the rerun trains only
    prefix 2, leaves prefixes 0-1's files untouched and gives the uninterrupted MDL."""
    import dsb.train

    cfg = tiny_config(*SMALL)
    trained = []
    real_train = dsb.train.train

    def counting_train(c, run_dir):
        trained.append(str(run_dir))
        return real_train(c, run_dir)

    monkeypatch.setattr(dsb.train, "train", counting_train)

    def kill(j):
        if j == 1:
            raise KeyboardInterrupt("simulated kill after prefix 1")

    with pytest.raises(KeyboardInterrupt):
        run_mdl(cfg, tmp_path / "mdl", after_prefix=kill)
    assert len(trained) == 2
    done = [tmp_path / "mdl" / f"prefix_{j}" for j in (0, 1)]
    mtimes = {p: p.stat().st_mtime_ns for d in done for p in d.rglob("*") if p.is_file()}
    assert not (tmp_path / "mdl" / "mdl.json").exists()
    trained.clear()
    resumed = run_mdl(cfg, tmp_path / "mdl")
    assert [t.rsplit("/", 1)[1] for t in trained] == ["prefix_2"]
    assert mtimes == {p: p.stat().st_mtime_ns for d in done for p in d.rglob("*") if p.is_file()}
    fresh = run_mdl(cfg, tmp_path / "fresh")
    assert resumed.chunk_bits == pytest.approx(fresh.chunk_bits, rel=1e-6)


def test_chunk_coded_by_best_validation_model_on_erased_data(tmp_path):
    """Each prefix run trains on exactly the chunks before the coded one, and the coded
    chunk's length is the cross-entropy (bits) of the checkpoint with the lowest
    validation loss (read independently from metrics.jsonl), on the chunk's examples
    erased with the same LEACE maps as the training examples (one stats hash)."""
    from dsb.analysis import OpenRun
    from dsb.early_stopping import cross_entropy_nats

    small = [o for o in SMALL if not o.startswith("mdl.num_chunks")]
    cfg = tiny_config(*small, "mdl.num_chunks=3", "data.erasure=leace", "ckpt.keep_interval=1000")
    r = run_mdl(cfg, tmp_path)
    table = np.load(tmp_path / "mdl_code_lengths.npy")
    hashes = set()
    for j in range(len(r.bounds) - 2):
        d = tmp_path / f"prefix_{j}"
        train_idx = np.load(d / "train_indices.npy")
        chunk_idx = np.load(d / "next_chunk_indices.npy")
        assert len(train_idx) == r.bounds[j + 1] and len(chunk_idx) == np.diff(r.bounds)[j + 1]
        assert not np.intersect1d(train_idx, chunk_idx).size
        assert not np.intersect1d(train_idx, np.load(d / "val_indices.npy")).size
        val = {}
        for line in (d / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if "early_stopping/val/loss" in rec:
                val[rec["step"]] = rec["early_stopping/val/loss"]
        best = min(val, key=lambda s: (val[s], s))
        marker = json.loads((d / "mdl_prefix.json").read_text())
        assert marker["best_step"] == best
        with OpenRun(d) as run:
            restored = run.restore(best)
            data = run.context.full_train_data  # the erased split, fitted on all of it
            logits = run.predict()(
                restored.state.params, restored.state.rest, data["image"][chunk_idx]
            )
        per_example = cross_entropy_nats(logits, data["label"][chunk_idx]) / math.log(2)
        # The saved per-example code lengths are those of the best-validation model.
        np.testing.assert_array_equal(table["index"][table["chunk"] == j + 1], chunk_idx)
        np.testing.assert_allclose(table["bits"][table["chunk"] == j + 1], per_example, rtol=1e-5)
        bits = per_example.sum()
        assert marker["code_bits"] == pytest.approx(bits, rel=1e-5)
        assert r.chunk_bits[j + 1] == pytest.approx(bits, rel=1e-5)
        hashes.add(json.loads((d / "erasure.json").read_text())["stats_hash"])
    assert len(hashes) == 1
