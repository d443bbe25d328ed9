"""Decoder-only transformer language model (pre-LN, causal self-attention).

``tokens [b, t] int -> Embed -> [Block] * num_layers -> LayerNorm -> head -> logits [b, t, V]``
with ``Block(x) = x + Attn(LN(x)); x + MLP(LN(x))``. Position ``t`` of the logits predicts
token ``t + 1``; causality is exact (position ``t`` never sees tokens ``> t``).

For the registry contract (see ``dsb.models.registry``) an LM reads ``num_classes`` as the
vocabulary size and ``input_shape`` as ``(context_length,)``. Inputs shorter than the
context are accepted; longer ones raise.

Positional schemes: ``"learned"`` (absolute embeddings added to the token embeddings) and
``"rotary"`` (RoPE on queries and keys, half-split convention). ``tie_embeddings`` reuses
the token embedding matrix as the output head. Initialisation follows GPT-2: normal(0.02)
everywhere, residual output projections scaled by ``1 / sqrt(2 * num_layers)``.

Parameter count: embeddings V*d (+ T*d learned positions, + d*V untied head), per block
12*d^2 + 13*d (mlp_ratio 4, biases and LayerNorms included), final LayerNorm 2*d. With
``V=256, T=128, d=128, L=2``, tied, learned: 445,952 (checked in the tests).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from dsb.models.layers import upcast
from dsb.models.registry import register

__all__ = ["Transformer", "causal_attention", "rotary_embedding"]

POSITIONAL_SCHEMES = ("learned", "rotary")


def rotary_embedding(x_BxTxHxK: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotate pairs ``(x[..., i], x[..., i + K/2])`` by angle ``t * base^(-2i/K)``."""
    _, t, _, k = x_BxTxHxK.shape
    half = k // 2
    inv_freq_F = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle_TxF = jnp.arange(t, dtype=jnp.float32)[:, None] * inv_freq_F[None, :]
    cos = jnp.cos(angle_TxF)[None, :, None, :]
    sin = jnp.sin(angle_TxF)[None, :, None, :]
    x1 = x_BxTxHxK[..., :half].astype(jnp.float32)
    x2 = x_BxTxHxK[..., half:].astype(jnp.float32)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxTxHxK.dtype)


def causal_attention(q_BxTxHxK: jax.Array, k_BxTxHxK: jax.Array, v_BxTxHxK: jax.Array):
    """Softmax attention with a lower-triangular mask; softmax in float32."""
    t, kdim = q_BxTxHxK.shape[1], q_BxTxHxK.shape[-1]
    scores_BxHxTxT = upcast(jnp.einsum("bqhk,bshk->bhqs", q_BxTxHxK, k_BxTxHxK))
    scores_BxHxTxT = scores_BxHxTxT / math.sqrt(kdim)
    mask_TxT = jnp.tril(jnp.ones((t, t), dtype=bool))
    scores_BxHxTxT = jnp.where(mask_TxT, scores_BxHxTxT, jnp.finfo(scores_BxHxTxT.dtype).min)
    probs = jax.nn.softmax(scores_BxHxTxT, axis=-1).astype(v_BxTxHxK.dtype)
    return jnp.einsum("bhqs,bshk->bqhk", probs, v_BxTxHxK)


