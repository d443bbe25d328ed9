"""The n-gram probes' intervals (``dsb.evals.ngram_probes``), recomputed from their
definition: a percentile bootstrap of the mean over SEQUENCES (each resample draws whole
sequences with replacement, with the evaluator's seed and number of resamples), of the
per-sequence means of the loss, the KL and the JS divergence.

The model's quality varies from sequence to sequence (a per-sequence temperature), so
positions within a sequence are correlated: an interval bootstrapped over positions is
several times narrower than the one over sequences, and cannot pass for it.
"""

from __future__ import annotations

import numpy as np
import pytest
from dsb_testing import sample_markov_chain

from dsb.evals.base import EvalContext, Snapshot
from dsb.evals.ngram_probes import NgramProbes
from dsb.lm.ngram import NGRAM_NAMES, js_to_ngram, kl_to_ngram, log_softmax

P = np.array(
    [
        [0.05, 0.70, 0.15, 0.10],
        [0.40, 0.10, 0.10, 0.40],
        [0.30, 0.30, 0.30, 0.10],
        [0.60, 0.05, 0.05, 0.30],
    ]
)
T = 16
NUM_BOOTSTRAP, CONFIDENCE = 200, 0.9


def _ctx(tmp_path):
    train = sample_markov_chain(P, 20_000, seed=0)
    val = sample_markov_chain(P, 48 * T, seed=1)
    splits = {"train": {"tokens": train.reshape(-1, T)}, "val": {"tokens": val.reshape(-1, T)}}
    return EvalContext(
        load_split=lambda s: splits[s],
        train_split="train",
        num_classes=None,
        vocab_size=4,
        input_shape=(T,),
        run_dir=tmp_path,
        seed=0,
    )


def _predict(tokens):
    """The true chain's next-token log-probabilities at a per-sequence temperature in
    [0.3, 3] (a function of the sequence's first tokens: the same in every batch)."""
    tokens = np.asarray(tokens)
    temp = 0.3 + 2.7 * ((tokens[:, :4] * [1, 4, 16, 64]).sum(1) % 37) / 36
    return (np.log(P[tokens]) / temp[:, None, None]).astype(np.float32)


def _bootstrap_over_sequences(per_seq):
    """The percentile interval of the mean, resampling sequences (seed 0)."""
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(per_seq), size=(NUM_BOOTSTRAP, len(per_seq)))
    means = per_seq[idx].mean(axis=1)
    a = (1 - CONFIDENCE) / 2
    return tuple(np.quantile(means, [a, 1 - a]))


def test_divergence_and_loss_intervals_are_bootstrapped_over_sequences(tmp_path):
    probes = NgramProbes(
        _ctx(tmp_path),
        orders=[1, 2],
        num_sequences=40,
        num_bootstrap=NUM_BOOTSTRAP,
        confidence=CONFIDENCE,
        write_positions=False,
    )
    m = dict(probes.run(Snapshot(step=0, predict=_predict, graphdef=None, params=None, rest=None)))
    val = probes.val
    inputs = val[:, :-1]
    logq = log_softmax(_predict(inputs))
    ce = -np.take_along_axis(logq, val[:, 1:, None].astype(np.int64), axis=-1)[..., 0]
    checked = {}
    checked["text/loss"] = ce
    for n in (1, 2):
        name = NGRAM_NAMES[n]
        checked[f"kl/{name}"] = kl_to_ngram(probes.model, inputs, logq, n, normalized=True)
        checked[f"js/{name}"] = js_to_ngram(probes.model, inputs, logq, n, normalized=True)
        tokens, _ = probes.sets[n]
        lq = log_softmax(_predict(tokens[:, :-1]))
        checked[f"{name}/loss"] = -np.take_along_axis(
            lq, tokens[:, 1:, None].astype(np.int64), axis=-1
        )[..., 0]
    narrower = 0
    for key, per_pos in checked.items():
        assert per_pos.shape[1] == T - 1, key
        per_seq = per_pos.mean(axis=1)
        assert m[key] == pytest.approx(per_pos.mean(), rel=1e-6), key
        lo, hi = _bootstrap_over_sequences(per_seq)
        assert m[f"{key}_lo"] == pytest.approx(lo, rel=1e-6), (key, m[f"{key}_lo"], lo)
        assert m[f"{key}_hi"] == pytest.approx(hi, rel=1e-6), (key, m[f"{key}_hi"], hi)
        # What the test tells apart: the interval over positions is much narrower (for
        # most of them; the comparison above is the contract).
        rng = np.random.default_rng(0)
        flat = per_pos.ravel()
        idx = rng.integers(0, len(flat), size=(NUM_BOOTSTRAP, len(flat)))
        a = (1 - CONFIDENCE) / 2
        plo, phi = np.quantile(flat[idx].mean(axis=1), [a, 1 - a])
        narrower += (phi - plo) < 0.7 * (hi - lo)
    assert narrower >= 4, narrower
