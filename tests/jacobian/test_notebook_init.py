"""dsb against the public training-Jacobian notebook (EleutherAI/training-jacobian).

The reference side is written here with flax linen, the way the notebook builds its
model (``Dense -> nn.gelu`` per hidden width, biases ``normal(width ** -0.5)``, the last
hidden width's scale reused for the output bias) and trains it (flat parameter vector,
``TrainState.apply_gradients``, nested ``lax.scan``, ``jax.jacfwd``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx
from flax.training.train_state import TrainState
from jax.flatten_util import ravel_pytree

from dsb.jacobian import (
    cross_entropy_loss,
    fixed_minibatches,
    jacobian_forward,
    linen_fold_in,
    make_training_run,
    nnx_apply,
    notebook_mlp_init,
    reference_optimizer,
)
from dsb.models import build_model


class LinenMLP(nn.Module):
    hidden: tuple[int, ...]
    out: int

    @nn.compact
    def __call__(self, x):
        for w in self.hidden:
            bias_init = nn.initializers.normal(stddev=w**-0.5)
            x = nn.gelu(nn.Dense(w, bias_init=bias_init)(x))
        return nn.Dense(self.out, bias_init=bias_init)(x)


def linen_theta0(hidden, d_in, out, seed):
    model = LinenMLP(tuple(hidden), out)
    params = model.init(jax.random.key(seed), jnp.zeros((3, d_in)))
    flat, unravel = ravel_pytree(params)
    return model, flat, unravel


def dsb_mlp(hidden, side, out, seed=123, activation="gelu"):
    model = build_model(
        "mlp",
        num_classes=out,
        input_shape=(side, side, 1),
        rngs=nnx.Rngs(seed),
        widths=tuple(hidden),
        activation=activation,
        bias_init_std=0.125,
    )
    return model


@pytest.mark.parametrize(
    ("hidden", "side", "seed"), [((64,), 8, 0), ((64,), 8, 1), ((16, 8), 3, 7)]
)
def test_notebook_init_is_linen_init_bit_for_bit(hidden, side, seed):
    _, ref, _ = linen_theta0(hidden, side * side, 10, seed)
    model = dsb_mlp(hidden, side, 10)
    notebook_mlp_init(model, seed)
    _, params = nnx_apply(model)
    theta0, _ = ravel_pytree(params)
    assert theta0.dtype == ref.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(theta0), np.asarray(ref))


def test_linen_fold_in_matches_flax_and_rejects_bad_data():
    from flax.core.scope import LazyRng

    key = jax.random.key(3)
    for data in [("Dense_0", 1), ("Dense_12", 2), ("a", 300, "b")]:
        want = LazyRng.create(key, *data).as_jax_rng()
        got = linen_fold_in(key, *data)
        np.testing.assert_array_equal(jax.random.key_data(got), jax.random.key_data(want))
    with pytest.raises(ValueError, match="expected str or int"):
        linen_fold_in(key, -1)
    with pytest.raises(ValueError, match="at least one hidden layer"):
        notebook_mlp_init(dsb_mlp((), 3, 4), 0)


def test_gelu_is_the_notebooks_tanh_gelu():
    lmodel, ref, unravel = linen_theta0((64,), 64, 10, 0)
    x = np.random.default_rng(0).uniform(size=(32, 8, 8, 1)).astype(np.float32)
    want = lmodel.apply(unravel(ref), x.reshape(32, 64))
    out = {}
    for act in ("gelu", "gelu_tanh", "gelu_exact"):
        model = dsb_mlp((64,), 8, 10, activation=act)
        notebook_mlp_init(model, 0)
        out[act] = np.asarray(model(x))
    np.testing.assert_allclose(out["gelu"], want, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(out["gelu"], out["gelu_tanh"])
    assert np.abs(out["gelu_exact"] - want).max() > 1e-4


def notebook_style_run(lmodel, unravel, x_bxd, y_b, batch, epochs, tx):
    """The notebook's train(): flat params in a TrainState, scans over epochs x batches."""
    xb = jnp.reshape(x_bxd, (-1, batch, x_bxd.shape[-1]))
    yb = jnp.reshape(y_b, (-1, batch))

    def loss(params, x, y):
        logits = lmodel.apply(unravel(params["p"]), x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def train(flat):
        state = TrainState.create(apply_fn=None, params={"p": flat}, tx=tx)

        def step(st, b):
            return st.apply_gradients(grads=jax.grad(loss)(st.params, *b)), None

        def epoch(st, _):
            return jax.lax.scan(step, st, (xb, yb))[0], None

        return jax.lax.scan(epoch, state, jnp.arange(epochs))[0].params["p"]

    return train


def test_notebook_run_and_jacobian_match_dsb():
    """Small version of the notebook's run (width 8 on 4x4 inputs): same theta_T, same J."""
    rng = np.random.default_rng(0)
    n, batch, epochs = 48, 16, 3
    x = rng.uniform(size=(n, 4, 4, 1)).astype(np.float32)
    y = rng.integers(0, 10, size=n)
    lmodel, ref0, unravel = linen_theta0((8,), 16, 10, 0)
    steps = epochs * n // batch
    train = notebook_style_run(
        lmodel, unravel, x.reshape(n, 16), y, batch, epochs, reference_optimizer(steps)
    )
    model = dsb_mlp((8,), 4, 10)
    notebook_mlp_init(model, 0)
    apply, params = nnx_apply(model)
    run, theta0 = make_training_run(
        cross_entropy_loss(apply),
        params,
        reference_optimizer(steps),
        fixed_minibatches(x, y, batch),
        num_epochs=epochs,
    )
    np.testing.assert_array_equal(np.asarray(theta0), np.asarray(ref0))
    th_ref, th = np.asarray(jax.jit(train)(ref0)), np.asarray(jax.jit(run)(theta0))
    assert np.abs(th - np.asarray(theta0)).max() > 1e-2  # it trained
    np.testing.assert_allclose(th, th_ref, rtol=0, atol=1e-5)
    j_ref = np.asarray(jax.jacfwd(train)(ref0), np.float64)
    j = np.asarray(jacobian_forward(run, theta0), np.float64)
    np.testing.assert_allclose(j, j_ref, rtol=0, atol=1e-4)
    s_ref, s = np.linalg.svd(j_ref, compute_uv=False), np.linalg.svd(j, compute_uv=False)
    np.testing.assert_allclose(s, s_ref, rtol=1e-4, atol=1e-5)
