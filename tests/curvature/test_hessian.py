"""dsb.curvature against dense float64 ground truth: the Hessian and Gauss-Newton matrix of
small MLPs and a small CNN, their top eigenpairs, Hutchinson's trace, Adam's
preconditioner and the stability thresholds."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from dsb.curvature import (
    CurvatureOperator,
    adam_preconditioner,
    hutchinson_trace,
    stability_threshold,
    top_eigenpairs,
)
from dsb.losses import per_example_loss
from dsb.parallel import make_mesh


class TinyMLP(nnx.Module):
    def __init__(self, d, h, k, rngs):
        self.l1 = nnx.Linear(d, h, rngs=rngs, param_dtype=jnp.float64)
        self.l2 = nnx.Linear(h, k, rngs=rngs, param_dtype=jnp.float64)

    def __call__(self, x):
        return self.l2(jnp.tanh(self.l1(x.reshape(len(x), -1))))


class TinyCNN(nnx.Module):
    def __init__(self, k, rngs):
        self.conv = nnx.Conv(1, 2, (3, 3), rngs=rngs, param_dtype=jnp.float64)
        self.out = nnx.Linear(2 * 4 * 4, k, rngs=rngs, param_dtype=jnp.float64)

    def __call__(self, x):
        h = jax.nn.gelu(self.conv(x))
        return self.out(h.reshape(len(x), -1))


def _batch(rng, n, shape, k):
    return rng.normal(size=(n, *shape)), rng.integers(0, k, n)


def _split(model):
    return nnx.split(model, nnx.Param, ...)


def _dense_truth(model, x, y, loss):
    """Dense Hessian (jax.hessian) and Gauss-Newton matrix (jax.jacobian of the logits with
    the closed-form logit Hessian) of the mean loss, in float64."""
    graphdef, params, rest = _split(model)
    theta, unravel = ravel_pytree(params)

    def logits(t):
        return nnx.merge(graphdef, unravel(t), rest)(jnp.asarray(x))

    def mean_loss(t):
        return per_example_loss(loss, logits(t), jnp.asarray(y)).mean()

    h = np.asarray(jax.hessian(mean_loss)(theta))
    j_NKP = np.asarray(jax.jacobian(logits)(theta))  # [n, K, P]
    z = np.asarray(logits(theta))
    n, k = z.shape
    if loss == "cross_entropy":
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        hz = np.stack([np.diag(pi) - np.outer(pi, pi) for pi in p])  # [n, K, K]
    else:
        hz = np.broadcast_to(np.eye(k), (n, k, k))
    g = np.einsum("nkp,nkl,nlq->pq", j_NKP, hz, j_NKP) / n
    return h, g


@pytest.fixture
def mlp_case(float64):
    rng = np.random.default_rng(0)
    model = TinyMLP(6, 5, 3, nnx.Rngs(0))
    x, y = _batch(rng, 8, (6,), 3)
    return model, x, y


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_hessian_and_gauss_newton_products_equal_dense_float64(mlp_case, loss):
    model, x, y = mlp_case
    h, g = _dense_truth(model, x, y, loss)
    assert np.abs(h - g).max() > 1e-3  # the two matrices differ: the test tells them apart
    for matrix, want in (("hessian", h), ("gauss_newton", g)):
        op = CurvatureOperator(*_split(model), x, y, loss=loss, matrix=matrix, mesh=make_mesh(1))
        np.testing.assert_allclose(op.dense(), want, rtol=1e-10, atol=1e-12)


def test_small_cnn_hessian_equals_dense_float64(float64):
    rng = np.random.default_rng(1)
    model = TinyCNN(3, nnx.Rngs(1))
    x, y = _batch(rng, 6, (4, 4, 1), 3)
    h, g = _dense_truth(model, x, y, "cross_entropy")
    op = CurvatureOperator(*_split(model), x, y, mesh=make_mesh(1))
    np.testing.assert_allclose(op.dense(), h, rtol=1e-10, atol=1e-12)
    gn = CurvatureOperator(*_split(model), x, y, matrix="gauss_newton", mesh=make_mesh(1))
    np.testing.assert_allclose(gn.dense(), g, rtol=1e-10, atol=1e-12)


def test_top_eigenpairs_equal_dense_eigh_with_explicit_residuals(mlp_case):
    model, x, y = mlp_case
    h, _ = _dense_truth(model, x, y, "cross_entropy")
    lam = np.linalg.eigvalsh(h)[::-1]
    op = CurvatureOperator(*_split(model), x, y, mesh=make_mesh(1))
    top = top_eigenpairs(op, k=3, rtol=1e-8, start_steps=10, max_steps=op.dim)
    assert top.all_converged
    np.testing.assert_allclose(top.values, lam[:3], rtol=1e-7)
    # The reported residuals are the explicit ones, recomputed from the definition.
    explicit = np.linalg.norm(h @ top.vectors - top.vectors * top.ritz, axis=0)
    np.testing.assert_allclose(top.residuals, explicit, rtol=1e-3, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(top.vectors, axis=0), 1.0, rtol=1e-8)
    # Products counted: the Krylov dimension of every attempt (10, 20, ... doubling).
    attempts = [10]
    while attempts[-1] < top.steps:
        attempts.append(min(2 * attempts[-1], op.dim))
    assert top.products == sum(attempts)


def test_unconverged_top_eigenvalue_is_nan_with_a_true_lower_bound(mlp_case):
    model, x, y = mlp_case
    h, _ = _dense_truth(model, x, y, "cross_entropy")
    lam = np.linalg.eigvalsh(h)[::-1]
    op = CurvatureOperator(*_split(model), x, y, mesh=make_mesh(1))
    top = top_eigenpairs(op, k=2, rtol=1e-12, start_steps=3, max_steps=3)
    assert not top.all_converged and np.isnan(top.values).all()
    assert (top.ritz <= lam[:2] + 1e-12).all()  # Cauchy interlacing: Ritz values bound below
    # The reported residuals are the explicit ones, here far from zero.
    explicit = np.linalg.norm(h @ top.vectors - top.vectors * top.ritz, axis=0)
    assert explicit.min() > 1e-4
    np.testing.assert_allclose(top.residuals, explicit, rtol=1e-6)
    # Each Ritz value lies within its residual of some eigenvalue.
    for theta, r in zip(top.ritz, top.residuals):
        assert np.min(np.abs(lam - theta)) <= r * (1 + 1e-9)


def test_hutchinson_trace_is_the_mean_of_its_rademacher_quadratic_forms(mlp_case):
    model, x, y = mlp_case
    h, _ = _dense_truth(model, x, y, "cross_entropy")
    op = CurvatureOperator(*_split(model), x, y, mesh=make_mesh(1))
    est = hutchinson_trace(op, probes=64, seed=3)
    keys = jax.random.split(jax.random.key(3), 64)
    q = np.array(
        [z @ h @ z for z in (np.asarray(jax.random.rademacher(k, (op.dim,))) for k in keys)]
    )
    assert est.mean == pytest.approx(q.mean(), rel=1e-10)
    assert est.stderr == pytest.approx(q.std(ddof=1) / 8.0, rel=1e-10)
    assert abs(est.mean - np.trace(h)) < 4 * est.stderr


def test_adam_preconditioned_sharpness_equals_dense_p_inverse_h(mlp_case):
    model, x, y = mlp_case
    graphdef, params, rest = _split(model)
    tx = optax.adamw(1e-2, b1=0.9, b2=0.95, eps=1e-8)
    state = tx.init(params)
    loss = lambda p: per_example_loss(
        "cross_entropy", nnx.merge(graphdef, p, rest)(jnp.asarray(x)), jnp.asarray(y)
    ).mean()
    for _ in range(3):  # three updates: count = 3, nu from three gradients
        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    s = np.asarray(adam_preconditioner(state, params, b1=0.9, b2=0.95, eps=1e-8))
    nu, _ = ravel_pytree(state[0].nu)
    p_diag = (1 - 0.9**3) * (np.sqrt(np.asarray(nu) / (1 - 0.95**3)) + 1e-8)
    np.testing.assert_allclose(s, 1 / np.sqrt(p_diag), rtol=1e-12)
    model2 = nnx.merge(graphdef, params, rest)
    h, _ = _dense_truth(model2, x, y, "cross_entropy")
    want = np.max(np.linalg.eigvals(np.diag(1 / p_diag) @ h).real)
    op = CurvatureOperator(graphdef, params, rest, x, y, precond_sqrt_inv=s, mesh=make_mesh(1))
    top = top_eigenpairs(op, k=1, rtol=1e-9, max_steps=op.dim)
    assert top.all_converged
    assert top.values[0] == pytest.approx(want, rel=1e-7)


def test_stability_thresholds_from_their_formulas():
    assert stability_threshold("sgd", 0.02) == pytest.approx(100.0)
    assert stability_threshold("sgd", 0.02, momentum=0.9) == pytest.approx(3.8 / 0.02)
    assert stability_threshold("adamw", 1e-3, b1=0.9) == pytest.approx(38.0 / 1e-3)
    assert np.isnan(stability_threshold("sgd", 0.1, momentum=0.9, nesterov=True))
    assert np.isnan(stability_threshold("sgd", 0.0))


def test_mse_is_half_the_squared_distance_to_the_one_hot_label():
    z = jnp.asarray([[1.0, 2.0, -1.0], [0.5, 0.0, 0.0]])
    y = jnp.asarray([1, 0])
    want = [0.5 * (1 + 1 + 1), 0.5 * (0.25 + 0 + 0)]
    np.testing.assert_allclose(per_example_loss("mse", z, y), want, rtol=1e-6)
