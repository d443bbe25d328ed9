"""Synthetic token sources with known statistics: first-order Markov chains.

Ground truth for the n-gram machinery and for LM training: a chain with transition matrix
``P[a, b] = P(x_{t+1} = b | x_t = a)`` has stationary law ``pi`` (``pi P = pi``) and entropy
rate ``H = -sum_a pi_a sum_b P_ab log P_ab`` (nats), the best achievable per-token loss.
"""

from __future__ import annotations

import numpy as np

__all__ = ["entropy_rate", "random_transition_matrix", "sample_markov_chain", "stationary"]


def stationary(p_VxV: np.ndarray) -> np.ndarray:
    """Stationary distribution ``pi [V]`` of a row-stochastic matrix (irreducible chains)."""
    w, v = np.linalg.eig(np.asarray(p_VxV, dtype=np.float64).T)
    pi = np.abs(np.real(v[:, np.argmin(np.abs(w - 1))]))
    return pi / pi.sum()


def entropy_rate(p_VxV: np.ndarray) -> float:
    p = np.asarray(p_VxV, dtype=np.float64)
    logp = np.log(np.where(p > 0, p, 1.0))
    return float(-(stationary(p)[:, None] * p * logp).sum())


def random_transition_matrix(vocab_size: int, concentration: float, seed: int) -> np.ndarray:
    """Rows drawn from a symmetric Dirichlet (small ``concentration`` = peaky rows)."""
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(vocab_size, concentration), size=vocab_size)


def sample_markov_chain(
    p_VxV: np.ndarray, length: int, seed: int, start: int | None = None
) -> np.ndarray:
    """One trajectory ``[length]`` int64; ``x_0 ~ pi`` unless ``start`` is given."""
    p = np.asarray(p_VxV, dtype=np.float64)
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(p, axis=1)
    x = np.empty(length, dtype=np.int64)
    x[0] = rng.choice(len(p), p=stationary(p)) if start is None else start
    u = rng.random(length)
    for t in range(1, length):
        x[t] = min(np.searchsorted(cdf[x[t - 1]], u[t], side="right"), len(p) - 1)
    return x
