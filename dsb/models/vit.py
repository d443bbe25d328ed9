"""Vision Transformer (Dosovitskiy et al. 2021) with a class token and learned positions.

Patchify with a ``patch_size`` conv, prepend a class token, add learned position
embeddings, run pre-norm blocks ``x + DropPath(Attn(LN(x)))``, ``x + DropPath(MLP(LN(x)))``,
final LayerNorm, classify the class token. ``patch_size=4`` suits 32x32 (64 tokens);
use 2 at 8x8 and 4 at 28x28. H and W must be multiples of ``patch_size``.

Parameter counts (the position table depends on the number of tokens):

=====================  ===================================  =========================
variant                1000 classes, 224x224x3, patch 16    10 classes, 32x32x3, p 4
=====================  ===================================  =========================
vit_tiny (192, 12, 3)  5,717,416   (paper 5.7M)             5,362,762
vit_small (384, 12, 6) 22,050,664  (paper 22.1M)            21,342,346
=====================  ===================================  =========================
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dsb.models.layers import DropPath, check_input_shape, drop_path_rates, upcast
from dsb.models.registry import register, register_variant

__all__ = ["VIT_VARIANTS", "Attention", "ViT"]

# name: (dim, depth, heads); MLP width is 4 * dim.
VIT_VARIANTS: dict[str, tuple[int, int, int]] = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
}

_init = nnx.initializers.truncated_normal(stddev=0.02)


class Attention(nnx.Module):
    """Multi-head self-attention on ``[B, N, D]`` with a fused qkv projection."""

    def __init__(self, dim: int, heads: int, *, dtype, rngs: nnx.Rngs):
        if dim % heads:
            raise ValueError(f"attention: dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nnx.Linear(dim, 3 * dim, kernel_init=_init, dtype=dtype, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, kernel_init=_init, dtype=dtype, rngs=rngs)

    def __call__(self, x_BxNxD: jax.Array) -> jax.Array:
        b, n, d = x_BxNxD.shape
        qkv = self.qkv(x_BxNxD).reshape(b, n, 3, self.heads, d // self.heads)
        q_BxNxHxE, k_BxNxHxE, v_BxNxHxE = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        scale = (d // self.heads) ** -0.5
        logits_BxHxNxN = jnp.einsum("bqhe,bkhe->bhqk", q_BxNxHxE * scale, k_BxNxHxE)
        # Softmax in float32 so bfloat16 compute stays stable.
        attn = jax.nn.softmax(upcast(logits_BxHxNxN), axis=-1).astype(x_BxNxD.dtype)
        out_BxNxHxE = jnp.einsum("bhqk,bkhe->bqhe", attn, v_BxNxHxE)
        return self.proj(out_BxNxHxE.reshape(b, n, d))


class EncoderBlock(nnx.Module):
    def __init__(self, dim, heads, drop_path, dropout, *, dtype, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(dim, epsilon=1e-6, dtype=dtype, rngs=rngs)
        self.attn = Attention(dim, heads, dtype=dtype, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, epsilon=1e-6, dtype=dtype, rngs=rngs)
        self.fc1 = nnx.Linear(dim, 4 * dim, kernel_init=_init, dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(4 * dim, dim, kernel_init=_init, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(dropout)
        self.drop_path = DropPath(drop_path)

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        y = self.dropout(self.attn(self.norm1(x)), rngs=rngs)
        x = x + self.drop_path(y, rngs=rngs)
        y = self.fc2(
            self.dropout(jax.nn.gelu(self.fc1(self.norm2(x)), approximate=False), rngs=rngs)
        )
        return x + self.drop_path(self.dropout(y, rngs=rngs), rngs=rngs)


class ViT(nnx.Module):
    """ViT classifier.

    Args:
      dim, depth, heads: transformer width, number of blocks, attention heads.
      patch_size: side of the square patches; must divide H and W.
      drop_path_rate: stochastic-depth rate of the last block (linear from 0).
      dropout: dropout rate after attention and inside the MLP.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: tuple[int, int, int],
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
        norm_axis_name: str | None = None,  # LayerNorm only; accepted for the contract
        dim: int = 192,
        depth: int = 12,
        heads: int = 3,
        patch_size: int = 4,
        drop_path_rate: float = 0.0,
        dropout: float = 0.0,
    ):
        h, w, c = check_input_shape(input_shape, "vit")
        if patch_size < 1 or h % patch_size or w % patch_size:
            raise ValueError(
                f"vit: patch_size={patch_size} must divide the input size {h}x{w} "
                "(e.g. 2 at 8x8, 4 at 28x28 and 32x32, 8 at 64x64)"
            )
        self.dtype = dtype
        n_tokens = (h // patch_size) * (w // patch_size) + 1
        self.patch = nnx.Conv(
            c,
            dim,
            (patch_size, patch_size),
            strides=patch_size,
            padding="VALID",
            kernel_init=_init,
            dtype=dtype,
            rngs=rngs,
        )
        self.cls = nnx.Param(jnp.zeros((1, 1, dim), jnp.float32))
        self.pos = nnx.Param(_init(rngs.params(), (1, n_tokens, dim), jnp.float32))
        (rates,) = drop_path_rates(drop_path_rate, [depth])
        self.blocks = nnx.List(
            [EncoderBlock(dim, heads, r, dropout, dtype=dtype, rngs=rngs) for r in rates]
        )
        self.norm = nnx.LayerNorm(dim, epsilon=1e-6, dtype=dtype, rngs=rngs)
        self.head = nnx.Linear(dim, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, x_BxHxWxC: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        x = self.patch(x_BxHxWxC.astype(self.dtype))
        b, _, _, d = x.shape
        x_BxNxD = x.reshape(b, -1, d)
        cls_Bx1xD = jnp.broadcast_to(self.cls[...], (b, 1, d)).astype(x.dtype)
        x_BxNxD = jnp.concatenate([cls_Bx1xD, x_BxNxD], axis=1) + self.pos[...].astype(x.dtype)
        for block in self.blocks:
            x_BxNxD = block(x_BxNxD, rngs=rngs)
        return upcast(self.head(self.norm(x_BxNxD[:, 0])))


register("vit")(ViT)
for _v, (_dim, _depth, _heads) in VIT_VARIANTS.items():
    globals()[f"vit_{_v}"] = register_variant(
        f"vit_{_v}",
        ViT,
        f"ViT-{_v}: dim {_dim}, depth {_depth}, heads {_heads}.",
        dim=_dim,
        depth=_depth,
        heads=_heads,
    )
    __all__.append(f"vit_{_v}")
