"""Analyses of a training Jacobian's singular directions, from its SVD ``J = U diag(s) V^T``
(Belrose & Scherlis 2024, arXiv 2412.07003): which directions are chaotic, bulk or stable
(``spectrum_regions``, ``bulk_counts``, ``closest_to_one``), how left and right vectors
align, how the update projects on them, how subspaces of them overlap, what adding one to
the trained parameters does to the outputs (KL probes), and training restricted to them.

Conventions: ``s [P]`` descending, ``U [P, P]`` left vectors as columns, ``Vt [P, P]``
right vectors as rows (what ``robust_svd`` returns). All host numpy in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dsb.jacobian.training import Batch, TrainingRun

__all__ = [
    "alignment",
    "bulk_counts",
    "closest_to_one",
    "max_kl",
    "max_kl_directions",
    "ood_inputs",
    "perturbation_sweep",
    "random_subspace_overlap",
    "restricted_training",
    "spectrum_regions",
    "subspace_overlap",
    "update_projection",
]


def spectrum_regions(
    s: np.ndarray,
    *,
    bulk_tol: float = 0.1,
    chaotic_above: float | None = None,
    stable_below: float | None = None,
) -> dict[str, np.ndarray]:
    """Indices of the chaotic (``s > chaotic_above``), bulk (``|s - 1| < bulk_tol``) and
    stable (``s < stable_below``) regions; the two edges default to ``1 +/- bulk_tol``."""
    s = np.asarray(s)
    hi = 1 + bulk_tol if chaotic_above is None else chaotic_above
    lo = 1 - bulk_tol if stable_below is None else stable_below
    return {
        "chaotic": np.flatnonzero(s >= hi),
        "bulk": np.flatnonzero(np.abs(s - 1) < bulk_tol),
        "stable": np.flatnonzero(s <= lo),
    }


def bulk_counts(s: np.ndarray, thresholds: Sequence[float] = (0.1, 1e-2, 1e-3)) -> dict:
    """``{threshold: #{i : |s_i - 1| < threshold}}``."""
    return {float(t): int((np.abs(np.asarray(s) - 1) < t).sum()) for t in thresholds}


def closest_to_one(s: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` singular values with the smallest ``|s - 1|`` (the bulk)."""
    return np.argsort(np.abs(np.asarray(s) - 1), kind="stable")[:k]


def alignment(U: np.ndarray, Vt: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
    """``u_i . v_i`` for the chosen indices (all by default)."""
    idx = np.arange(U.shape[1]) if idx is None else idx
    return np.einsum("pi,ip->i", U[:, idx], Vt[idx])


def update_projection(delta: np.ndarray, U: np.ndarray, Vt: np.ndarray) -> dict[str, np.ndarray]:
    """Coefficients of ``delta = theta_T - theta_0`` on every ``u_i`` and ``v_i``."""
    return {"u": U.T @ delta, "v": Vt @ delta}


def _orthonormal(a: np.ndarray) -> np.ndarray:
    q, _ = np.linalg.qr(np.asarray(a, np.float64))
    return q


def subspace_overlap(a_PxK: np.ndarray, b_PxK: np.ndarray) -> float:
    """Mean principal cosine between the column spans of ``a`` and ``b``.

    The singular values of ``Qa^T Qb`` are the cosines of the principal angles.
    """
    cos = np.linalg.svd(_orthonormal(a_PxK).T @ _orthonormal(b_PxK), compute_uv=False)
    return float(np.clip(cos, 0, 1).mean())


def random_subspace_overlap(
    num_params: int, k: int, *, num_samples: int = 1, seed: int = 0
) -> tuple[float, float]:
    """Mean principal cosine of two independent uniformly random ``k``-subspaces of R^P.

    Returns ``(mean over samples, expected mean squared cosine = k / P)``; the second is
    exact (``E ||Qa^T Qb||_F^2 = k^2 / P``) and bounds the first from above by Jensen.
    """
    rng = np.random.default_rng(seed)
    vals = [
        subspace_overlap(rng.standard_normal((num_params, k)), rng.standard_normal((num_params, k)))
        for _ in range(num_samples)
    ]
    return float(np.mean(vals)), k / num_params


def _log_softmax(z):
    return jax.nn.log_softmax(jnp.asarray(z, jnp.float64 if jax.config.jax_enable_x64 else None))


def max_kl(apply: Callable, params_a: Any, params_b: Any, x: np.ndarray) -> float:
    """``max_n KL(softmax(f_a(x_n)) || softmax(f_b(x_n)))`` over the rows of ``x``."""
    la = _log_softmax(apply(params_a, jnp.asarray(x)))
    lb = _log_softmax(apply(params_b, jnp.asarray(x)))
    kl = (jnp.exp(la) * (la - lb)).sum(-1)
    return float(jnp.max(kl))


def max_kl_directions(
    apply_flat: Callable[[jax.Array, jax.Array], jax.Array],
    theta: jax.Array,
    directions_KxP: np.ndarray,
    x: np.ndarray,
    *,
    chunk: int = 64,
) -> np.ndarray:
    """``[K]``: for every row ``d_i``, ``max_n KL(softmax(f(theta, x_n)) ||
    softmax(f(theta + d_i, x_n)))``, where ``apply_flat(theta [P], x) -> logits``.

    The notebook's probe with ``d_i = v_i`` (all ``P`` right singular vectors, unit
    norm) added to ``theta_T``. Directions are pushed through ``vmap`` in chunks of
    ``chunk`` rows (a ``lax.map``), in the dtype of ``theta``.
    """
    d = np.asarray(directions_KxP)
    if d.ndim != 2 or d.shape[1] != theta.shape[0]:
        raise ValueError(f"directions must be [K, {theta.shape[0]}], got {d.shape}")
    k = d.shape[0]
    pad = (-k) % chunk
    d = jnp.asarray(np.concatenate([d, np.zeros((pad, d.shape[1]), d.dtype)]), theta.dtype)
    x = jnp.asarray(x, theta.dtype)

    @jax.jit
    def go(d_CxKxP):
        la = jax.nn.log_softmax(apply_flat(theta, x))

        def one(di):
            lb = jax.nn.log_softmax(apply_flat(theta + di, x))
            return jnp.max((jnp.exp(la) * (la - lb)).sum(-1))

        return jax.lax.map(jax.vmap(one), d_CxKxP)

    out = go(d.reshape(-1, chunk, d.shape[1]))
    return np.asarray(out, np.float64).reshape(-1)[:k]


def ood_inputs(x: np.ndarray, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Out-of-distribution probes shaped like ``x``: uniform white noise and ``1 - x``."""
    rng = np.random.default_rng(seed)
    return {"white_noise": rng.uniform(size=x.shape).astype(x.dtype), "inverted": 1.0 - x}


def perturbation_sweep(
    run: TrainingRun,
    theta0: jax.Array,
    v: np.ndarray,
    u: np.ndarray,
    eps: Sequence[float],
    *,
    eval_loss: Callable[[jax.Array], jax.Array] | None = None,
) -> dict[str, np.ndarray]:
    """Retrain from ``theta0 + eps v`` and measure ``delta(eps) = theta_T(eps) - theta_T``.

    Returns per eps: ``slope = u . delta / eps`` (1 for an exact bulk direction),
    ``rel_nonlinear = |delta - (u.delta) u| / |delta|`` and the loss ``eval_loss(theta_T)``.
    """
    f = jax.jit(run)
    theta_t = np.asarray(f(theta0), np.float64)
    v = jnp.asarray(v, theta0.dtype)
    out = {"eps": np.asarray(eps, np.float64), "slope": [], "rel_nonlinear": [], "loss": []}
    for e in eps:
        th = f(theta0 + e * v)
        d = np.asarray(th, np.float64) - theta_t
        c = float(u @ d)
        out["slope"].append(c / e)
        out["rel_nonlinear"].append(np.linalg.norm(d - c * u) / max(np.linalg.norm(d), 1e-300))
        out["loss"].append(float(eval_loss(th)) if eval_loss is not None else np.nan)
    return {k: np.asarray(val) for k, val in out.items()}


def restricted_training(
    loss_fn: Callable[[Any, Batch], jax.Array],
    unravel: Callable[[jax.Array], Any],
    theta0: jax.Array,
    basis_PxK: np.ndarray,
    optimizer: optax.GradientTransformation,
    batches: Batch,
    num_steps: int,
    eval_batch: Batch,
) -> tuple[float, jax.Array]:
    """Train only ``p [k]`` in ``theta = theta0 + B p`` from ``p = 0``; return the final
    loss on ``eval_batch`` and ``theta_T``. ``B [P, k]`` should be orthonormal."""
    basis = jnp.asarray(basis_PxK, theta0.dtype)

    def sub_loss(p, batch):
        return loss_fn(unravel(theta0 + basis @ p), batch)

    sub = TrainingRun(sub_loss, optimizer, batches, num_steps, lambda p: p, basis.shape[1])

    @jax.jit
    def go(p0):
        p_t = sub(p0)
        th = theta0 + basis @ p_t
        return loss_fn(unravel(th), eval_batch), th

    return go(jnp.zeros(basis.shape[1], theta0.dtype))
