"""The pure run replays dsb.step.make_train_step exactly (same batches, same optimizer)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dsb import parallel
from dsb.jacobian import cross_entropy_loss, fixed_minibatches, make_training_run, nnx_apply
from dsb.models import build_model
from dsb.step import TrainState, make_train_step

# With jax x64 on, as every dsb.jacobian test runs.
pytestmark = pytest.mark.usefixtures("float64")


def test_pure_run_equals_trainer_steps():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(32, 4, 4, 1)).astype(np.float32)
    y = rng.integers(0, 3, size=32).astype(np.int32)
    model = build_model(
        "mlp",
        num_classes=3,
        input_shape=(4, 4, 1),
        rngs=nnx.Rngs(0),
        widths=(8,),
        activation="gelu",
        bias_init_std=0.125,
    )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    steps = 10
    tx = optax.sgd(optax.cosine_decay_schedule(0.1, steps), momentum=0.9)
    mesh = parallel.make_mesh(1)
    step_fn = make_train_step(graphdef, tx, mesh)
    state = TrainState(
        params=params,
        rest=rest,
        opt_state=tx.init(params),
        step=jnp.zeros((), jnp.int32),
        rng=jax.random.key(0),
    )
    state = jax.device_put(state, parallel.replicated(mesh))
    batches = fixed_minibatches(x, y, 8)
    apply, params0 = nnx_apply(model)
    run, theta0 = make_training_run(
        cross_entropy_loss(apply), params0, tx, batches, num_steps=steps
    )
    for i in range(steps):
        b = {"image": np.asarray(batches["image"][i % 4]), "label": y[(i % 4) * 8 :][:8]}
        state, _ = step_fn(state, parallel.put_global_batch(b, mesh))
    want = jax.flatten_util.ravel_pytree(state.params)[0]
    np.testing.assert_allclose(run(theta0), want, rtol=1e-5, atol=1e-6)
