"""High-order n-gram models counted by suffix array (``tokengrams``), with back-off or smoothing.

``NgramModel`` (``dsb.lm.ngram``) stores every n-gram in sparse tables with contexts packed
into int64 keys: exact entropies, fast on small corpora, but the order is capped
(``V^n < 2^63``: n <= 5 for a 4096-token vocabulary) and memory grows with the number of
distinct n-grams of every order. ``SuffixNgramModel`` builds one suffix array over the
token stream (``tokengrams.InMemoryIndex``, 4-8 bytes per token, built in seconds for
10^7 tokens) and counts the continuations of any context on demand, so any order works.
It offers the same interface the probes use: ``conditional``, ``sample``, ``entropy``,
``fingerprint``, ``max_order``, ``vocab_size``; ``kl_to_ngram`` and ``js_to_ngram`` accept
it (dense over the vocabulary).

Conventions shared with ``NgramModel``: a context of ``order - 1`` tokens (oldest first)
predicts the next token; where fewer tokens precede, or the context never occurs in the
corpus, the longest suffix that does occur is used (back-off), down to the unigram.
Differences: the suffix array indexes one flat stream, so windows ``[n, t]`` are
concatenated and n-grams may span a window boundary (for the contiguous windows of one
corpus those are real n-grams of the text); and ``entropy(order)`` is a Monte Carlo
estimate over corpus positions (``entropy_positions`` of them; exact tables are what the
suffix array avoids).

Smoothing (``smoothing=``):

* ``None``: maximum likelihood at the longest seen context (the ``NgramModel`` rule);
* ``"add_k"``: ``(c(ctx, v) + k) / (c(ctx) + k V)`` at the longest seen context, so every
  token has probability > 0;
* ``"kneser_ney"``: interpolated Kneser-Ney over all orders up to ``order`` (tokengrams'
  ``get_smoothed_probs``, default discounts).

Needs the optional dependency ``tokengrams`` (MIT; ``pip install -e '.[ngram]'``, or
``pip install --no-deps tokengrams``: its ``datasets`` / ``transformers`` dependencies
only serve a Hugging Face tokenising helper, and dsb loads the compiled index directly
when they are missing).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import tempfile
from pathlib import Path

import numpy as np
from scipy.special import xlogy

__all__ = ["SuffixNgramModel", "load_tokengrams"]

_SMOOTHING = (None, "add_k", "kneser_ney")


def load_tokengrams():
    """The ``tokengrams`` extension module (its ``InMemoryIndex``), with a clear error if
    the package is not installed. ``import tokengrams`` also imports ``datasets`` and
    ``transformers`` (for a tokenising helper dsb does not use); without them the compiled
    extension inside the package is loaded on its own."""
    try:
        return importlib.import_module("tokengrams")
    except ModuleNotFoundError as e:
        if e.name == "tokengrams":
            raise ImportError(
                "n-gram counting by suffix array needs the optional package 'tokengrams': "
                "pip install -e '.[ngram]' (or pip install --no-deps tokengrams)"
            ) from e
        spec = importlib.util.find_spec("tokengrams")
        folder = Path(next(iter(spec.submodule_search_locations)))
        libs = sorted(folder.glob("tokengrams*.so")) + sorted(folder.glob("tokengrams*.pyd"))
        if not libs:
            raise ImportError(f"tokengrams is installed in {folder} without its extension") from e
        ext_spec = importlib.util.spec_from_file_location("tokengrams.tokengrams", libs[0])
        module = importlib.util.module_from_spec(ext_spec)
        ext_spec.loader.exec_module(module)
        return module


def _row_entropy(p_NxV: np.ndarray) -> np.ndarray:
    return -xlogy(p_NxV, p_NxV).sum(axis=1)


class SuffixNgramModel:
    """n-gram conditionals of any order from a suffix array over ``tokens``.

    Args:
      tokens: ``[N]`` or windows ``[n, t]`` (flattened in order), ids in ``[0, vocab_size)``.
      vocab_size: vocabulary size V.
      max_order: the highest order used by ``sample`` / ``conditional`` (any value >= 1).
      smoothing: ``None``, ``"add_k"`` or ``"kneser_ney"`` (module docstring).
      add_k: the pseudo-count k of ``add_k``.
      entropy_positions: corpus positions of the Monte Carlo ``entropy`` estimate.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        vocab_size: int,
        max_order: int = 8,
        *,
        smoothing: str | None = None,
        add_k: float = 1.0,
        entropy_positions: int = 4096,
    ):
        if smoothing not in _SMOOTHING:
            raise ValueError(f"smoothing={smoothing!r}: use one of {_SMOOTHING}")
        if max_order < 1:
            raise ValueError(f"max_order must be >= 1, got {max_order}")
        if smoothing == "add_k" and not add_k > 0:
            raise ValueError(f"add_k must be > 0, got {add_k}")
        flat = np.asarray(tokens).reshape(-1)
        if flat.size < 2:
            raise ValueError("the corpus needs at least 2 tokens")
        if flat.min() < 0 or flat.max() >= vocab_size:
            raise ValueError(f"token ids outside [0, {vocab_size})")
        self.tokens = flat.astype(np.int64)
        self.vocab_size = int(vocab_size)
        self.max_order = int(max_order)
        self.smoothing, self.add_k = smoothing, float(add_k)
        self.entropy_positions = int(entropy_positions)
        self.index = _build_index(self.tokens, self.vocab_size)
        self._entropy: dict[int, float] = {}

    def fingerprint(self) -> str:
        h = hashlib.sha256(np.ascontiguousarray(self.tokens).tobytes())
        h.update(f"suffix-{self.vocab_size}-{self.smoothing}-{self.add_k}".encode())
        return h.hexdigest()[:16]

    def count_next(self, ctx_NxK: np.ndarray) -> np.ndarray:
        """``[N, V]`` counts of each token right after each context (``[N, k]``, k >= 0)."""
        ctx = np.asarray(ctx_NxK, dtype=np.int64).reshape(len(ctx_NxK), -1)
        if ctx.shape[1] == 0:
            counts = np.asarray(self.index.count_next([]), dtype=np.int64)
            return np.broadcast_to(counts, (len(ctx), self.vocab_size)).copy()
        uniq, inverse = np.unique(ctx, axis=0, return_inverse=True)
        counts = np.asarray(self.index.batch_count_next(uniq.tolist()), dtype=np.int64)
        return counts.reshape(len(uniq), -1)[:, : self.vocab_size][inverse.reshape(-1)]

    def lookup_counts(self, ctx_NxK: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
        """``(order_used [N], counts [N, V])``: the continuation counts of the longest
        suffix of each context (at most ``order - 1`` tokens) that occurs in the corpus."""
        ctx = np.asarray(ctx_NxK, dtype=np.int64).reshape(len(ctx_NxK), -1)
        k = min(order - 1, ctx.shape[1])
        ctx = ctx[:, ctx.shape[1] - k :]
        used = np.full(len(ctx), k + 1)
        counts = self.count_next(ctx) if k > 0 else self.count_next(ctx[:, :0])
        for lower in range(k - 1, -1, -1):
            miss = counts.sum(axis=1) == 0
            if not miss.any():
                break
            counts[miss] = self.count_next(ctx[miss][:, ctx.shape[1] - lower :])
            used[miss] = lower + 1
        return used, counts

    def conditional(self, ctx_NxK: np.ndarray, order: int) -> np.ndarray:
        """Dense ``P(next | context)`` ``[N, V]`` float64 (rows sum to 1), with back-off or
        the configured smoothing."""
        ctx = np.asarray(ctx_NxK, dtype=np.int64).reshape(len(ctx_NxK), -1)
        if self.smoothing == "kneser_ney":
            k = min(order - 1, ctx.shape[1])
            queries = ctx[:, ctx.shape[1] - k :]
            uniq, inverse = np.unique(queries, axis=0, return_inverse=True)
            p = np.asarray(self.index.batch_get_smoothed_probs(uniq.tolist()), np.float64)
            p = p.reshape(len(uniq), -1)[:, : self.vocab_size][inverse.reshape(-1)]
            return p / p.sum(axis=1, keepdims=True)
        _, counts = self.lookup_counts(ctx, order)
        counts = counts.astype(np.float64)
        if self.smoothing == "add_k":
            counts += self.add_k
        return counts / counts.sum(axis=1, keepdims=True)

    def sample(
        self, num_sequences: int, length: int, order: int, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """n-gram sequences and their per-position entropy floors (``NgramModel.sample``'s
        contract): token 0 ~ unigram, token ``t`` ~ ``P(. | tokens[t-k+1 .. t-1])`` with
        ``k = min(order, t + 1)``. Returns ``tokens [n, length]`` int32 and
        ``floor [n, length - 1]``, the entropy of the distribution token ``t + 1`` was drawn
        from."""
        if not 1 <= order:
            raise ValueError(f"order must be >= 1, got {order}")
        rng = np.random.default_rng([seed, order])
        tokens = np.zeros((num_sequences, length), dtype=np.int64)
        floor = np.zeros((num_sequences, max(length - 1, 0)))
        for t in range(length):
            k = min(order, t + 1)
            p = self.conditional(tokens[:, t - k + 1 : t], k)
            cdf = np.cumsum(p, axis=1)
            u = rng.random(num_sequences) * cdf[:, -1]
            draw = (cdf <= u[:, None]).sum(axis=1)
            tokens[:, t] = np.minimum(draw, self.vocab_size - 1)
            if t > 0:
                floor[:, t - 1] = _row_entropy(p)
        return tokens.astype(np.int32), floor

    def entropy(self, order: int) -> float:
        """``H(X_t | X_{t-order+1..t-1})`` in nats: the mean entropy of the conditional at
        ``entropy_positions`` corpus positions drawn uniformly (fixed seed), i.e. a Monte
        Carlo estimate of the plug-in entropy (``NgramModel.entropy``, computed exactly
        there) with standard error ~ std / sqrt(entropy_positions)."""
        if order not in self._entropy:
            rng = np.random.default_rng([0, order])
            lo = order - 1
            pos = rng.integers(lo, len(self.tokens), size=self.entropy_positions)
            ctx = self.tokens[pos[:, None] - lo + np.arange(lo)[None, :]]
            self._entropy[order] = float(_row_entropy(self.conditional(ctx, order)).mean())
        return self._entropy[order]


def _build_index(tokens: np.ndarray, vocab_size: int):
    tg = load_tokengrams()
    if vocab_size > 2**16:
        return tg.InMemoryIndex(tokens.tolist(), vocab=vocab_size)
    # the token-file constructor avoids a 10^7-element Python list (little-endian u16)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokens.bin"
        tokens.astype("<u2").tofile(path)
        return tg.InMemoryIndex.from_token_file(str(path), None, vocab_size)
