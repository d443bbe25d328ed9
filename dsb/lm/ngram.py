"""n-gram statistics of a token corpus: counts, conditionals, entropy floors, sampler, KL.

Conventions (the reference bugs this module is written against):

* **Normalisation axis.** A table of order ``n`` has one row per observed context (the
  ``n - 1`` preceding tokens, oldest first) and one column per next token; probabilities are
  ``counts / counts.sum(axis=1)``: every row sums to one over the vocabulary.
* **Alignment.** A model's logits at position ``t`` predict token ``t + 1``, so the n-gram
  distribution compared with them uses the context ``tokens[t - n + 2 .. t]`` (inclusive).
* **Back-off.** Where fewer than ``n - 1`` tokens precede (the start of a sequence) or the
  context never occurred in training, the next-order-down maximum-likelihood conditional
  is used (no discounting), down to the unigram. The sampler and the KL use the same rule.
* Tables are sparse (``scipy.sparse.csr_matrix``, float64 counts) with contexts packed into
  int64 keys ``sum_i tok_i * V^(k-1-i)``, so ``V^n`` must stay below ``2^63``.

Entropies are plug-in estimates in nats on the training corpus:
``H_n = sum_ctx P(ctx) H(P(. | ctx))``, i.e. ``H(X_t)``, ``H(X_t | X_{t-1})``,
``H(X_t | X_{t-2}, X_{t-1})`` for ``n = 1, 2, 3``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.special import xlogy

__all__ = [
    "NGRAM_NAMES",
    "NgramModel",
    "NgramTable",
    "bootstrap_ci",
    "cached_ngram_sets",
    "js_to_ngram",
    "kl_to_ngram",
    "log_softmax",
    "one_hot_moments",
    "sequence_cross_entropy",
]

NGRAM_NAMES = {1: "unigram", 2: "bigram", 3: "trigram", 4: "4gram", 5: "5gram"}


def _pack(ctx_NxK: np.ndarray, vocab_size: int) -> np.ndarray:
    key = np.zeros(ctx_NxK.shape[0], dtype=np.int64)
    for j in range(ctx_NxK.shape[1]):
        key = key * vocab_size + ctx_NxK[:, j].astype(np.int64)
    return key


@dataclasses.dataclass
class NgramTable:
    """Counts of order ``n``: ``counts[r, v]`` = #(context ``context_keys[r]`` then ``v``)."""

    order: int
    vocab_size: int
    context_keys: np.ndarray  # [C] int64, sorted
    counts: sp.csr_matrix  # [C, V] float64

    def __post_init__(self):
        self.row_totals = np.asarray(self.counts.sum(axis=1)).ravel()
        self.cumsum = np.cumsum(self.counts.data)  # exact: integer counts < 2^53
        p = self.counts.data / np.repeat(self.row_totals, np.diff(self.counts.indptr))
        h = -xlogy(p, p)
        self.row_entropy = np.add.reduceat(h, self.counts.indptr[:-1]) if h.size else h

    @functools.cached_property
    def probs(self) -> sp.csr_matrix:
        """Row-normalised conditional ``P(next | context)`` ``[C, V]`` (computed once)."""
        return sp.csr_matrix(sp.diags(1.0 / self.row_totals) @ self.counts)

    @property
    def entropy(self) -> float:
        """``H(X_t | context)`` = sum over contexts of P(context) H(row), nats."""
        return float(self.row_totals @ self.row_entropy / self.row_totals.sum())

    def rows(self, ctx_NxK: np.ndarray) -> np.ndarray:
        """Row index of each context (``order - 1`` tokens), ``-1`` if never seen."""
        if self.order == 1:
            return np.zeros(len(ctx_NxK), dtype=np.int64)
        keys = _pack(ctx_NxK, self.vocab_size)
        pos = np.searchsorted(self.context_keys, keys)
        pos_c = np.minimum(pos, len(self.context_keys) - 1)
        return np.where(self.context_keys[pos_c] == keys, pos_c, -1)

    def sample_rows(self, rows_N: np.ndarray, u_N: np.ndarray) -> np.ndarray:
        """Inverse-CDF draw of the next token from each (valid) row, ``u`` uniform [0, 1)."""
        lo, hi = self.counts.indptr[rows_N], self.counts.indptr[rows_N + 1]
        base = np.where(lo > 0, self.cumsum[np.maximum(lo - 1, 0)], 0.0)
        target = base + u_N * (self.cumsum[hi - 1] - base)
        j = np.clip(np.searchsorted(self.cumsum, target, side="right"), lo, hi - 1)
        return self.counts.indices[j]


