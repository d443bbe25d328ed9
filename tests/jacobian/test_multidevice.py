import textwrap

import pytest
from dsb_testing import run_python

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, optax
    jax.config.update("jax_enable_x64", True)
    from dsb.jacobian import jacobian_forward, jacobian_reverse, make_training_run
    assert len(jax.devices()) == 2
    rng = np.random.default_rng(0)
    phi, y = rng.normal(size=(12, 7)), rng.normal(size=12)
    loss = lambda w, b: 0.5 * jnp.sum((b["x"] @ w - b["y"]) ** 2)
    batches = {"x": jnp.asarray(phi)[None], "y": jnp.asarray(y)[None]}
    run, w0 = make_training_run(loss, jnp.asarray(rng.normal(size=7)), optax.sgd(0.05),
                                batches, num_steps=9, dtype=jnp.float64)
    want = np.linalg.matrix_power(np.eye(7) - 0.05 * phi.T @ phi, 9)
    np.testing.assert_allclose(jacobian_forward(run, w0, chunk_size=2, num_devices=2), want,
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jacobian_reverse(run, w0, chunk_size=3, num_devices=2), want,
                               rtol=1e-12, atol=1e-12)
    print("ok")
    """
)


@pytest.mark.multidevice
def test_dense_chunks_split_over_two_devices():
    out = run_python(SCRIPT, devices=2, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