class _Block(nnx.Module):
    def __init__(self, d, heads, mlp_ratio, dropout_rate, rotary, rope_base, out_std, dtype, rngs):
        init = nnx.initializers.normal(0.02)
        out_init = nnx.initializers.normal(out_std)
        self.heads, self.rotary, self.rope_base = heads, rotary, rope_base
        self.ln1 = nnx.LayerNorm(d, epsilon=1e-5, dtype=dtype, rngs=rngs)
        self.qkv = nnx.Linear(d, 3 * d, kernel_init=init, dtype=dtype, rngs=rngs)
        self.proj = nnx.Linear(d, d, kernel_init=out_init, dtype=dtype, rngs=rngs)
        self.ln2 = nnx.LayerNorm(d, epsilon=1e-5, dtype=dtype, rngs=rngs)
        self.fc1 = nnx.Linear(d, mlp_ratio * d, kernel_init=init, dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(mlp_ratio * d, d, kernel_init=out_init, dtype=dtype, rngs=rngs)
        self.drop = nnx.Dropout(dropout_rate, rngs=rngs) if dropout_rate > 0 else None

    def _dropout(self, x, rngs):
        return x if self.drop is None else self.drop(x, rngs=rngs)

    def __call__(self, x_BxTxD, rngs=None):
        b, t, d = x_BxTxD.shape
        qkv = self.qkv(self.ln1(x_BxTxD)).reshape(b, t, 3, self.heads, d // self.heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.rotary:
            q, k = rotary_embedding(q, self.rope_base), rotary_embedding(k, self.rope_base)
        attn_BxTxD = causal_attention(q, k, v).reshape(b, t, d)
        x_BxTxD = x_BxTxD + self._dropout(self.proj(attn_BxTxD), rngs)
        h = jax.nn.gelu(self.fc1(self.ln2(x_BxTxD)))
        return x_BxTxD + self._dropout(self.fc2(h), rngs)


@register("transformer")
class Transformer(nnx.Module):
    """GPT-style decoder-only LM.

    Args:
      num_layers, d_model, num_heads, mlp_ratio: depth, width, heads, MLP expansion.
      positional: ``"learned"`` or ``"rotary"``.
      tie_embeddings: output head = token embedding matrix (transposed).
      dropout_rate: residual/embedding dropout; 0 (default) builds no dropout layers.
      rope_base: RoPE frequency base.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: tuple[int, ...],
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
        norm_axis_name: str | None = None,  # no BatchNorm; accepted for the contract
        num_layers: int = 2,
        d_model: int = 128,
        num_heads: int = 4,
        mlp_ratio: int = 4,
        positional: str = "learned",
        tie_embeddings: bool = True,
        dropout_rate: float = 0.0,
        rope_base: float = 10000.0,
    ):
        if len(tuple(input_shape)) != 1 or int(input_shape[0]) < 1:
            raise ValueError(
                f"transformer: input_shape must be (context_length,), got {tuple(input_shape)}"
            )
        if num_classes < 2:
            raise ValueError(f"transformer: vocab size (num_classes) must be >= 2: {num_classes}")
        if d_model % num_heads:
            raise ValueError(f"transformer: d_model={d_model} not divisible by {num_heads} heads")
        if positional not in POSITIONAL_SCHEMES:
            raise ValueError(f"transformer: positional must be one of {POSITIONAL_SCHEMES}")
        if positional == "rotary" and (d_model // num_heads) % 2:
            raise ValueError("transformer: rotary positions need an even head dimension")
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"transformer: dropout_rate must be in [0, 1): {dropout_rate}")
        self.context_length = int(input_shape[0])
        self.vocab_size = int(num_classes)
        self.dtype = dtype
        self.tie_embeddings = tie_embeddings
        init = nnx.initializers.normal(0.02)
        self.embed = nnx.Embed(num_classes, d_model, embedding_init=init, dtype=dtype, rngs=rngs)
        self.pos_embed = (
            nnx.Embed(self.context_length, d_model, embedding_init=init, dtype=dtype, rngs=rngs)
            if positional == "learned"
            else None
        )
        self.drop = nnx.Dropout(dropout_rate, rngs=rngs) if dropout_rate > 0 else None
        out_std = 0.02 / math.sqrt(2 * num_layers)
        self.blocks = nnx.List(
            [
                _Block(
                    d_model,
                    num_heads,
                    mlp_ratio,
                    dropout_rate,
                    positional == "rotary",
                    rope_base,
                    out_std,
                    dtype,
                    rngs,
                )
                for _ in range(num_layers)
            ]
        )
        self.ln_f = nnx.LayerNorm(d_model, epsilon=1e-5, dtype=dtype, rngs=rngs)
        self.head = (
            None
            if tie_embeddings
            else nnx.Linear(
                d_model, num_classes, use_bias=False, kernel_init=init, dtype=dtype, rngs=rngs
            )
        )

    def __call__(self, tokens_BxT: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        """``tokens [b, t]`` (t <= context_length) -> float32 logits ``[b, t, vocab]``."""
        if tokens_BxT.ndim != 2:
            raise ValueError(f"transformer: expected tokens [b, t], got shape {tokens_BxT.shape}")
        t = tokens_BxT.shape[1]
        if t > self.context_length:
            raise ValueError(f"transformer: {t} tokens exceed context {self.context_length}")
        tokens_BxT = tokens_BxT.astype(jnp.int32)
        x_BxTxD = self.embed(tokens_BxT)
        if self.pos_embed is not None:
            x_BxTxD = x_BxTxD + self.pos_embed(jnp.arange(t))[None]
        if self.drop is not None:
            x_BxTxD = self.drop(x_BxTxD, rngs=rngs)
        for block in self.blocks:
            x_BxTxD = block(x_BxTxD, rngs)
        x_BxTxD = self.ln_f(x_BxTxD)
        logits_BxTxV = self.embed.attend(x_BxTxD) if self.head is None else self.head(x_BxTxD)
        return upcast(logits_BxTxV)
