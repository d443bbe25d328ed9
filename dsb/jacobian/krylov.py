"""Krylov kernels for matrix-free spectra, on any linear map given as a JAX pytree.

* ``work_dtype``: the one rule for the dtype of Krylov bases and reorthogonalisation.
* ``shifted_matvec``: ``v -> (f(v) - shift v)`` in the map's dtype, cast to the work dtype.
* ``golub_kahan``: Golub-Kahan bidiagonalisation with full reorthogonalisation
  (``matfree.decomp.bidiag``) and the SVD of the small bidiagonal: Ritz singular triplets
  of a (possibly non-symmetric) map, without squaring it.
* ``lanczos``: Lanczos tridiagonalisation of a symmetric map with full
  reorthogonalisation (``matfree.decomp.tridiag_sym``): Ritz values, Ritz vectors and their
  residual norms (for Hessians, ``J^T J``, ...).

The linear map is passed to a jitted function as an argument, never closed over: a map
from ``jax.linearize`` carries the residuals of its linearisation (for a training run, the
activations of every step), which a closure would bake into the program as constants. So
the map must be a pytree: ``jax.linearize``'s is (``jax.tree_util.Partial``); wrap a plain
function as ``jax.tree_util.Partial(f)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["LanczosResult", "golub_kahan", "lanczos", "shifted_matvec", "work_dtype"]


def work_dtype():
    """The dtype of Krylov bases and reorthogonalisation: float64 when x64 is enabled, else
    float32, whatever the map's dtype (matfree allocates its bases with the default float
    dtype)."""
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def shifted_matvec(
    linear_map: Callable[[jax.Array], jax.Array], *, shift: float, dtype, work
) -> Callable[[jax.Array], jax.Array]:
    """``v -> (linear_map(v) - shift v)``: ``v`` is cast to the map's ``dtype`` first and
    the result to the Krylov ``work`` dtype."""

    def av(v):
        v = v.astype(dtype)
        return (linear_map(v) - shift * v).astype(work)

    return av


def golub_kahan(
    linear_map: Callable[[jax.Array], jax.Array],
    v0: jax.Array,
    num_steps: int,
    *,
    shift: float = 0.0,
    dtype=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ritz singular triplets ``(U [P, m], s [m], Vt [m, P])`` (float64, ``s`` descending)
    of ``A = linear_map - shift I`` from ``m = num_steps`` Golub-Kahan steps started at
    ``v0 [P]`` (each step one ``A v`` and one ``A^T u``; ``A^T`` by transposition of the
    map), with full reorthogonalisation in ``work_dtype()``.

    ``A V_m = U_m B_m`` with ``B_m`` upper bidiagonal; the triplets are ``U_m P``,
    ``sigma(B_m)``, ``Q^T V_m^T`` for the SVD ``B_m = P diag(sigma) Q^T`` (float64 on the
    host). ``dtype`` is the map's input dtype (default: ``v0``'s).
    """
    from matfree import decomp

    dtype = v0.dtype if dtype is None else dtype
    work = work_dtype()
    bidiag = decomp.bidiag(num_steps, materialize=True, reortho="full")

    @jax.jit
    def run(f, v0):
        av = shifted_matvec(f, shift=shift, dtype=dtype, work=work)
        (u_mk, v_mk), b_mm, *_ = bidiag(av, v0)
        return u_mk, b_mm, v_mk

    u_mk, b_mm, v_mk = run(linear_map, v0)
    pu, s, pvt = np.linalg.svd(np.asarray(b_mm, np.float64))
    u = np.asarray(u_mk, np.float64).T @ pu  # [P, m]
    vt = pvt @ np.asarray(v_mk, np.float64)  # [m, P]
    return u, s, vt


@dataclasses.dataclass
class LanczosResult:
    """Ritz pairs of a symmetric map ``S`` from ``m`` Lanczos steps (float64, host).

    ``values [m]`` ascending, ``vectors [P, m]`` (column ``i`` for ``values[i]``),
    ``residuals [m]`` the norms ``||S y_i - theta_i y_i||``, from the recurrence
    (``beta_m |e_m^T z_i|``); with full reorthogonalisation these equal the explicit
    residuals up to rounding. A Ritz value with residual ``r`` lies within ``r`` of an
    eigenvalue of ``S``. ``tridiagonal [m, m]`` is the Lanczos matrix ``T_m``.
    """

    values: np.ndarray
    vectors: np.ndarray
    residuals: np.ndarray
    tridiagonal: np.ndarray


def lanczos(
    matvec: Callable[[jax.Array], jax.Array],
    v0: jax.Array,
    num_steps: int,
) -> LanczosResult:
    """Ritz values, vectors and residuals of a symmetric ``matvec`` (a pytree, see the module
    docstring) from ``num_steps`` Lanczos steps started at ``v0 [P]`` (normalised inside),
    with full reorthogonalisation in ``v0``'s dtype.

    ``S Q_m = Q_m T_m + beta_m q_{m+1} e_m^T``: with ``T_m = Z diag(theta) Z^T`` the Ritz
    pairs are ``(theta_i, Q_m z_i)`` and their residual norms ``beta_m |e_m^T z_i|``.
    ``num_steps`` must be at most ``P``.
    """
    from matfree import decomp

    p = v0.shape[0]
    if not 1 <= num_steps <= p:
        raise ValueError(f"lanczos: num_steps must be in [1, P={p}], got {num_steps}")
    tridiag = decomp.tridiag_sym(num_steps, materialize=True, reortho="full", custom_vjp=False)

    @jax.jit
    def run(f, v0):
        out = tridiag(f, v0)
        return out.Q_tall, out.J_small, out.residual

    q_mp, t_mm, residual = run(matvec, v0)
    t_mm = np.asarray(t_mm, np.float64)
    t_mm = 0.5 * (t_mm + t_mm.T)
    theta, z = np.linalg.eigh(t_mm)
    q = np.asarray(q_mp, np.float64).T  # matfree's Q_tall is [m, P]
    beta = float(np.linalg.norm(np.asarray(residual, np.float64)))
    return LanczosResult(theta, q @ z, beta * np.abs(z[-1]), t_mm)
