"""n-gram statistics against ground truth: a Markov chain with a known transition matrix,
closed-form KLs, and an alignment case where an off-by-one gives a different answer."""

import numpy as np
import pytest
from dsb_testing import sample_markov_chain as sample_chain
from dsb_testing import stationary as _stationary
from scipy import stats

from dsb.lm.ngram import (
    NgramModel,
    bootstrap_ci,
    cached_ngram_sets,
    js_to_ngram,
    kl_to_ngram,
    sequence_cross_entropy,
)

# Asymmetric rows: normalising over the wrong axis (columns) gives a different matrix.
P = np.array(
    [
        [0.05, 0.70, 0.15, 0.10],
        [0.40, 0.10, 0.10, 0.40],
        [0.30, 0.30, 0.30, 0.10],
        [0.60, 0.05, 0.05, 0.30],
    ]
)


@pytest.fixture(scope="module")
def chain_model():
    x = sample_chain(P, 200_000, seed=0)
    return x, NgramModel.fit(x, vocab_size=4, max_order=3)


def test_bigram_estimator_recovers_the_transition_matrix(chain_model):
    _, model = chain_model
    est = model.tables[2].probs.toarray()
    np.testing.assert_allclose(est.sum(axis=1), 1.0)
    np.testing.assert_allclose(est, P, atol=0.01)
    np.testing.assert_allclose(model.tables[1].probs.toarray()[0], _stationary(P), atol=0.01)
    assert model.tables[3].counts.shape == (16, 4)


def test_entropy_floors_match_closed_form(chain_model):
    _, model = chain_model
    pi = _stationary(P)
    h1 = -(pi * np.log(pi)).sum()
    rate = -(pi[:, None] * P * np.log(P)).sum()
    assert model.entropy(1) == pytest.approx(h1, abs=5e-3)
    assert model.entropy(2) == pytest.approx(rate, abs=5e-3)
    # a first-order chain: conditioning on one more token buys (almost) nothing
    assert model.entropy(3) == pytest.approx(model.entropy(2), abs=5e-3)


def test_bigram_samples_pass_chi_square(chain_model):
    _, model = chain_model
    tokens, floor = model.sample(2000, 40, order=2, seed=1)
    est = model.tables[2].probs.toarray()
    pairs = np.stack([tokens[:, :-1].ravel(), tokens[:, 1:].ravel()], 1)
    counts = np.zeros((4, 4))
    np.add.at(counts, (pairs[:, 0], pairs[:, 1]), 1)
    chi2 = sum(stats.chisquare(counts[a], counts[a].sum() * est[a])[0] for a in range(4))
    assert stats.chi2.sf(chi2, df=4 * 3) > 1e-3
    first = np.bincount(tokens[:, 0], minlength=4)
    p1 = model.tables[1].probs.toarray()[0]
    assert stats.chisquare(first, first.sum() * p1).pvalue > 1e-3
    # the floor at every position is the entropy of the row the next token came from
    rows = model.tables[2].rows(tokens[:, :-1].reshape(-1, 1))
    np.testing.assert_allclose(floor.ravel(), model.tables[2].row_entropy[rows])
    assert floor.mean() == pytest.approx(model.entropy(2), abs=0.02)


def test_unigram_samples_are_iid():
    x = sample_chain(P, 50_000, seed=5)
    model = NgramModel.fit(x, vocab_size=4, max_order=2)
    tokens, floor = model.sample(1000, 20, order=1, seed=0)
    pairs = np.zeros((4, 4))
    np.add.at(pairs, (tokens[:, :-1].ravel(), tokens[:, 1:].ravel()), 1)
    assert stats.chi2_contingency(pairs).pvalue > 1e-3  # independent successive tokens
    np.testing.assert_allclose(floor, model.entropy(1))
    # identically distributed as the unigram table, at every position and overall
    p1 = model.tables[1].probs.toarray()[0]
    np.testing.assert_allclose(p1, _stationary(P), atol=0.02)
    counts = np.bincount(tokens.ravel(), minlength=4)
    assert stats.chisquare(counts, counts.sum() * p1).pvalue > 1e-3
    by_pos = np.stack([np.bincount(tokens[:, t], minlength=4) for t in range(20)])
    chi2 = ((by_pos - 1000 * p1) ** 2 / (1000 * p1)).sum()
    assert stats.chi2.sf(chi2, df=20 * 3) > 1e-3


