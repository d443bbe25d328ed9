"""Closed-form GELU derivatives (dsb.models.layers.gelu_tanh / gelu_exact) against
autodiff of jax.nn.gelu in float64, and the compact tangent they exist for."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsb.models.layers import ACTIVATIONS, gelu_exact, gelu_tanh

CASES = [
    (gelu_tanh, lambda x: jax.nn.gelu(x, approximate=True)),
    (gelu_exact, lambda x: jax.nn.gelu(x, approximate=False)),
]


@pytest.mark.parametrize("fn,ref", CASES, ids=["tanh", "exact"])
def test_derivatives_match_autodiff_float64(fn, ref):
    with jax.enable_x64(True):
        x = jnp.linspace(-7.0, 7.0, 1401, dtype=jnp.float64)
        f, r = fn, ref
        for order in (1, 2, 3):
            f, r = jax.grad(f), jax.grad(r)
            got, want = jax.vmap(f)(x), jax.vmap(r)(x)
            # derivatives are O(1) here; float64 rounding of x^3 terms at |x| = 7 is ~1e-13
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-11, err_msg=f"order {order}")


@pytest.mark.parametrize("fn,ref", CASES, ids=["tanh", "exact"])
def test_primal_is_jax_gelu_bit_for_bit(fn, ref):
    x = jax.random.normal(jax.random.key(0), (4096,), jnp.float32) * 3
    np.testing.assert_array_equal(fn(x), ref(x))
    np.testing.assert_array_equal(jax.jit(fn)(x), jax.jit(ref)(x))


def test_batched_second_order_tangent_matches_autodiff():
    """What the dense training Jacobian does: a vmap of a JVP of a gradient."""
    with jax.enable_x64(True):
        k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
        w = jax.random.normal(k1, (5, 7), jnp.float64)
        x = jax.random.normal(k2, (11, 5), jnp.float64)
        tangents = jax.random.normal(k3, (9, 5, 7), jnp.float64)

        def grad_of(act):
            return jax.grad(lambda w: jnp.sum(act(x @ w) ** 2))

        def batched(act):
            return jax.vmap(lambda t: jax.jvp(grad_of(act), (w,), (t,))[1])(tangents)

        want = batched(lambda z: jax.nn.gelu(z, approximate=True))
        np.testing.assert_allclose(batched(gelu_tanh), want, rtol=1e-11, atol=1e-12)


def _num_tangent_eqns(fn, x):
    _, f_jvp = jax.linearize(fn, x)
    eqns = jax.make_jaxpr(f_jvp)(x).jaxpr.eqns
    return sum(e.primitive.name != "optimization_barrier" for e in eqns)


def test_tangent_is_one_multiply():
    """The point of the closed forms: the linearised GELU is one multiply by a stored
    coefficient (autodiff of jax.nn.gelu leaves a chain of elementwise operations, which a
    batched JVP repeats per tangent); the gradient's tangent is two multiplies."""
    x = jnp.linspace(-3.0, 3.0, 64)
    assert _num_tangent_eqns(gelu_tanh, x) <= 2
    assert _num_tangent_eqns(jax.grad(lambda z: jnp.sum(gelu_tanh(z))), x) <= 2
    assert _num_tangent_eqns(ACTIVATIONS.get("gelu_tanh_autodiff"), x) >= 5
    assert ACTIVATIONS.get("gelu") is gelu_tanh and ACTIVATIONS.get("gelu_exact") is gelu_exact
