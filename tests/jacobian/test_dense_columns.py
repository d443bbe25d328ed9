"""Dense J extras: column subsets, verified identity columns, streaming to disk."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dsb.jacobian import (
    identity_columns,
    jacobian_forward,
    jacobian_forward_to_disk,
    jacobian_reverse,
    make_training_run,
)

pytestmark = pytest.mark.usefixtures("float64")

D_IN, WIDTH, K, DEAD = 6, 5, 3, (1, 4)  # input features 1 and 4 are zero in every example


def _run(optimizer=None, dead=DEAD, steps=12):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 8, D_IN))
    x[..., list(dead)] = 0.0
    y = rng.integers(0, K, size=(4, 8))
    params = {
        "w1": jnp.asarray(rng.normal(size=(D_IN, WIDTH)) * 0.5),
        "b1": jnp.asarray(rng.normal(size=WIDTH) * 0.1),
        "w2": jnp.asarray(rng.normal(size=(WIDTH, K)) * 0.5),
    }

    def loss(p, b):
        logits = jnp.tanh(b["image"] @ p["w1"] + p["b1"]) @ p["w2"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, b["label"]).mean()

    opt = optimizer or optax.sgd(0.3, momentum=0.9)
    batches = {"image": jnp.asarray(x), "label": jnp.asarray(y)}
    return make_training_run(loss, params, opt, batches, num_steps=steps, dtype=jnp.float64)


def _dead_indices(run, theta0):
    """Flat indices of w1[dead, :] (ravel_pytree orders the dict keys b1, w1, w2)."""
    mask = run.unravel(jnp.zeros_like(theta0))
    mask["w1"] = mask["w1"].at[list(DEAD), :].set(1.0)
    flat = jax.flatten_util.ravel_pytree(mask)[0]
    return np.flatnonzero(np.asarray(flat))


def test_identity_columns_found_and_exact():
    run, theta0 = _run()
    want = jax.jacrev(run)(theta0)
    found = identity_columns(run, theta0)
    np.testing.assert_array_equal(found, _dead_indices(run, theta0))
    np.testing.assert_array_equal(np.asarray(want)[:, found], np.eye(theta0.size)[:, found])
    np.testing.assert_allclose(jacobian_forward(run, theta0), want, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(
        jacobian_forward(run, theta0, identity=found), want, rtol=1e-11, atol=1e-12
    )


def test_identity_columns_rejected_under_weight_decay():
    """Weight decay shrinks the frozen weights: their columns are (1 - lr wd)^T e_j, not
    e_j. The gradient test still proposes them; the J v = v check must refuse."""
    opt = optax.chain(optax.add_decayed_weights(0.1), optax.sgd(0.3, momentum=0.9))
    run, theta0 = _run(opt)
    want = jax.jacrev(run)(theta0)
    assert len(identity_columns(run, theta0)) == 0
    np.testing.assert_allclose(jacobian_forward(run, theta0), want, rtol=1e-11, atol=1e-12)
    with pytest.raises(ValueError, match="not all exactly e_j"):
        jacobian_forward(run, theta0, identity=_dead_indices(run, theta0))


def test_identity_columns_none_without_dead_inputs():
    run, theta0 = _run(dead=())
    assert len(identity_columns(run, theta0)) == 0


def test_column_subsets_and_chunk_balancing():
    run, theta0 = _run()
    full = np.asarray(jax.jacrev(run)(theta0))
    cols = np.array([40, 3, 17, 0, 44, 10, 9])
    for chunk in (None, 1, 2, 3, 5):
        got = jacobian_forward(run, theta0, columns=cols, chunk_size=chunk)
        np.testing.assert_allclose(got, full[:, cols], rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(jacobian_reverse(run, theta0, chunk_size=4), full, rtol=1e-11)
    with pytest.raises(ValueError, match="columns must lie"):
        jacobian_forward(run, theta0, columns=[theta0.size])


def test_to_disk_matches_and_resumes(tmp_path):
    run, theta0 = _run()
    want = np.asarray(jacobian_forward(run, theta0, identity=None))
    path = tmp_path / "J.npy"
    first = jacobian_forward_to_disk(run, theta0, path, block_columns=7, max_blocks=2)
    assert not first["complete"] and first["blocks_done"] == 2
    assert first["identity_columns"] == 2 * WIDTH
    prog = json.loads(path.with_name("J.npy.progress.json").read_text())
    assert prog["done"] == [0, 1]
    rest = jacobian_forward_to_disk(run, theta0, path, block_columns=7)
    assert rest["complete"] and rest["blocks_done"] == rest["blocks_total"] > 3
    assert not path.with_name("J.npy.progress.json").exists()
    np.testing.assert_allclose(np.load(path), want, rtol=1e-11, atol=1e-12)


def test_to_disk_refuses_a_different_run(tmp_path):
    run, theta0 = _run()
    path = tmp_path / "J.npy"
    jacobian_forward_to_disk(run, theta0, path, block_columns=7, max_blocks=1)
    with pytest.raises(ValueError, match="different J"):
        jacobian_forward_to_disk(run, theta0 + 1.0, path, block_columns=7)