def test_trigram_sampler_backs_off_at_the_start_and_follows_second_order_rows():
    rng = np.random.default_rng(0)
    p2 = rng.dirichlet(np.ones(3) * 0.7, size=(3, 3))  # P(x_t | x_{t-2}, x_{t-1})
    x = [0, 1]
    u = rng.random(100_000)
    for t in range(len(u)):
        x.append(min(np.searchsorted(np.cumsum(p2[x[-2], x[-1]]), u[t], side="right"), 2))
    model = NgramModel.fit(np.array(x), vocab_size=3, max_order=3)
    tokens, floor = model.sample(3000, 12, order=3, seed=2)
    est3 = model.tables[3].probs.toarray()
    trip = np.stack([tokens[:, :-2].ravel(), tokens[:, 1:-1].ravel(), tokens[:, 2:].ravel()], 1)
    chi2, df = 0.0, 0
    for r, key in enumerate(model.tables[3].context_keys):
        a, b = divmod(int(key), 3)
        obs = np.bincount(trip[(trip[:, 0] == a) & (trip[:, 1] == b), 2], minlength=3)
        keep = est3[r] > 0
        chi2 += stats.chisquare(obs[keep], obs.sum() * est3[r][keep])[0]
        df += keep.sum() - 1
    assert stats.chi2.sf(chi2, df) > 1e-3
    # position 1 comes from the bigram table (the context is one token long)
    second = np.zeros((3, 3))
    np.add.at(second, (tokens[:, 0], tokens[:, 1]), 1)
    est2 = model.tables[2].probs.toarray()
    chi2 = sum(stats.chisquare(second[a], second[a].sum() * est2[a])[0] for a in range(3))
    assert stats.chi2.sf(chi2, 6) > 1e-3
    rows2 = model.tables[2].rows(tokens[:, :1])
    np.testing.assert_allclose(floor[:, 0], model.tables[2].row_entropy[rows2])


def test_kl_against_closed_form():
    # corpus 0 1 0 2 repeated: p1 = (1/2, 1/4, 1/4); after 0 -> 1 or 2 (1/2 each); 1, 2 -> 0
    corpus = np.tile([0, 1, 0, 2], 50)
    model = NgramModel.fit(corpus, vocab_size=3, max_order=2)
    q = np.array([0.2, 0.3, 0.5])
    val = np.array([[0, 1, 0, 2, 0, 1]])
    logits = np.broadcast_to(np.log(q) + 7.0, (1, 6, 3))  # softmax is shift invariant
    p1 = np.array([0.5, 0.25, 0.25])
    kl1 = (p1 * np.log(p1 / q)).sum()
    np.testing.assert_allclose(kl_to_ngram(model, val, logits, 1), kl1, rtol=1e-10)
    after0 = 0.5 * np.log(0.5 / 0.3) + 0.5 * np.log(0.5 / 0.5)
    after12 = np.log(1 / 0.2)
    expected = [after0, after12, after0, after12, after0, after12]
    np.testing.assert_allclose(kl_to_ngram(model, val, logits, 2)[0], expected, rtol=1e-10)


def test_js_against_scipy_with_back_off():
    from scipy.spatial.distance import jensenshannon

    # corpus 0 1 0 2 repeated; context 3 never occurs: the bigram KL/JS back off to p1
    corpus = np.tile([0, 1, 0, 2], 50)
    model = NgramModel.fit(corpus, vocab_size=4, max_order=2)
    rng = np.random.default_rng(0)
    val = np.array([[0, 1, 3, 2, 0, 3]])
    logits = rng.normal(size=(1, 6, 4))
    q = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    p1 = np.array([0.5, 0.25, 0.25, 0.0])
    rows = {0: [0, 0.5, 0.5, 0], 1: [1.0, 0, 0, 0], 2: [1.0, 0, 0, 0], 3: p1}
    for order, truth in ((1, [p1] * 6), (2, [rows[int(x)] for x in val[0]])):
        expected = [jensenshannon(p, q[0, t]) ** 2 for t, p in enumerate(truth)]
        js = js_to_ngram(model, val, logits, order, chunk=4)
        np.testing.assert_allclose(js[0], expected, rtol=1e-10, atol=1e-14)
        assert (js <= np.log(2)).all()
    # identical distributions: JS = 0; disjoint supports: JS = log 2
    exact = np.log(np.array([rows[int(x)] for x in val[0]]) + 1e-300)[None]
    assert js_to_ngram(model, val, exact, 2, normalized=True).max() < 1e-12
    disjoint = np.log(np.where(np.array(rows[1]) > 0, 1e-300, 1.0))[None, None]
    val0 = np.array([[1]])
    assert js_to_ngram(model, val0, disjoint, 2)[0, 0] == pytest.approx(np.log(2))


