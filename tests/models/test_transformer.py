"""Shapes, causality, options and contract checks of the decoder-only transformer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dsb.models.transformer import Transformer, rotary_embedding


def _model(**kw):
    kw = {"num_layers": 2, "d_model": 32, "num_heads": 4, **kw}
    return Transformer(num_classes=11, input_shape=(16,), rngs=nnx.Rngs(0), **kw)


@pytest.mark.parametrize("positional", ["learned", "rotary"])
@pytest.mark.parametrize("tie", [True, False])
def test_shapes_and_causality(positional, tie):
    model = _model(positional=positional, tie_embeddings=tie)
    tokens = np.random.default_rng(0).integers(0, 11, size=(3, 16)).astype(np.int32)
    logits = model(jnp.asarray(tokens))
    assert logits.shape == (3, 16, 11) and logits.dtype == jnp.float32
    for j in (0, 5, 15):
        changed = tokens.copy()
        changed[:, j] = (changed[:, j] + 1) % 11
        out = model(jnp.asarray(changed))
        np.testing.assert_allclose(out[:, :j], logits[:, :j], atol=1e-6)
        assert np.abs(np.asarray(out[:, j]) - np.asarray(logits[:, j])).max() > 1e-4
    # a shorter input gives the same logits on the shared prefix
    np.testing.assert_allclose(model(jnp.asarray(tokens[:, :7])), logits[:, :7], atol=1e-5)


def test_parameter_count_matches_docstring():
    model = Transformer(num_classes=256, input_shape=(128,), rngs=nnx.Rngs(0))
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert n == 445_952


def test_tied_head_is_the_embedding():
    model = _model(tie_embeddings=True)
    state = nnx.state(model, nnx.Param)
    assert "head" not in state or state["head"] is None
    untied = _model(tie_embeddings=False)
    assert untied.head.kernel.shape == (32, 11)


def test_dropout_uses_call_time_rngs_and_is_off_in_eval():
    model = _model(dropout_rate=0.5)
    x = jnp.zeros((2, 16), jnp.int32)
    a = model(x, rngs=nnx.Rngs(dropout=1))
    b = model(x, rngs=nnx.Rngs(dropout=2))
    assert np.abs(np.asarray(a - b)).max() > 1e-4
    model.eval()
    np.testing.assert_array_equal(model(x), model(x))


def test_bfloat16_compute_gives_float32_logits():
    model = _model(dtype=jnp.bfloat16)
    out = model(jnp.zeros((2, 16), jnp.int32))
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
    assert model.embed.embedding.value.dtype == jnp.float32


def test_rotary_is_relative():
    # <rot(q, i), rot(k, j)> depends only on i - j.
    rng = np.random.default_rng(0)
    q = jnp.asarray(np.repeat(rng.normal(size=(1, 1, 1, 8)), 6, axis=1), jnp.float32)
    k = jnp.asarray(np.repeat(rng.normal(size=(1, 1, 1, 8)), 6, axis=1), jnp.float32)
    rq, rk = rotary_embedding(q)[0, :, 0], rotary_embedding(k)[0, :, 0]
    dots = np.asarray(rq @ rk.T)
    np.testing.assert_allclose(dots[3, 1], dots[5, 3], rtol=1e-5)
    np.testing.assert_allclose(dots[2, 2], dots[0, 0], rtol=1e-5)


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="divisible"):
        _model(d_model=30, num_heads=4)
    with pytest.raises(ValueError, match="input_shape"):
        Transformer(num_classes=11, input_shape=(4, 4, 1), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="positional"):
        _model(positional="alibi")
    with pytest.raises(ValueError, match="exceed"):
        _model()(jnp.zeros((1, 17), jnp.int32))


def test_registered_under_transformer():
    from dsb.models.registry import MODELS

    assert MODELS.get("transformer") is Transformer
