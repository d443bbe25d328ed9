"""Suffix-array n-grams (dsb.lm.suffix, optional package tokengrams) against the exact
tables of dsb.lm.ngram, closed forms, and an order-8 process the tables could not hold
for a large vocabulary."""

import numpy as np
import pytest
from dsb_testing import sample_markov_chain
from scipy import stats

from dsb.lm import suffix
from dsb.lm.ngram import NgramModel, js_to_ngram, kl_to_ngram

P = np.array(
    [
        [0.05, 0.70, 0.15, 0.10],
        [0.40, 0.10, 0.10, 0.40],
        [0.30, 0.30, 0.30, 0.10],
        [0.60, 0.05, 0.05, 0.30],
    ]
)


def test_missing_package_gives_a_clear_error(monkeypatch):
    def missing(name):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(suffix.importlib, "import_module", missing)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[ngram\]'"):
        suffix.load_tokengrams()


@pytest.fixture(scope="module")
def tg():
    try:
        return suffix.load_tokengrams()
    except ImportError as e:
        pytest.skip(f"tokengrams not installed: {e}")


@pytest.fixture(scope="module")
def chain(tg):
    x = sample_markov_chain(P, 30_000, seed=0)
    return x, NgramModel.fit(x, 4, max_order=3), suffix.SuffixNgramModel(x, 4, max_order=3)


def test_conditionals_match_the_exact_tables_with_back_off(chain):
    _, exact, sa = chain
    # every bigram / trigram context, plus contexts cut short at the start (k < order - 1)
    ctx2 = np.arange(4)[:, None]
    ctx3 = np.stack(np.meshgrid(np.arange(4), np.arange(4), indexing="ij"), -1).reshape(-1, 2)
    for ctx, order in ((ctx2, 2), (ctx3, 3), (ctx2, 3), (np.zeros((3, 0), int), 1)):
        np.testing.assert_allclose(
            sa.conditional(ctx, order), exact.conditional(ctx, ctx.shape[1] + 1), atol=1e-12
        )
    # an unseen context backs off to the longest seen suffix, like NgramModel.lookup
    x = np.array([0, 1, 2, 0, 1, 2, 0])
    sa_small = suffix.SuffixNgramModel(x, 4, max_order=3)
    ex_small = NgramModel.fit(x, 4, max_order=3)
    ctx = np.array([[0, 1], [2, 1], [3, 3]])
    used, _ = sa_small.lookup_counts(ctx, 3)
    np.testing.assert_array_equal(used, [3, 2, 1])
    np.testing.assert_allclose(sa_small.conditional(ctx, 3), ex_small.conditional(ctx, 3))


def test_entropy_estimate_and_divergences_match_the_tables(chain):
    x, exact, sa = chain
    for n in (1, 2, 3):
        h = sa.entropy(n)  # Monte Carlo over 4096 positions: well inside 0.03 nats
        assert h == pytest.approx(exact.entropy(n), abs=0.03)
    rng = np.random.default_rng(1)
    val = x[:200].reshape(10, 20)
    logits = rng.normal(size=(10, 20, 4))
    for order in (1, 2, 3):
        np.testing.assert_allclose(
            kl_to_ngram(sa, val, logits, order), kl_to_ngram(exact, val, logits, order), atol=1e-10
        )
        np.testing.assert_allclose(
            js_to_ngram(sa, val, logits, order), js_to_ngram(exact, val, logits, order), atol=1e-12
        )


def test_bigram_sampler_is_reproducible_and_follows_the_rows(chain):
    _, exact, sa = chain
    tokens, floor = sa.sample(1500, 30, order=2, seed=3)
    again, _ = sa.sample(1500, 30, order=2, seed=3)
    np.testing.assert_array_equal(tokens, again)
    est = exact.tables[2].probs.toarray()
    counts = np.zeros((4, 4))
    np.add.at(counts, (tokens[:, :-1].ravel(), tokens[:, 1:].ravel()), 1)
    chi2 = sum(stats.chisquare(counts[a], counts[a].sum() * est[a])[0] for a in range(4))
    assert stats.chi2.sf(chi2, df=12) > 1e-3
    first = np.bincount(tokens[:, 0], minlength=4)
    assert stats.chisquare(first, first.sum() * exact.joint(1)).pvalue > 1e-3
    np.testing.assert_allclose(floor, exact.tables[2].row_entropy[tokens[:, :-1]])


def _order8_corpus(length, vocab, seed):
    """x_t = (x_{t-7} + x_{t-3}) mod V: deterministic given the last 7 tokens, not fewer."""
    x = list(np.random.default_rng(seed).integers(0, vocab, size=7))
    while len(x) < length:
        x.append((x[-7] + x[-3]) % vocab)
    return np.array(x)


def test_order_8_sampling_and_kl(tg):
    vocab = 5
    # one stream: concatenated corpora would create 8-grams across the joins
    train = _order8_corpus(30_000, vocab, seed=0)
    sa = suffix.SuffixNgramModel(train, vocab, max_order=8, entropy_positions=1024)
    tokens, floor = sa.sample(64, 40, order=8, seed=0)
    t = np.arange(7, 40)
    np.testing.assert_array_equal(tokens[:, t], (tokens[:, t - 7] + tokens[:, t - 3]) % vocab)
    assert floor[:, 6:].max() < 1e-12  # from position 6 on, the next token is determined
    assert sa.entropy(8) < 1e-9 < 0.5 < sa.entropy(4)
    # an oracle that applies the rule has 8-gram KL ~ 0 where the context is complete
    target = (np.roll(tokens, 6, axis=1) + np.roll(tokens, 2, axis=1)) % vocab  # x_{t+1}
    logits = 30.0 * np.eye(vocab)[target]
    assert kl_to_ngram(sa, tokens, logits, 8)[:, 6:].max() < 1e-9
    assert kl_to_ngram(sa, tokens, logits, 4)[:, 6:].mean() > 0.5


def test_add_k_and_kneser_ney_smoothing(tg):
    x = np.tile([0, 1, 0, 2], 50)
    addk = suffix.SuffixNgramModel(x, 4, max_order=2, smoothing="add_k", add_k=0.5)
    # after 0: counts (0, 50, 50, 0) -> (c + 0.5) / (100 + 2)
    np.testing.assert_allclose(
        addk.conditional(np.array([[0]]), 2)[0], [0.5, 50.5, 50.5, 0.5] / np.float64(102)
    )
    # token 3 never occurs: the unigram backs off nowhere, add-k gives it 0.5 / (200 + 2)
    np.testing.assert_allclose(addk.conditional(np.zeros((1, 0), int), 1)[0, 3], 0.5 / 202)
    kn = suffix.SuffixNgramModel(x, 4, max_order=3, smoothing="kneser_ney")
    p = kn.conditional(np.array([[1, 0], [2, 0], [3, 3]]), 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    # after "1 0" always 2, after "2 0" always 1: KN keeps that, with mass on every token
    assert p[0].argmax() == 2 and p[1].argmax() == 1 and p[:2].max(axis=1).min() > 0.9
    assert (p > 0).all()
    np.testing.assert_allclose(p[2], kn.conditional(np.array([[3, 3]]), 3)[0])
    tokens, _ = kn.sample(8, 12, order=3, seed=0)
    assert tokens.shape == (8, 12)
    with pytest.raises(ValueError, match="smoothing"):
        suffix.SuffixNgramModel(x, 4, smoothing="witten_bell")