def _fib_mod5(start, length):
    x = list(start)
    while len(x) < length:
        x.append((x[-1] + x[-2]) % 5)
    return np.array(x)


def test_context_alignment_no_off_by_one():
    """x_{t+1} = x_t + x_{t-1} mod 5: deterministic given two tokens, not given one.

    An oracle whose logits at position t point at (x_t + x_{t-1}) mod 5 has trigram KL ~ 0 at
    every t >= 1 and cross-entropy ~ 0; shifting its logits by one position, or taking the
    n-gram context one token early or late, makes both large."""
    train = np.stack([_fib_mod5((a, b), 40) for a in range(5) for b in range(5)])
    model = NgramModel.fit(train, vocab_size=5, max_order=3)
    val = np.stack([_fib_mod5((1, 3), 24), _fib_mod5((4, 4), 24)])
    target = (val + np.roll(val, 1, axis=1)) % 5  # index t: x_t + x_{t-1} (t >= 1)
    logits = 40.0 * np.eye(5)[target]
    kl3 = kl_to_ngram(model, val, logits, 3)
    assert kl3[:, 1:].max() < 1e-9
    ce = sequence_cross_entropy(logits, val)
    assert ce[:, 1:].max() < 1e-9
    # (off by one agrees with the truth only where x_{t-1} = 0: a minority of positions)
    late = kl_to_ngram(model, val, np.roll(logits, 1, axis=1), 3)[:, 2:]
    assert (late > 1.0).mean() > 0.7
    early = sequence_cross_entropy(np.roll(logits, -1, axis=1), val)[:, 1:-1]
    assert (early > 1.0).mean() > 0.7
    # bigram context (x_t alone) cannot predict: KL2 of the oracle is clearly positive
    assert kl_to_ngram(model, val, logits, 2)[:, 1:].mean() > 0.3
    # the n-gram conditional at position t is the one of tokens (t-1, t), not (t, t+1)
    p = model.conditional(val[:, 4:6], 3)
    np.testing.assert_array_equal(p.argmax(axis=1), val[:, 6])


def test_unseen_context_backs_off():
    model = NgramModel.fit(np.array([0, 1, 2, 0, 1, 2, 0]), vocab_size=4, max_order=3)
    used, _ = model.lookup(np.array([[0, 1], [2, 1], [3, 3]]), 3)
    np.testing.assert_array_equal(used, [3, 2, 1])
    p = model.conditional(np.array([[0, 1], [2, 1], [3, 3]]), 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[1], [0, 0, 1, 0])
    np.testing.assert_allclose(p[2], [3 / 7, 2 / 7, 2 / 7, 0])


def test_sets_are_fixed_and_cached(chain_model, tmp_path, monkeypatch):
    _, model = chain_model
    path = tmp_path / "s.npz"
    a = cached_ngram_sets(model, [1, 2, 3], 16, 10, seed=0, cache_path=path)
    assert path.exists()
    c = cached_ngram_sets(model, [1, 2, 3], 16, 10, seed=0)  # fixed: no cache, same sets
    # the second call with the same key reads the file: it must not sample at all
    calls = []
    monkeypatch.setattr(model, "sample", lambda *a, **k: calls.append(a) or 1 / 0)
    b = cached_ngram_sets(model, [1, 2, 3], 16, 10, seed=0, cache_path=path)
    assert calls == []
    for n in (1, 2, 3):
        np.testing.assert_array_equal(a[n][0], b[n][0])
        np.testing.assert_array_equal(a[n][1], b[n][1])
        np.testing.assert_array_equal(a[n][0], c[n][0])
    # another key (seed) is not served from the stale file
    with pytest.raises(ZeroDivisionError):
        cached_ngram_sets(model, [1, 2, 3], 16, 10, seed=1, cache_path=path)
    monkeypatch.undo()
    assert not np.array_equal(a[2][0], cached_ngram_sets(model, [2], 16, 10, seed=1)[2][0])


