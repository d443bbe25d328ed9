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


def test_randaugment_runs_inside_shard_map():
    # The trainer vmaps it under shard_map (dsb.step); a batched lax.switch there failed
    # JAX's varying-axes check on the geometric ops, so the CIFAR recipe could not train.
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((1,), ("data",))
    spec = NamedSharding(mesh, P("data"))

    def per_device(x, keys):
        return jax.vmap(lambda a, k: randaugment(a, k, 2, 9.0))(x, keys)

    step = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P("data"), out_specs=P("data")))
    x = np.stack([IMG] * 8)
    keys = jax.random.split(jax.random.key(0), 8)
    out = step(jax.device_put(x, spec), jax.device_put(keys, spec))
    want = jax.jit(per_device)(x, keys)
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), atol=1e-5)
