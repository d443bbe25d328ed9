"""RandAugment ops: ranges, geometry, determinism, and the trainer path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsb.data.randaugment import OPS, randaugment

RNG = np.random.default_rng(0)
IMG = jnp.asarray(RNG.uniform(size=(16, 16, 3)), jnp.float32)


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_keeps_shape_dtype_and_range(name):
    out = OPS[name](IMG, 0.9, jax.random.key(1))
    assert out.shape == IMG.shape and out.dtype == IMG.dtype
    assert float(out.min()) >= -1e-6 and float(out.max()) <= 1 + 1e-6


@pytest.mark.parametrize(
    "name",
    [
        "rotate",
        "shear_x",
        "shear_y",
        "translate_x",
        "translate_y",
        "contrast",
        "brightness",
        "sharpness",
        "color",
    ],
)
def test_signed_ops_are_identity_at_magnitude_zero(name):
    np.testing.assert_allclose(OPS[name](IMG, 0.0, jax.random.key(0)), IMG, atol=1e-5)


def test_geometry_of_translate_and_solarize():
    x = jnp.zeros((8, 8, 1)).at[2, 3, 0].set(1.0)
    moved = OPS["translate_x"](x, 1.0, jax.random.key(0))  # 0.45 * 8 = 3.6 px
    col = int(jnp.argmax(moved.sum(axis=(0, 2))))
    assert abs(col - 3) in (3, 4)
    np.testing.assert_allclose(OPS["solarize"](IMG, 0.5, None), jnp.where(IMG >= 0.5, 1 - IMG, IMG))
    post = OPS["posterize"](IMG, 1.0, None)  # 4 bits: at most 16 levels
    assert len(np.unique(np.asarray(post))) <= 16


def test_randaugment_is_deterministic_per_key_and_varies_across_keys():
    a = randaugment(IMG, jax.random.key(3), num_ops=2, magnitude=9)
    b = randaugment(IMG, jax.random.key(3), num_ops=2, magnitude=9)
    np.testing.assert_array_equal(a, b)
    outs = {np.asarray(randaugment(IMG, jax.random.key(k), 2, 9)).tobytes() for k in range(12)}
    assert len(outs) >= 8
    grey = randaugment(IMG[..., :1], jax.random.key(0), 3, 30)
    assert grey.shape == (16, 16, 1)


def test_augment_batch_applies_randaugment():
    from dsb.config import AugmentConfig
    from dsb.step import augment_batch

    x = jnp.asarray(RNG.uniform(size=(4, 8, 8, 1)), jnp.float32)
    aug = AugmentConfig(randaugment_num_ops=2, randaugment_magnitude=15)
    out = jax.jit(lambda x: augment_batch(x, jax.random.key(0), jnp.arange(4), aug))(x)
    assert out.shape == x.shape and not np.allclose(out, x)


def _switch_reference(x, key, num_ops, magnitude):
    """RandAugment written with ``lax.switch`` (the textbook form), outside any mesh."""
    m = jnp.clip(magnitude / 30.0, 0.0, 1.0)
    branches = [lambda x, k, f=f: f(x, m, k).astype(x.dtype) for f in OPS.values()]
    for key_op in jax.random.split(key, num_ops):
        k_choice, k_sign = jax.random.split(key_op)
        index = jax.random.randint(k_choice, (), 0, len(branches))
        x = jax.lax.switch(index, branches, x, k_sign)
    return x


def test_randaugment_inside_the_data_parallel_step_equals_the_switch_form():
    """Training with RandAugment used to fail to compile: a vmapped ``lax.switch`` inside
    ``shard_map`` ("Primitive mul requires varying manual axes to match"). The step's
    augmentation must be the textbook switch form, per example."""
    from jax.sharding import PartitionSpec as P

    from dsb import parallel
    from dsb.config import AugmentConfig
    from dsb.step import augment_batch

    aug = AugmentConfig(randaugment_num_ops=3, randaugment_magnitude=20)
    mesh = parallel.make_mesh(1)
    key = jax.random.key(5)

    def per_device(x):
        ids = jax.lax.axis_index(parallel.DATA_AXIS) * x.shape[0] + jnp.arange(x.shape[0])
        return augment_batch(x, key, ids, aug)

    step = parallel.data_parallel(
        per_device, mesh, in_specs=(P(parallel.DATA_AXIS),), out_specs=P(parallel.DATA_AXIS)
    )
    x = RNG.uniform(size=(16, 8, 8, 3)).astype(np.float32)
    got = np.asarray(jax.jit(step)(parallel.put_global_batch(x, mesh)))
    # augment_batch folds the example id into the key, then splits off the crop and flip
    # keys; RandAugment draws from fold_in(flip key, 7).
    # One compiled reference for every example (op by op it recompiled the switch each time).
    reference = jax.jit(_switch_reference, static_argnums=(2, 3))
    for i in range(len(x)):
        _, k_flip = jax.random.split(jax.random.fold_in(key, i))
        want = reference(jnp.asarray(x[i]), jax.random.fold_in(k_flip, 7), 3, 20)
        np.testing.assert_allclose(got[i], want, atol=1e-6)
    assert len({got[i].tobytes() for i in range(len(x))}) == len(x)
