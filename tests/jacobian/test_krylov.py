"""The Krylov kernels (``dsb.jacobian.krylov``) against dense float64 decompositions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

from dsb.jacobian import JacobianOperator, golub_kahan, lanczos

# Compared against float64 ground truth: x64 for each test of this file.
pytestmark = pytest.mark.usefixtures("float64")


def symmetric_matrix(rng, p=60):
    """A symmetric matrix with a spread spectrum of both signs."""
    q, _ = np.linalg.qr(rng.standard_normal((p, p)))
    ev = np.concatenate([[-7.0, 5.0, 3.0], rng.uniform(-1, 1, p - 3)])
    return (q * ev) @ q.T, np.sort(ev)


def test_lanczos_with_p_steps_is_the_dense_eigendecomposition():
    rng = np.random.default_rng(0)
    s, ev = symmetric_matrix(rng)
    p = len(ev)
    sj = jnp.asarray(s)
    res = lanczos(Partial(lambda v: sj @ v), jnp.asarray(rng.standard_normal(p)), p)
    # P steps: every eigenvalue, to rounding.
    np.testing.assert_allclose(res.values, ev, atol=1e-10)
    # The Ritz vectors are orthonormal eigenvectors, and the recurrence's residual norms
    # are the explicit ones.
    y = res.vectors
    np.testing.assert_allclose(y.T @ y, np.eye(p), atol=1e-10)
    explicit = np.linalg.norm(s @ y - y * res.values, axis=0)
    np.testing.assert_allclose(res.residuals, explicit, atol=1e-10)
    assert explicit.max() < 1e-9


def test_lanczos_residuals_bound_the_distance_to_the_spectrum():
    rng = np.random.default_rng(1)
    s, ev = symmetric_matrix(rng, p=200)
    sj = jnp.asarray(s)
    res = lanczos(Partial(lambda v: sj @ v), jnp.asarray(rng.standard_normal(200)), 25)
    y = res.vectors
    explicit = np.linalg.norm(s @ y - y * res.values, axis=0)
    np.testing.assert_allclose(res.residuals, explicit, rtol=1e-6, atol=1e-10)
    # Every Ritz value is within its residual of an eigenvalue (Bauer-Fike, symmetric).
    dist = np.abs(res.values[:, None] - ev[None]).min(1)
    assert (dist <= res.residuals * (1 + 1e-8) + 1e-12).all()
    # The extremal ones have converged after 25 steps.
    assert res.values[0] == pytest.approx(-7.0, abs=1e-8)
    assert res.values[-1] == pytest.approx(5.0, abs=1e-8)
    np.testing.assert_allclose(res.tridiagonal, np.triu(np.tril(res.tridiagonal, 1), -1))


def test_lanczos_rejects_bad_step_counts():
    with pytest.raises(ValueError, match="num_steps"):
        lanczos(Partial(lambda v: v), jnp.ones(4), 5)


def test_golub_kahan_with_p_steps_is_the_dense_svd_of_the_shifted_map():
    rng = np.random.default_rng(2)
    p = 40
    a = rng.standard_normal((p, p))
    aj = jnp.asarray(a)
    op = JacobianOperator(lambda th: aj @ th, jnp.zeros(p), shift=0.5)
    v0 = jax.random.normal(jax.random.key(0), (p,))
    u, s, vt = golub_kahan(op.linear_jvp, v0, p, shift=op.shift, dtype=op.dtype)
    d = a - 0.5 * np.eye(p)
    np.testing.assert_allclose(s, np.linalg.svd(d, compute_uv=False), rtol=1e-10)
    np.testing.assert_allclose(d @ vt.T, u * s, atol=1e-9)
    np.testing.assert_allclose(d.T @ u, vt.T * s, atol=1e-9)
