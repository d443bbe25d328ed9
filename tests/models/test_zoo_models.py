"""The DSB model zoo: ConvNeXt-V2, Swin-V2, RegNet-Y, ViT (plus the shared layers)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dsb.models import build_model
from dsb.models.convnext import GRN
from dsb.models.layers import DropPath, count_params
from dsb.models.regnet import regnet_widths
from dsb.models.swin import _relative_index, _shift_mask, auto_window

SIZES = [(8, 8, 1), (28, 28, 1), (32, 32, 3), (64, 64, 3)]

# The smallest configurations of each family's code path, sized for 2 CPU cores. The
# options a size needs (stem patch, ViT patch) follow the module docstrings.
TINY = {
    "convnext_v2": {"depths": (1, 1), "dims": (8, 16), "drop_path_rate": 0.5},
    "swin_v2": {"embed_dim": 8, "depths": (2, 2), "heads": (1, 2), "drop_path_rate": 0.5},
    "regnet_y": {"widths": (8, 16), "depths": (1, 2), "group_widths": (4, 8), "stem_width": 8},
    "vit": {"dim": 16, "depth": 2, "heads": 2, "drop_path_rate": 0.5, "dropout": 0.1},
}


def _size_kwargs(name, shape):
    h = shape[0]
    if name == "convnext_v2":
        return {"patch_size": 1 if h <= 8 else 2}
    if name == "vit":
        return {"patch_size": {8: 2, 64: 8}.get(h, 4)}
    if name == "regnet_y":
        return {"stem_stride": 1 if h <= 32 else 2}
    return {}


def _build(name, shape, num_classes=10, seed=0, **kw):
    kwargs = {**TINY[name], **_size_kwargs(name, shape), **kw}
    return build_model(
        name, num_classes=num_classes, input_shape=shape, rngs=nnx.Rngs(seed), **kwargs
    )


def _count(name, shape=(224, 224, 3), num_classes=1000, **kw):
    model = nnx.eval_shape(
        lambda: build_model(
            name, num_classes=num_classes, input_shape=shape, rngs=nnx.Rngs(0), **kw
        )
    )
    return count_params(model)


def _batch(shape, n=4, num_classes=10, seed=0):
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.uniform(kx, (n, *shape)), jax.random.randint(ky, (n,), 0, num_classes)


# Published ImageNet-1k parameter counts in millions, with the construction they refer to.
PUBLISHED = [
    ("convnext_v2_atto", {}, 3.7),
    ("convnext_v2_femto", {}, 5.2),
    ("convnext_v2_pico", {}, 9.1),
    ("convnext_v2_nano", {}, 15.6),
    ("convnext_v2_tiny", {}, 28.6),
    ("regnet_y_400mf", {}, 4.3),
    ("regnet_y_800mf", {}, 6.3),
    ("regnet_y_1_6gf", {}, 11.2),
    ("regnet_y_3_2gf", {}, 19.4),
    ("vit_tiny", {"patch_size": 16}, 5.7),
    ("vit_small", {"patch_size": 16}, 22.1),
]


@pytest.mark.parametrize(("name", "kw", "millions"), PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_published_param_counts(name, kw, millions):
    n = _count(name, **kw)
    # The papers round to 0.1M: accept exactly the counts that round to the quoted number.
    assert abs(n / 1e6 - millions) <= 0.05 + 1e-9, n


def test_swin_v2_tiny_param_count():
    # SwinV2-T at 256 px, patch 4, window 8: 28.3M.
    n = _count("swin_v2_tiny", shape=(256, 256, 3), patch_size=4, window_size=8)
    assert abs(n / 1e6 - 28.3) <= 0.05, n
    # Window and resolution change buffers and constants, never parameters.
    assert n == _count("swin_v2_tiny", shape=(64, 64, 3), patch_size=4, window_size=4)


def test_small_variant_param_counts():
    # 10-class small-image variants, as quoted in the module docstrings.
    expected = {
        ("convnext_v2_atto", (("patch_size", 2),)): 3_389_170,
        ("regnet_y_400mf", (("stem_stride", 1),)): 3_907_554,
        ("vit_tiny", (("patch_size", 4),)): 5_362_762,
        ("swin_v2_d40", ()): 4_854_878,
    }
    for (name, kw), n in expected.items():
        assert _count(name, shape=(32, 32, 3), num_classes=10, **dict(kw)) == n, name


@pytest.mark.parametrize("shape", SIZES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", sorted(TINY))
def test_output_shape_every_size(name, shape):
    # Built and run abstractly (no memory, no compile); the concrete numerics at 8x8 are
    # checked by the behaviour tests below.
    model = nnx.eval_shape(lambda: _build(name, shape, num_classes=5))
    model.eval()
    x_spec = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
    logits = nnx.eval_shape(lambda m, x: m(x), model, x_spec)
    assert logits.shape == (2, 5)
    assert logits.dtype == jnp.float32


def test_impossible_sizes_fail_at_construction():
    with pytest.raises(ValueError, match="patch_size"):
        _build("convnext_v2", (8, 8, 1), patch_size=16)
    with pytest.raises(ValueError, match="patch_size=4 must divide"):
        _build("vit", (30, 30, 1), patch_size=4)
    with pytest.raises(ValueError, match="window_size=7 does not tile"):
        _build("swin_v2", (32, 32, 3), window_size=7)
    with pytest.raises(ValueError, match="patch_size=2 must divide"):
        _build("swin_v2", (27, 27, 1))
    with pytest.raises(ValueError, match="multiple of group width"):
        _build("regnet_y", (32, 32, 3), widths=(8, 18))


def _loss(m, x, y, key):
    logits = m(x, rngs=nnx.Rngs(dropout=key))
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits


@nnx.jit
def _train_step(m, opt, x, y, key, other_key):
    # The same key before and after the update draws the same drop masks, so the two
    # losses are the same stochastic function evaluated at the old and new parameters.
    _, logits_other = _loss(m, x, y, other_key)
    (before, logits), grads = nnx.value_and_grad(_loss, has_aux=True)(m, x, y, key)
    opt.update(m, grads)
    after, _ = _loss(m, x, y, key)
    return before, after, logits, logits_other


_eval_forward = nnx.jit(lambda m, x: m(x))


# ViT (~30 s of init and compile on 2 cores) stays in the fast suite; the other families
# (45-60 s each, mostly eager compilation) run in the slow lane, which CI also runs.
_FAST_FAMILY, SLOW = "vit", pytest.mark.slow


@pytest.fixture(
    scope="module",
    params=[n if n == _FAST_FAMILY else pytest.param(n, marks=SLOW) for n in sorted(TINY)],
)
def behaviour(request):
    """Train-mode step, eval-mode and bfloat16 outputs of one tiny model at 8x8x1.

    One fixture per family shares the (dominant) init and compile costs among the tests.
    """
    name, shape = request.param, (8, 8, 1)
    # Swin: a 2x2 window on the 4x4 first stage exercises shifted windows and their mask.
    kw = {"window_size": 2} if name == "swin_v2" else {}
    x, y = _batch(shape, n=8)
    model = _build(name, shape, **kw)
    low = _build(name, shape, dtype=jnp.bfloat16, **kw)  # same seed: same parameters
    low_params = jax.tree.leaves(nnx.state(low, nnx.Param))
    out = {"name": name, "low_param_dtypes": {p.dtype for p in low_params}}
    low.eval()
    out["eval_bf16"] = _eval_forward(low, x)
    model.eval()
    out["eval"], out["eval_again"] = _eval_forward(model, x), _eval_forward(model, x)
    model.train()
    opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
    keys = jax.random.split(jax.random.key(0))
    out["before"], out["after"], out["train_k0"], out["train_k1"] = _train_step(
        model, opt, x, y, keys[0], keys[1]
    )
    return out


def test_train_and_eval_differ(behaviour):
    b = behaviour
    assert bool(jnp.all(jnp.isfinite(b["eval"]))) and bool(jnp.all(jnp.isfinite(b["train_k0"])))
    np.testing.assert_array_equal(b["eval"], b["eval_again"])
    assert not np.allclose(b["train_k0"], b["eval"], atol=1e-5)
    if b["name"] != "regnet_y":  # stochastic depth / dropout: the key matters in training
        assert not np.allclose(b["train_k0"], b["train_k1"], atol=1e-5)


def test_one_step_lowers_loss(behaviour):
    assert float(behaviour["after"]) < float(behaviour["before"])


def test_bfloat16_compute(behaviour):
    b = behaviour
    assert b["low_param_dtypes"] == {jnp.dtype(jnp.float32)}
    assert b["eval_bf16"].dtype == jnp.float32
    # Same parameters (same seed), so bfloat16 compute only perturbs the logits slightly.
    scale = float(jnp.abs(b["eval"]).max()) + 1e-3
    err = float(jnp.abs(b["eval_bf16"] - b["eval"]).max())
    assert err < 0.1 * scale + 0.05
    assert err > 0  # the low-precision path really ran


def test_norm_axis_name_reaches_regnet_batchnorms():
    model = _build("regnet_y", (8, 8, 1), norm_axis_name="data")
    bns = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]
    assert len(bns) > 5 and all(bn.axis_name == "data" for bn in bns)


def test_drop_path():
    layer = DropPath(0.25)
    x = jnp.ones((4000, 3))
    y = layer(x, rngs=nnx.Rngs(dropout=0))
    rows = np.asarray(y[:, 0])
    np.testing.assert_allclose(np.unique(rows), [0.0, 1 / 0.75], rtol=1e-6)
    assert np.all(y == y[:, :1])  # whole examples are dropped, not single units
    assert abs(rows.mean() - 1.0) < 0.05  # unbiased
    assert abs((rows == 0).mean() - 0.25) < 0.03
    with pytest.raises(ValueError, match="call-time rngs"):
        layer(x)
    layer.deterministic = True
    np.testing.assert_array_equal(layer(x), x)


def test_grn_formula():
    x = jax.random.normal(jax.random.key(0), (2, 3, 3, 4))
    grn = GRN(4)
    np.testing.assert_allclose(grn(x), x, rtol=1e-6)  # zero-initialised: identity
    grn.gamma[...] = jnp.full((4,), 0.5)
    grn.beta[...] = jnp.arange(4.0)
    xn = np.asarray(x, np.float64)
    g = np.sqrt((xn**2).sum(axis=(1, 2), keepdims=True))
    expected = 0.5 * xn * g / (g.mean(-1, keepdims=True) + 1e-6) + np.arange(4.0) + xn
    np.testing.assert_allclose(grn(x), expected, rtol=1e-5, atol=1e-5)


def test_regnet_width_rule():
    # Stage widths/depths of RegNetY-400MF from the RegNet paper's design space.
    assert regnet_widths(16, 48, 27.89, 2.09, 8) == ([48, 104, 208, 440], [1, 3, 6, 6], [8] * 4)


def test_swin_windows_and_masks():
    assert auto_window([(14, 14), (7, 7), (4, 4), (2, 2)]) == 7  # 28 px, patch 2
    assert auto_window([(16, 16), (8, 8), (4, 4), (2, 2)]) == 8  # 32 px, patch 2
    assert auto_window([(12, 12), (6, 6), (3, 3), (2, 2)]) == 6  # 24 px, patch 2
    idx = _relative_index(3, 3)
    assert idx.shape == (9, 9) and idx.min() == 0 and idx.max() == 24
    assert np.all(np.diag(idx) == 12)  # zero offset sits at the centre of the 5x5 table
    mask = _shift_mask(8, 8, (4, 4), (2, 2))
    assert mask.shape == (4, 16, 16)
    assert np.all(mask[0] == 0)  # the top-left window holds one contiguous region
    # The bottom-right window mixes four wrapped 2x2 regions: each token sees 4 tokens.
    assert np.all((mask[3] == 0).sum(-1) == 4)
    assert np.all((mask[1] == 0).sum(-1) == 8)  # two regions of 2x4


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("convnext_v2_atto", {"patch_size": 2}),
        ("swin_v2_d40", {}),
        ("regnet_y_400mf", {"stem_stride": 1}),
        ("vit_tiny", {"patch_size": 4}),
    ],
)
def test_full_small_variants_forward(name, kw):
    model = build_model(name, num_classes=10, input_shape=(32, 32, 3), rngs=nnx.Rngs(0), **kw)
    model.eval()
    logits = nnx.jit(lambda m, x: m(x))(model, _batch((32, 32, 3), n=2)[0])
    assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.slow
@pytest.mark.parametrize("shape", SIZES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize(
    "name", ["convnext_v2_atto", "swin_v2_d40", "regnet_y_400mf", "vit_tiny", "resnet18"]
)
def test_named_variants_defaults_every_size(name, shape):
    # With default options every named small-image variant accepts all four sizes.
    model = nnx.eval_shape(
        lambda: build_model(name, num_classes=10, input_shape=shape, rngs=nnx.Rngs(0))
    )
    model.eval()
    x_spec = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
    assert nnx.eval_shape(lambda m, x: m(x), model, x_spec).shape == (2, 10)


def test_named_variants_fix_their_hyperparameters_and_pass_the_rest():
    from dsb.models.registry import check_model_kwargs, register_variant
    from dsb.models.resnet import ResNet, resnet18

    # The variant is the family with fixed hyperparameters: same parameter count.
    kw = dict(num_classes=10, input_shape=(8, 8, 1))
    fam = nnx.eval_shape(lambda: build_model("resnet", rngs=nnx.Rngs(0), depths=(2, 2, 2, 2), **kw))
    var = nnx.eval_shape(lambda: build_model("resnet18", rngs=nnx.Rngs(0), **kw))
    assert count_params(fam) == count_params(var)
    # Other family arguments pass through with the family's defaults...
    check_model_kwargs("regnet_y_400mf", {"stem_stride": 1, "se_ratio": 0.5})
    narrow = nnx.eval_shape(lambda: build_model("resnet18", rngs=nnx.Rngs(0), width=8, **kw))
    assert count_params(narrow) < count_params(var)
    # ...and the fixed ones are refused, in the config check and when called directly.
    with pytest.raises(ValueError, match=r"kwargs\.depth"):
        check_model_kwargs("vit_tiny", {"depth": 3})
    with pytest.raises(ValueError, match=r"model\.kwargs\.depths"):
        build_model("resnet18", rngs=nnx.Rngs(0), depths=(1, 1, 1, 1), **kw)
    with pytest.raises(ValueError, match="fixed by the variant"):
        resnet18(rngs=nnx.Rngs(0), depths=(1, 1, 1, 1), **kw)
    with pytest.raises(TypeError, match="takes no"):
        register_variant("resnet_bad", ResNet, "", bogus=1)
