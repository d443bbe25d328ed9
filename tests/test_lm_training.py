"""Language models go through the same trainer, checkpoints and evaluators as images."""

import numpy as np
from dsb_testing import TINY_LM, tiny_config

from dsb.analysis import load_checkpoint
from dsb.metrics import read_metrics
from dsb.train import train


def test_transformer_trains_on_the_default_corpus_with_ngram_probes(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # corpus cache under a temp home
    cfg = tiny_config(*TINY_LM, "train.total_steps=16")
    assert cfg.data.name == "text" and cfg.model.name == "transformer"
    train(cfg, tmp_path / "run")
    records = read_metrics(tmp_path / "run")
    evals = [r for r in records if "ngram/unigram/loss" in r]
    assert [r["step"] for r in evals] == [0, 1, 2, 4, 8, 16]
    # Byte-level: 256 classes, so the untrained loss is about ln 256 and training lowers it.
    assert abs(evals[0]["ngram/text/loss"] - np.log(256)) < 0.3
    assert evals[-1]["ngram/text/loss"] < evals[0]["ngram/text/loss"] - 0.3
    for name in ("unigram", "bigram", "trigram"):
        assert evals[-1][f"ngram/entropy/{name}"] > 0 and f"ngram/kl/{name}" in evals[-1]
    assert (tmp_path / "run" / "figures" / "ngram_probes.png").stat().st_size > 10_000
    restored = load_checkpoint(tmp_path / "run")
    tokens = np.zeros((2, 32), np.int32)
    assert restored.model(tokens).shape == (2, 32, 256)
