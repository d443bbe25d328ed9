"""dsb.jacobian.softmax_cross_entropy (closed-form derivatives) against optax's autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dsb.jacobian import softmax_cross_entropy

pytestmark = pytest.mark.usefixtures("float64")


def _data(dtype=jnp.float64, n=17, k=10):
    kz, ky = jax.random.split(jax.random.key(3))
    logits = jax.random.normal(kz, (n, k), dtype) * 4
    labels = jax.random.randint(ky, (n,), 0, k)
    return logits, labels, jax.nn.one_hot(labels, k, dtype=dtype)


def _ours(z, onehot):
    return softmax_cross_entropy(z, onehot).mean()


def _optax(labels):
    return lambda z: optax.softmax_cross_entropy_with_integer_labels(z, labels).mean()


def test_value_matches_optax():
    for dtype in (jnp.float32, jnp.float64):
        z, y, onehot = _data(dtype)
        np.testing.assert_allclose(
            softmax_cross_entropy(z, onehot),
            optax.softmax_cross_entropy_with_integer_labels(z, y),
            # optax forms logsumexp(z) - z_y; float32 rounding of that differs by ~1e-7
            rtol=1e-6 if dtype == jnp.float32 else 1e-14,
            atol=1e-6 if dtype == jnp.float32 else 0,
        )


def test_first_second_third_derivatives_match_optax():
    z, y, onehot = _data()
    ours, ref = (lambda z: _ours(z, onehot)), _optax(y)
    np.testing.assert_allclose(jax.grad(ours)(z), jax.grad(ref)(z), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(jax.hessian(ours)(z), jax.hessian(ref)(z), rtol=1e-11, atol=1e-14)
    v = jax.random.normal(jax.random.key(5), z.shape, jnp.float64)

    def third(f):  # directional third derivative: d/dt of the HVP along v
        hvp = lambda z: jax.jvp(jax.grad(f), (z,), (v,))[1]
        return jax.jvp(hvp, (z,), (v,))[1]

    np.testing.assert_allclose(third(ours), third(ref), rtol=1e-10, atol=1e-13)


def test_batched_tangent_of_gradient_through_a_network():
    """The dense-J pattern: vmap over tangents of a JVP of the parameter gradient."""
    _, y, onehot = _data(n=9, k=4)
    x = jax.random.normal(jax.random.key(7), (9, 6), jnp.float64)
    w = jax.random.normal(jax.random.key(8), (6, 4), jnp.float64)
    tangents = jax.random.normal(jax.random.key(9), (5, 6, 4), jnp.float64)

    def batched(loss):
        g = jax.grad(lambda w: loss(jnp.tanh(x @ w)))
        return jax.vmap(lambda t: jax.jvp(g, (w,), (t,))[1])(tangents)

    want = batched(_optax(y))
    np.testing.assert_allclose(batched(lambda z: _ours(z, onehot)), want, rtol=1e-11)
