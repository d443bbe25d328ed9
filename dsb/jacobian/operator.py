"""The training Jacobian as a linear operator: products with ``J`` and ``J^T``, never ``J``.

``JacobianOperator`` linearises the run once (``jax.linearize``) and gets ``J^T u`` by
``jax.linear_transpose`` of the same linear map, so each product costs about one training
run. ``linear_jvp`` is that linear map ``v -> J v`` (a pytree): the estimators in
``krylov``, ``certified`` and ``matrix_free`` pass it to their jitted programs as an
argument, so that the residuals of the linearisation are not baked in as constants.

``triplet_residuals`` and ``gram_rows`` are the explicit products the certificates use.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["JacobianOperator", "gram_rows", "triplet_residuals"]


class JacobianOperator:
    """``J v`` and ``J^T u`` of ``run: theta_0 [P] -> theta_T [P]`` at ``theta0``.

    ``shift`` subtracts ``shift * I``: ``JacobianOperator(run, theta0, shift=1.0)`` is
    ``D = J - I``. Residuals of one linearisation are kept (memory ~ the activations of
    all ``T`` steps); every product is a jitted call of the stored linear map.

    ``linear_jvp``: the unshifted linear map ``v -> J v`` (``jax.linearize``'s, a
    ``jax.tree_util.Partial``), for jitted programs that take it as an argument;
    ``theta_t`` the run's output at ``theta0``.
    """

    def __init__(self, run: Callable[[jax.Array], jax.Array], theta0: jax.Array, *, shift=0.0):
        self.theta0 = theta0
        self.shift = shift
        self.theta_t, self.linear_jvp = jax.jit(lambda th: jax.linearize(run, th))(theta0)
        self._f_vjp = jax.linear_transpose(self.linear_jvp, theta0)
        self.num_params = theta0.size
        self.dtype = theta0.dtype

    def with_shift(self, shift: float) -> JacobianOperator:
        new = object.__new__(JacobianOperator)
        new.__dict__.update(self.__dict__)
        new.shift = shift
        return new

    def matvec(self, v: jax.Array) -> jax.Array:
        """``(J - shift I) v`` for ``v [P]``."""
        return self.linear_jvp(v) - self.shift * v

    def rmatvec(self, u: jax.Array) -> jax.Array:
        """``(J - shift I)^T u`` for ``u [P]``."""
        return self._f_vjp(u)[0] - self.shift * u

    def gram(self, v: jax.Array) -> jax.Array:
        """``A^T A v`` with ``A = J - shift I``."""
        return self.rmatvec(self.matvec(v))

    def matmat(self, v_PxK: jax.Array) -> jax.Array:
        return jax.vmap(self.matvec, in_axes=1, out_axes=1)(v_PxK)

    def rmatmat(self, u_PxK: jax.Array) -> jax.Array:
        return jax.vmap(self.rmatvec, in_axes=1, out_axes=1)(u_PxK)


def triplet_residuals(op: JacobianOperator, U: np.ndarray, s: np.ndarray, Vt: np.ndarray):
    """``(||A v_i - s_i u_i||, ||A^T u_i - s_i v_i||)`` for ``A = op`` (``op.shift``
    included), by ``2k`` explicit products (vmapped), in float64 on the host."""
    dt = op.dtype

    # The linear map is a jit argument: closed over, its residuals (the activations of
    # the whole run) would be baked into the program as constants.
    @jax.jit
    def products(f_jvp, v_kp, u_kp, shift):
        f_vjp = jax.linear_transpose(f_jvp, v_kp[0])
        av = jax.vmap(lambda v: f_jvp(v) - shift * v)(v_kp)
        atu = jax.vmap(lambda u: f_vjp(u)[0] - shift * u)(u_kp)
        return av, atu

    av, atu = products(op.linear_jvp, jnp.asarray(Vt, dt), jnp.asarray(U.T, dt), op.shift)
    av, atu = np.asarray(av, np.float64).T, np.asarray(atu, np.float64).T
    r_left = np.linalg.norm(av - U * s, axis=0)
    r_right = np.linalg.norm(atu - Vt.T * s, axis=0)
    return r_left, r_right


def gram_rows(op: JacobianOperator, vt_kp: np.ndarray, chunk: int = 64) -> np.ndarray:
    """Rows ``M v_i = A^T A v_i`` ``[k, P]`` (float64 on the host) by ``2k`` explicit
    products, vmapped over fixed-size chunks (one compile)."""
    dt = op.dtype
    k, p = vt_kp.shape

    @jax.jit
    def products(f_jvp, v_kp, shift):
        f_vjp = jax.linear_transpose(f_jvp, v_kp[0])

        def gram(v):
            w = f_jvp(v) - shift * v
            return f_vjp(w)[0] - shift * w

        return jax.vmap(gram)(v_kp)

    c = min(chunk, k)
    out = np.empty((k, p))
    for i in range(0, k, c):
        block = np.zeros((c, p))
        rows = vt_kp[i : i + c]
        block[: len(rows)] = rows
        w = products(op.linear_jvp, jnp.asarray(block, dt), op.shift)
        out[i : i + len(rows)] = np.asarray(w, np.float64)[: len(rows)]
    return out
