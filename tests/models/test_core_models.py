"""Core image classifiers: mlp, lenet5, resnet/resnet18."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dsb.models import available_models, build_model
from dsb.models.layers import count_params

SIZES = [(8, 8, 1), (28, 28, 1), (32, 32, 3)]

# Small widths keep forward passes cheap; parameter counts of the full sizes are checked
# abstractly below.
SMALL = {
    "mlp": {"widths": (16,)},
    "lenet5": {},
    "resnet": {"depths": (1, 1), "width": 4},
    "resnet18": {"width": 4},
}


def _build(name, shape, num_classes=10, seed=0, **kw):
    kwargs = {**SMALL[name], **kw}
    return build_model(
        name, num_classes=num_classes, input_shape=shape, rngs=nnx.Rngs(seed), **kwargs
    )


def _abstract_count(name, shape, num_classes=10, **kw):
    model = nnx.eval_shape(
        lambda: build_model(
            name, num_classes=num_classes, input_shape=shape, rngs=nnx.Rngs(0), **kw
        )
    )
    return count_params(model)


def _batch(shape, n=8, num_classes=10, seed=0):
    kx, ky = jax.random.split(jax.random.key(seed))
    x = jax.random.uniform(kx, (n, *shape))
    y = jax.random.randint(ky, (n,), 0, num_classes)
    return x, y


def test_registered():
    assert {"mlp", "lenet5", "resnet", "resnet18"} <= set(available_models())


@pytest.mark.parametrize("shape", SIZES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", ["mlp", "lenet5", "resnet18"])
def test_output_shape_and_dtype(name, shape):
    # Abstract build and forward: shapes without compute (numerics are checked below).
    model = nnx.eval_shape(lambda: _build(name, shape, num_classes=7))
    model.eval()
    x_spec = jax.ShapeDtypeStruct((3, *shape), jnp.float32)
    logits = nnx.eval_shape(lambda m, x: m(x), model, x_spec)
    assert logits.shape == (3, 7)
    assert logits.dtype == jnp.float32


def test_param_counts():
    # The training-Jacobian reference MLP: Dense(64) -> GELU -> Dense(10) on 8x8 digits.
    assert (
        _abstract_count("mlp", (8, 8, 1), widths=(64,), activation="gelu", bias_init_std=0.125)
        == 4810
    )
    assert _abstract_count("mlp", (28, 28, 1)) == 784 * 512 + 512 + 512 * 512 + 512 + 5130
    # Classic LeNet-5 (MNIST 28x28 with a 'same' first conv, or 32x32 'valid').
    assert _abstract_count("lenet5", (28, 28, 1)) == 61_706
    assert _abstract_count("lenet5", (32, 32, 1)) == 61_706
    assert _abstract_count("lenet5", (8, 8, 1)) == 21_386
    # The documented P >= 60k LeNet for 8x8 digits.
    wide = _abstract_count("lenet5", (8, 8, 1), channels=(16, 32), hidden=(256, 128))
    assert wide == 80_458 >= 60_000
    assert _abstract_count("lenet5", (8, 8, 1), hidden=(240, 168)) == 60_350
    # CIFAR ResNet-18.
    assert _abstract_count("resnet18", (32, 32, 3)) == 11_173_962
    assert _abstract_count("resnet", (32, 32, 3), depths=(2, 2, 2, 2), width=64) == 11_173_962


def test_mlp_bias_init_std():
    m = build_model(
        "mlp",
        num_classes=10,
        input_shape=(8, 8, 1),
        rngs=nnx.Rngs(0),
        widths=(64,),
        activation="gelu",
        bias_init_std=0.125,
    )
    biases = np.concatenate([np.asarray(layer.bias[...]) for layer in m.layers])
    assert biases.shape == (74,)
    assert 0.09 < biases.std() < 0.16
    zero = build_model("mlp", num_classes=10, input_shape=(8, 8, 1), rngs=nnx.Rngs(0))
    assert all(float(jnp.abs(layer.bias[...]).max()) == 0.0 for layer in zero.layers)


def test_mlp_activation_matters_and_unknown_raises():
    x, _ = _batch((8, 8, 1), n=4)
    out = {a: _build("mlp", (8, 8, 1), activation=a)(x) for a in ("relu", "tanh", "gelu")}
    assert not np.allclose(out["relu"], out["tanh"])
    assert not np.allclose(out["relu"], out["gelu"])
    with pytest.raises(ValueError, match="unknown activation"):
        _build("mlp", (8, 8, 1), activation="swishy")


def test_impossible_sizes_raise():
    with pytest.raises(ValueError, match="too small"):
        _build("lenet5", (3, 3, 1))
    with pytest.raises(ValueError, match="input_shape"):
        _build("mlp", (8, 8))
    with pytest.raises(ValueError, match="no such option"):
        _build("resnet18", (8, 8, 1), depths=(1, 1))


def test_resnet_batchnorm_train_eval_differ():
    model = _build("resnet", (8, 8, 1))
    x, _ = _batch((8, 8, 1))
    forward = nnx.jit(lambda m, x: m(x))
    train_out = forward(model, x)
    assert bool(jnp.all(jnp.isfinite(train_out)))
    model.eval()
    eval_out = forward(model, x)
    assert not np.allclose(train_out, eval_out, atol=1e-4)
    model.train()
    # Training mode normalises with the batch's own statistics: same output again.
    np.testing.assert_allclose(forward(model, x), train_out, rtol=1e-5, atol=1e-5)
    # Training-mode calls moved the running statistics away from their init (0, 1).
    assert float(jnp.abs(model.stem_bn.mean[...]).max()) > 0


def test_norm_axis_name_reaches_every_batchnorm():
    model = _build("resnet", (8, 8, 1), norm_axis_name="data")
    bns = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]
    assert len(bns) == 1 + 2 * 2 + 1  # stem, two blocks of two, one projection
    assert all(bn.axis_name == "data" for bn in bns)


@pytest.mark.parametrize("name", ["mlp", "lenet5", "resnet"])
def test_one_step_lowers_loss(name):
    shape = (8, 8, 1)
    model = _build(name, shape)
    x, y = _batch(shape, n=16)
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    def loss_fn(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    @nnx.jit
    def step(m, o):
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        o.update(m, grads)
        return loss

    before = step(model, opt)
    after = nnx.jit(loss_fn)(model)
    assert float(after) < float(before)


def test_bfloat16_compute_keeps_float32_params():
    model = _build("resnet", (8, 8, 1), dtype=jnp.bfloat16)
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)
    model.eval()
    x, _ = _batch((8, 8, 1), n=2)
    low = nnx.jit(lambda m, x: m(x))(model, x)
    assert low.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(low)))


@pytest.mark.parametrize("shape", SIZES)
def test_lenet_im2col_is_the_same_function(shape):
    # conv_impl only changes how the convolutions and pools are computed: same parameters
    # (same init), same logits and same gradients as nnx.Conv / nnx.max_pool, for SAME
    # (8x8, 28x28) and VALID (32x32) padding.
    ref = _build("lenet5", shape)
    new = _build("lenet5", shape, conv_impl="im2col")
    ref_state, new_state = nnx.state(ref, nnx.Param), nnx.state(new, nnx.Param)
    assert jax.tree.all(
        jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), ref_state, new_state)
    )
    x, y = _batch(shape, n=4)

    def loss(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    np.testing.assert_allclose(new(x), ref(x), rtol=1e-5, atol=1e-6)
    g_ref, g_new = nnx.grad(loss)(ref), nnx.grad(loss)(new)
    for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_new)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="conv_impl"):
        _build("lenet5", shape, conv_impl="fft")


def test_max_pool_2x2_matches_nnx_on_odd_sizes():
    from dsb.models.layers import max_pool_2x2

    x = jax.random.normal(jax.random.key(0), (2, 7, 5, 3))
    want = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")
    np.testing.assert_array_equal(max_pool_2x2(x), want)


@pytest.mark.parametrize("name", ["mlp", "lenet5"])
def test_float64_models_keep_float64_logits(name):
    # Training-Jacobian runs in float64 must not pass through a float32 cast anywhere;
    # bfloat16 and float32 compute still hand back float32 logits.
    with jax.enable_x64(True):
        model = _build(name, (8, 8, 1), dtype=jnp.float64)
        x, _ = _batch((8, 8, 1), n=2)
        assert model(x.astype(jnp.float64)).dtype == jnp.float64
    assert _build(name, (8, 8, 1), dtype=jnp.bfloat16)(x).dtype == jnp.float32