class NgramModel:
    """Maximum-likelihood n-gram tables of orders ``1..max_order`` with back-off."""

    def __init__(self, tables: list[NgramTable]):
        self.tables = {t.order: t for t in tables}
        self.max_order = max(self.tables)
        self.vocab_size = tables[0].vocab_size

    @classmethod
    def fit(cls, tokens: np.ndarray, vocab_size: int, max_order: int = 3) -> NgramModel:
        """Count n-grams of ``tokens``: flat ``[N]`` or rows ``[n, t]`` (no n-gram crosses
        a row boundary: windows are treated as independent sequences)."""
        tokens = np.asarray(tokens)
        rows = tokens[None] if tokens.ndim == 1 else tokens
        if rows.ndim != 2:
            raise ValueError(f"tokens must be [N] or [n, t], got shape {tokens.shape}")
        if float(vocab_size) ** max_order >= 2.0**63:
            raise ValueError(f"vocab {vocab_size}^{max_order} does not fit packed int64 keys")
        if rows.size and (rows.min() < 0 or rows.max() >= vocab_size):
            raise ValueError(f"token ids outside [0, {vocab_size})")
        rows = rows.astype(np.int64)
        tables = []
        for n in range(1, max_order + 1):
            if rows.shape[1] < n:
                raise ValueError(f"sequences of length {rows.shape[1]} have no {n}-grams")
            grams = np.lib.stride_tricks.sliding_window_view(rows, n, axis=1).reshape(-1, n)
            joint, counts = np.unique(_pack(grams, vocab_size), return_counts=True)
            ctx, nxt = np.divmod(joint, vocab_size)
            keys, starts = np.unique(ctx, return_index=True)
            indptr = np.append(starts, len(joint))
            mat = sp.csr_matrix(
                (counts.astype(np.float64), nxt, indptr), shape=(len(keys), vocab_size)
            )
            tables.append(NgramTable(n, vocab_size, keys, mat))
        return cls(tables)

    def entropy(self, order: int) -> float:
        return self.tables[order].entropy

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for n in sorted(self.tables):
            t = self.tables[n]
            for a in (t.context_keys, t.counts.indptr, t.counts.indices, t.counts.data):
                h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]

    def joint(self, order: int) -> np.ndarray:
        """Dense joint n-gram table ``P(x_1, ..., x_order)``, shape ``[V] * order``: the
        counts of every window of ``order`` tokens over their total (sums to 1).
        ``joint(1)`` is ``p1``; ``joint(2)[a, b]`` is the probability of the bigram ``a b``.
        Dense, so ``V ** order`` must stay below ``2 ** 26``."""
        v = self.vocab_size
        if float(v) ** order > 2**26:
            raise ValueError(f"joint({order}): {v}^{order} entries is too large to be dense")
        table = self.tables[order]
        out = np.zeros((max(v ** (order - 1), 1), v))
        rows = np.repeat(table.context_keys, np.diff(table.counts.indptr)) if order > 1 else 0
        out[rows, table.counts.indices] = table.counts.data
        return (out / out.sum()).reshape((v,) * order)

    def lookup(self, ctx_NxK: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
        """``(order_used [N], row [N])`` for contexts of ``order - 1`` tokens, backing off
        to the longest seen suffix of each context."""
        ctx_NxK = np.asarray(ctx_NxK).reshape(len(ctx_NxK), order - 1)
        used = np.full(len(ctx_NxK), order)
        rows = self.tables[order].rows(ctx_NxK)
        for lower in range(order - 1, 0, -1):
            miss = rows < 0
            if not miss.any():
                break
            suffix = ctx_NxK[miss][:, ctx_NxK.shape[1] - (lower - 1) :]
            rows[miss] = self.tables[lower].rows(suffix)
            used[miss] = lower
        return used, rows

    def conditional(self, ctx_NxK: np.ndarray, order: int) -> np.ndarray:
        """Dense ``P(next | context)`` ``[N, V]`` float64 with back-off (rows sum to 1)."""
        used, rows = self.lookup(ctx_NxK, order)
        out = np.zeros((len(rows), self.vocab_size))
        for n in np.unique(used):
            sel = used == n
            out[sel] = self.tables[n].probs[rows[sel]].toarray()
        return out

    def sample(
        self, num_sequences: int, length: int, order: int, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """n-gram sequences and their per-position entropy floors.

        Token 0 ~ unigram; token ``t`` ~ ``P_k(. | tokens[t-k+1 .. t-1])`` with
        ``k = min(order, t + 1)`` (back-off at the start and on unseen contexts).

        Returns ``tokens [n, length]`` int32 and ``floor [n, length - 1]``: the entropy of the
        distribution token ``t + 1`` was drawn from, i.e. the best achievable expected
        cross-entropy of a prediction at position ``t``.
        """
        if order not in self.tables:
            raise ValueError(f"order {order} not fitted (max_order={self.max_order})")
        rng = np.random.default_rng([seed, order])
        tokens = np.zeros((num_sequences, length), dtype=np.int64)
        floor = np.zeros((num_sequences, max(length - 1, 0)))
        for t in range(length):
            k = min(order, t + 1)
            used, rows = self.lookup(tokens[:, t - k + 1 : t], k)
            u = rng.random(num_sequences)
            for n in np.unique(used):
                sel = used == n
                table = self.tables[n]
                tokens[sel, t] = table.sample_rows(rows[sel], u[sel])
                if t > 0:
                    floor[sel, t - 1] = table.row_entropy[rows[sel]]
        return tokens.astype(np.int32), floor


def one_hot_moments(
    tokens: np.ndarray, vocab_size: int, chunk: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """First and lag-1 second moments of one-hot token embeddings ``e(x) = I[x]``.

    ``mean [V] = E_t[e(x_t)]`` over every token and ``cross [V, V] = E_t[e(x_t) e(x_{t+1})']``
    over every adjacent pair inside a window (``tokens``: ``[N]`` or windows ``[n, t]``;
    no pair crosses a window boundary), computed as the matrix products of the embeddings
    (``chunk`` pairs at a time). These equal the n-gram tables, ``mean = p1``
    and ``cross = P(x_t = a, x_{t+1} = b)`` (``NgramModel.joint(1)``, ``joint(2)``), so
    n-gram statistics are the order-n moments of the token embeddings."""
    tokens = np.asarray(tokens)
    rows = tokens[None] if tokens.ndim == 1 else tokens
    eye = np.eye(vocab_size)
    flat = rows.reshape(-1)
    mean = np.zeros(vocab_size)
    for i in range(0, len(flat), chunk):
        mean += eye[flat[i : i + chunk]].sum(axis=0)
    mean /= len(flat)
    left, right = rows[:, :-1].reshape(-1), rows[:, 1:].reshape(-1)
    cross = np.zeros((vocab_size, vocab_size))
    for i in range(0, len(left), chunk):
        cross += eye[left[i : i + chunk]].T @ eye[right[i : i + chunk]]
    return mean, cross / max(len(left), 1)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def sequence_cross_entropy(logits_NxTxV: np.ndarray, tokens_NxT: np.ndarray) -> np.ndarray:
    """Next-token cross-entropy ``[n, t - 1]``: logits at ``t`` scored on token ``t + 1``."""
    logp = log_softmax(logits_NxTxV[:, :-1])
    target = np.asarray(tokens_NxT)[:, 1:, None].astype(np.int64)
    return -np.take_along_axis(logp, target, axis=-1)[..., 0]


def _context_groups(tokens_NxT: np.ndarray, order: int):
    """Yield ``(k, ts, ctx [n * len(ts), k])``: the positions ``ts`` whose n-gram context
    has ``k = min(order - 1, t + 1)`` tokens, ``tokens[t - k + 1 .. t]`` (oldest first).
    Every ``t >= order - 2`` has the full context and comes in one group."""
    t_len = tokens_NxT.shape[1]
    for t0 in range(min(order - 1, t_len)):
        k = min(order - 1, t0 + 1)
        ts = np.arange(t0, t_len) if k == order - 1 else np.array([t0])
        ctx = np.stack([tokens_NxT[:, ts + 1 - k + j] for j in range(k)], axis=-1)
        yield k, ts, ctx.reshape(-1, k)
        if k == order - 1:
            break


def kl_to_ngram(
    model: NgramModel,
    tokens_NxT: np.ndarray,
    logits_NxTxV: np.ndarray,
    order: int,
    *,
    normalized: bool = False,
    chunk: int = 4096,
) -> np.ndarray:
    """``KL(P_ngram(. | ctx_t) || p_model(. | tokens[:t+1]))`` per position, ``[n, t]`` nats.

    ``ctx_t = tokens[t - order + 2 .. t]``: the ``order - 1`` tokens ending at position ``t``
    (fewer at the start, with back-off), matching the model logits at position ``t``.
    ``KL = -H(P_ngram row) - sum_v P_ngram(v) log q(v)``, the sum over the row's support
    only (sparse). ``normalized=True``: ``logits`` already are log-probabilities.

    Another n-gram model (``dsb.lm.suffix.SuffixNgramModel``: any ``conditional(ctx, k)``)
    takes the same contexts, dense over the vocabulary (``chunk`` positions at a time).
    """
    tokens = np.asarray(tokens_NxT).astype(np.int64)
    logq = np.asarray(logits_NxTxV, np.float64) if normalized else log_softmax(logits_NxTxV)
    if not isinstance(model, NgramModel):
        return _dense_divergence(model, tokens, logq, order, "kl", chunk)
    n, t_len, vocab = logq.shape
    logq_MxV = logq.reshape(n * t_len, vocab)
    if order == 1:
        p1 = model.tables[1]
        kl = -p1.row_entropy[0] - logq_MxV @ p1.probs.toarray()[0]
        return np.maximum(kl, 0.0).reshape(n, t_len)
    kl = np.zeros(n * t_len)
    for k, ts, ctx in _context_groups(tokens, order):
        pos = (np.arange(n)[:, None] * t_len + ts[None, :]).reshape(-1)
        used, rows = model.lookup(ctx, k + 1)
        for m in np.unique(used):
            sel = np.flatnonzero(used == m)
            table = model.tables[m]
            probs = table.probs
            if m == 1:
                cross = logq_MxV[pos[sel]] @ probs.toarray()[0]
            else:
                start = probs.indptr[rows[sel]]
                lens = probs.indptr[rows[sel] + 1] - start
                seg = np.repeat(np.arange(len(sel)), lens)
                j = np.repeat(start - np.cumsum(lens) + lens, lens) + np.arange(lens.sum())
                vals = probs.data[j] * logq_MxV[pos[sel][seg], probs.indices[j]]
                cross = np.bincount(seg, weights=vals, minlength=len(sel))
            kl[pos[sel]] = -table.row_entropy[rows[sel]] - cross
    return np.maximum(kl, 0.0).reshape(n, t_len)


def js_to_ngram(
    model,
    tokens_NxT: np.ndarray,
    logits_NxTxV: np.ndarray,
    order: int,
    *,
    normalized: bool = False,
    chunk: int = 4096,
) -> np.ndarray:
    """Jensen-Shannon divergence ``JS(P_ngram(. | ctx_t), p_model(. | tokens[:t+1]))`` per
    position, ``[n, t]`` nats, in ``[0, log 2]``; the contexts and back-off of
    ``kl_to_ngram``. ``JS = (KL(P || M) + KL(Q || M)) / 2`` with ``M = (P + Q) / 2``, dense
    over the vocabulary (``chunk`` positions at a time). ``model`` is any n-gram model with
    ``conditional(ctx [N, k], k + 1) -> [N, V]`` (``NgramModel``, ``SuffixNgramModel``)."""
    tokens = np.asarray(tokens_NxT).astype(np.int64)
    logq = np.asarray(logits_NxTxV, np.float64) if normalized else log_softmax(logits_NxTxV)
    return _dense_divergence(model, tokens, logq, order, "js", chunk)


def _dense_divergence(model, tokens, logq, order: int, kind: str, chunk: int) -> np.ndarray:
    """KL(P || Q) or JS(P, Q) per position ``[n, t]`` from dense n-gram conditionals."""
    n, t_len, vocab = logq.shape
    logq_MxV = logq.reshape(n * t_len, vocab)
    out = np.zeros(n * t_len)
    groups = [(0, np.arange(t_len), np.zeros((n * t_len, 0), np.int64))] if order == 1 else []
    for k, ts, ctx in groups or _context_groups(tokens, order):
        pos = (np.arange(n)[:, None] * t_len + ts[None, :]).reshape(-1)
        for i in range(0, len(pos), chunk):
            p = model.conditional(ctx[i : i + chunk], k + 1)
            lq = logq_MxV[pos[i : i + chunk]]
            if kind == "kl":
                out[pos[i : i + chunk]] = (xlogy(p, p) - p * lq).sum(axis=1)
                continue
            q = np.exp(lq)
            m = 0.5 * (p + q)
            logm = np.log(np.where(m > 0, m, 1.0))
            kl_pm = (xlogy(p, p) - p * logm).sum(axis=1)
            kl_qm = (q * (lq - logm)).sum(axis=1)
            out[pos[i : i + chunk]] = 0.5 * (kl_pm + kl_qm)
    hi = np.inf if kind == "kl" else np.log(2.0)
    return np.clip(out, 0.0, hi).reshape(n, t_len)


def bootstrap_ci(
    values_N: np.ndarray, num_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over sequences (resampled with replacement)."""
    values_N = np.asarray(values_N, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values_N), size=(num_resamples, len(values_N)))
    means = values_N[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def cached_ngram_sets(
    model: NgramModel,
    orders: list[int],
    num_sequences: int,
    length: int,
    seed: int,
    cache_path: str | Path | None = None,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """``{order: (tokens [n, length], floor [n, length - 1])}``, sampled once and cached in
    ``cache_path`` (.npz) keyed by the n-gram fingerprint and the sampling options."""
    key = f"{model.fingerprint()}-{sorted(orders)}-{num_sequences}-{length}-{seed}"
    path = Path(cache_path) if cache_path is not None else None
    if path is not None and path.exists():
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"]) == key:
                return {n: (f[f"tokens_{n}"], f[f"floor_{n}"]) for n in orders}
    sets = {n: model.sample(num_sequences, length, n, seed) for n in orders}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"tokens_{n}": s[0] for n, s in sets.items()}
        arrays.update({f"floor_{n}": s[1] for n, s in sets.items()})
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, key=np.array(key), **arrays)
        tmp.replace(path)
    return sets