def test_bootstrap_ci_matches_normal_theory():
    v = np.random.default_rng(0).normal(1.0, 2.0, size=400)
    lo, hi = bootstrap_ci(v, num_resamples=4000)
    half = 1.96 * v.std() / np.sqrt(len(v))
    assert lo < v.mean() < hi
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)


def test_markov_helpers_closed_forms():
    from dsb_testing import entropy_rate, random_transition_matrix, stationary

    pi = stationary(P)
    np.testing.assert_allclose(pi @ P, pi, atol=1e-12)
    two = np.array([[0.0, 1.0], [0.5, 0.5]])  # pi = (1/3, 2/3), rate = 2/3 log 2
    np.testing.assert_allclose(stationary(two), [1 / 3, 2 / 3])
    assert entropy_rate(two) == pytest.approx(2 / 3 * np.log(2))
    q = random_transition_matrix(5, 0.5, seed=0)
    np.testing.assert_allclose(q.sum(axis=1), 1.0)


def _reference_conditional(train_NxT, vocab, context, order):
    """P(next | context) by direct counting with plain dicts, backing off to the longest
    suffix of ``context`` (at most ``order - 1`` tokens) seen in training; independent of
    ``NgramModel``'s packed keys, tables and lookup."""
    from collections import Counter

    ctx = tuple(int(c) for c in context)[max(0, len(context) - (order - 1)) :] if order > 1 else ()
    while True:
        k = len(ctx)
        counts = Counter(
            int(row[i + k])
            for row in train_NxT
            for i in range(len(row) - k)
            if tuple(int(c) for c in row[i : i + k]) == ctx
        )
        if counts:
            p = np.zeros(vocab)
            for v, c in counts.items():
                p[v] = c
            return p / p.sum()
        ctx = ctx[1:]  # drop the oldest token


def test_sparse_kl_equals_dense_reference_with_back_off():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 12, size=(10, 12))
    model = NgramModel.fit(train, vocab_size=12, max_order=3)
    val = rng.integers(0, 12, size=(5, 9))  # many trigram contexts are unseen: back-off
    logits = rng.normal(size=(5, 9, 12)) * 2
    logq = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    for order in (1, 2, 3):
        dense = np.zeros((5, 9))
        for i in range(5):
            for t in range(9):
                p = _reference_conditional(train, 12, val[i, : t + 1], order)
                nz = p > 0
                dense[i, t] = (p[nz] * (np.log(p[nz]) - logq[i, t, nz])).sum()
        np.testing.assert_allclose(kl_to_ngram(model, val, logits, order), dense, atol=1e-12)
    used, _ = model.lookup(np.stack([val[:, :-1].ravel(), val[:, 1:].ravel()], 1), 3)
    assert (used < 3).any() and (used == 3).any()
    # some trigram contexts back off to a seen bigram, others all the way to the unigram
    assert set(np.unique(used)) >= {2, 3}


def test_one_hot_embedding_moments_are_the_ngram_tables(chain_model):
    """One-hot embeddings: E[e(x_t)] = p1 and E[e(x_t) e(x_{t+1})'] = the joint bigram table."""
    from dsb.lm.ngram import one_hot_moments

    x, model = chain_model
    mean, cross = one_hot_moments(x, 4, chunk=7919)  # a chunk that does not divide N
    np.testing.assert_allclose(mean, model.joint(1), atol=1e-12)
    np.testing.assert_allclose(cross, model.joint(2), atol=1e-12)
    # the joint is row-normalised to the transition matrix and sums to one overall
    np.testing.assert_allclose(cross.sum(), 1.0)
    np.testing.assert_allclose(cross / cross.sum(1, keepdims=True), model.tables[2].probs.toarray())
    np.testing.assert_allclose(cross, _stationary(P)[:, None] * P, atol=0.01)  # pi_a P_ab
    assert not np.allclose(cross, cross.T, atol=0.01)  # order matters: (x_t, x_{t+1})
    # windows: no pair crosses a boundary, in both the moments and the table
    w = x[: 4000 * 5].reshape(4000, 5)
    wm = NgramModel.fit(w, 4, max_order=2)
    np.testing.assert_allclose(one_hot_moments(w, 4)[1], wm.joint(2), atol=1e-12)
    assert model.joint(3).shape == (4, 4, 4) and model.joint(3).sum() == pytest.approx(1.0)
