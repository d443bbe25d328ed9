"""Swin Transformer V2 (Liu et al. 2022) for small images.

Patch embedding ``Conv(p x p, stride p) -> LayerNorm``; four stages of blocks with
(shifted) window attention, separated by patch merging (2x2 neighbours concatenated ->
``Linear(4C, 2C)`` -> LayerNorm; odd sizes are zero padded); head ``LayerNorm -> mean ->
Linear``. V2 specifics: residual post-norm ``x + DropPath(LN(f(x)))``, scaled cosine
attention with a learned per-head temperature (clamped at 100), and a continuous relative
position bias from an MLP (2 -> 512 -> heads) over log-spaced relative coordinates,
``16 * sigmoid(.)``. Masks, coordinate tables and indices are trace-time constants.

Windows: ``window_size=None`` picks the largest w <= 8 such that every stage's feature map
is either a multiple of w or no larger than w (28 px, patch 2 -> 7; 32 and 64 px -> 8).
Where a feature map fits in one window, the window shrinks to it and is not shifted.

Parameter counts (independent of H, W and window size):

===================================  =============================  ====================
variant (embed dim, heads)           1000 classes, 3 ch             10 classes, 3 ch, p 2
===================================  =============================  ====================
swin_v2_d40  (40; 2, 4, 8, 16)       5,174,108                      4,854,878
swin_v2_d64  (64; 2, 4, 8, 16)       12,809,732                     12,299,558
swin_v2_tiny (96; 3, 6, 12, 24)      28,347,154 (SwinV2-T, 28.3M)   27,582,388
===================================  =============================  ====================
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dsb.models.layers import DropPath, check_input_shape, drop_path_rates, upcast
from dsb.models.registry import register, register_variant

__all__ = ["SWIN_V2_VARIANTS", "SwinV2", "auto_window"]

# name: (embed_dim, heads per stage); depths default to (2, 2, 6, 2).
SWIN_V2_VARIANTS: dict[str, tuple[int, tuple[int, ...]]] = {
    "d40": (40, (2, 4, 8, 16)),
    "d64": (64, (2, 4, 8, 16)),
    "tiny": (96, (3, 6, 12, 24)),
}

_init = nnx.initializers.truncated_normal(stddev=0.02)


def _stage_sizes(h: int, w: int, n_stages: int) -> list[tuple[int, int]]:
    sizes = [(h, w)]
    for _ in range(n_stages - 1):
        h, w = -(-h // 2), -(-w // 2)
        sizes.append((h, w))
    return sizes


def _fits(window: int, sizes: Sequence[tuple[int, int]]) -> bool:
    return all(r <= window or r % window == 0 for hw in sizes for r in hw)


def auto_window(sizes: Sequence[tuple[int, int]], max_window: int = 8) -> int:
    """Largest window <= ``max_window`` that tiles every stage (see module docstring)."""
    return next(w for w in range(max_window, 0, -1) if _fits(w, sizes))


def _coords_table(wh: int, ww: int) -> np.ndarray:
    """Log-spaced relative coordinates ``[(2wh-1)(2ww-1), 2]`` fed to the CPB MLP."""
    dh = np.arange(-(wh - 1), wh, dtype=np.float32) / max(wh - 1, 1)
    dw = np.arange(-(ww - 1), ww, dtype=np.float32) / max(ww - 1, 1)
    table = np.stack(np.meshgrid(dh, dw, indexing="ij"), axis=-1).reshape(-1, 2) * 8.0
    return np.sign(table) * np.log2(np.abs(table) + 1.0) / np.log2(8.0)


def _relative_index(wh: int, ww: int) -> np.ndarray:
    """``[N, N]`` index into the coordinate table for the N = wh * ww window tokens."""
    coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")).reshape(2, -1)
    rel = coords[:, :, None] - coords[:, None, :]
    return (rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)


def _shift_mask(h: int, w: int, win: tuple[int, int], shift: tuple[int, int]) -> np.ndarray:
    """``[nW, N, N]`` additive mask keeping attention inside each pre-shift region."""
    region = np.zeros((h, w), np.int32)
    cnt = 0
    hs = [slice(0, h - win[0]), slice(h - win[0], h - shift[0]), slice(h - shift[0], h)]
    ws = [slice(0, w - win[1]), slice(w - win[1], w - shift[1]), slice(w - shift[1], w)]
    if shift[0] == 0:
        hs = [slice(0, h)]
    if shift[1] == 0:
        ws = [slice(0, w)]
    for a in hs:
        for b in ws:
            region[a, b] = cnt
            cnt += 1
    ids = region.reshape(h // win[0], win[0], w // win[1], win[1]).transpose(0, 2, 1, 3)
    ids = ids.reshape(-1, win[0] * win[1])
    return np.where(ids[:, :, None] != ids[:, None, :], -100.0, 0.0).astype(np.float32)


def _partition(x_BxHxWxC: jax.Array, win: tuple[int, int]) -> jax.Array:
    b, h, w, c = x_BxHxWxC.shape
    x = x_BxHxWxC.reshape(b, h // win[0], win[0], w // win[1], win[1], c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, win[0] * win[1], c)


def _merge(x_WxNxC: jax.Array, win: tuple[int, int], b: int, h: int, w: int) -> jax.Array:
    c = x_WxNxC.shape[-1]
    x = x_WxNxC.reshape(b, h // win[0], w // win[1], win[0], win[1], c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


class WindowAttentionV2(nnx.Module):
    """Scaled cosine attention with continuous position bias, on ``[B*nW, N, C]``."""

    def __init__(self, dim: int, heads: int, *, dtype, rngs: nnx.Rngs):
        if dim % heads:
            raise ValueError(f"swin_v2: dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.dtype = dtype
        self.qkv = nnx.Linear(
            dim, 3 * dim, use_bias=False, kernel_init=_init, dtype=dtype, rngs=rngs
        )
        # V2 learns query and value biases but no key bias.
        self.q_bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
        self.v_bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
        self.logit_scale = nnx.Param(jnp.full((heads,), math.log(10.0), jnp.float32))
        self.cpb1 = nnx.Linear(2, 512, dtype=jnp.float32, rngs=rngs)
        self.cpb2 = nnx.Linear(512, heads, use_bias=False, dtype=jnp.float32, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, kernel_init=_init, dtype=dtype, rngs=rngs)

    def __call__(
        self, x_WxNxC: jax.Array, win: tuple[int, int], mask_MxNxN: np.ndarray | None
    ) -> jax.Array:
        nw, n, c = x_WxNxC.shape
        e = c // self.heads
        zeros = jnp.zeros_like(self.q_bias[...])
        bias = jnp.concatenate([self.q_bias[...], zeros, self.v_bias[...]]).astype(x_WxNxC.dtype)
        qkv = (self.qkv(x_WxNxC) + bias).reshape(nw, n, 3, self.heads, e)
        q, k, v = (upcast(qkv[:, :, i]) for i in range(3))
        q = q / jnp.maximum(jnp.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
        k = k / jnp.maximum(jnp.linalg.norm(k, axis=-1, keepdims=True), 1e-12)
        scale_H = jnp.exp(jnp.minimum(self.logit_scale[...], math.log(100.0)))
        logits_WxHxNxN = jnp.einsum("wqhe,wkhe->whqk", q, k) * scale_H[None, :, None, None]
        table_TxH = self.cpb2(jax.nn.relu(self.cpb1(jnp.asarray(_coords_table(*win)))))
        bias_NxNxH = table_TxH[_relative_index(*win)]
        logits_WxHxNxN = logits_WxHxNxN + 16.0 * jax.nn.sigmoid(bias_NxNxH.transpose(2, 0, 1))
        if mask_MxNxN is not None:
            m = mask_MxNxN.shape[0]
            logits_WxHxNxN = logits_WxHxNxN.reshape(nw // m, m, self.heads, n, n)
            logits_WxHxNxN = logits_WxHxNxN + jnp.asarray(mask_MxNxN)[None, :, None]
            logits_WxHxNxN = logits_WxHxNxN.reshape(nw, self.heads, n, n)
        attn = jax.nn.softmax(logits_WxHxNxN, axis=-1).astype(x_WxNxC.dtype)
        out = jnp.einsum("whqk,wkhe->wqhe", attn, v.astype(x_WxNxC.dtype))
        return self.proj(out.reshape(nw, n, c))


class SwinV2Block(nnx.Module):
    def __init__(
        self,
        dim: int,
        heads: int,
        size: tuple[int, int],
        window: int,
        shifted: bool,
        drop_path: float,
        *,
        dtype,
        rngs: nnx.Rngs,
    ):
        self.size = size
        self.win = tuple(min(window, r) for r in size)
        self.shift = tuple(
            (wd // 2 if (shifted and r > wd) else 0) for wd, r in zip(self.win, size)
        )
        self.attn = WindowAttentionV2(dim, heads, dtype=dtype, rngs=rngs)
        self.norm1 = nnx.LayerNorm(dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
        self.fc1 = nnx.Linear(dim, 4 * dim, kernel_init=_init, dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(4 * dim, dim, kernel_init=_init, dtype=dtype, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
        self.drop_path = DropPath(drop_path)

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        b, h, w, _ = x.shape
        shifted = any(self.shift)
        mask = _shift_mask(h, w, self.win, self.shift) if shifted else None
        y = jnp.roll(x, (-self.shift[0], -self.shift[1]), axis=(1, 2)) if shifted else x
        y = _merge(self.attn(_partition(y, self.win), self.win, mask), self.win, b, h, w)
        if shifted:
            y = jnp.roll(y, self.shift, axis=(1, 2))
        x = x + self.drop_path(self.norm1(y), rngs=rngs)
        y = self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))
        return x + self.drop_path(self.norm2(y), rngs=rngs)


class PatchMerging(nnx.Module):
    def __init__(self, dim: int, *, dtype, rngs: nnx.Rngs):
        self.reduce = nnx.Linear(
            4 * dim, 2 * dim, use_bias=False, kernel_init=_init, dtype=dtype, rngs=rngs
        )
        self.norm = nnx.LayerNorm(2 * dim, epsilon=1e-5, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        _, h, w, _ = x.shape
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        x = jnp.concatenate(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1
        )
        return self.norm(self.reduce(x))


class SwinV2(nnx.Module):
    """Swin-V2 classifier.

    Args:
      embed_dim: channels of the first stage (doubled at each merge).
      depths, heads: blocks and attention heads per stage.
      patch_size: patch embedding size; 2 for 32-64 px images, 4 on ImageNet.
      window_size: attention window; ``None`` picks one that tiles every stage.
      drop_path_rate: stochastic-depth rate of the last block (linear from 0).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: tuple[int, int, int],
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
        norm_axis_name: str | None = None,  # LayerNorm only; accepted for the contract
        embed_dim: int = 48,
        depths: Sequence[int] = (2, 2, 6, 2),
        heads: Sequence[int] = (3, 6, 12, 24),
        patch_size: int = 2,
        window_size: int | None = None,
        drop_path_rate: float = 0.1,
    ):
        h, w, c = check_input_shape(input_shape, "swin_v2")
        if len(depths) != len(heads) or not depths:
            raise ValueError(f"swin_v2: depths {depths} and heads {heads} must match")
        if patch_size < 1 or h % patch_size or w % patch_size:
            raise ValueError(f"swin_v2: patch_size={patch_size} must divide the input size {h}x{w}")
        sizes = _stage_sizes(h // patch_size, w // patch_size, len(depths))
        if window_size is None:
            window_size = auto_window(sizes)
        elif window_size < 1 or not _fits(window_size, sizes):
            raise ValueError(
                f"swin_v2: window_size={window_size} does not tile the stage feature maps "
                f"{sizes} of a {h}x{w} input with patch_size={patch_size}; each side must be "
                f"a multiple of the window or fit inside it (window_size=None picks "
                f"{auto_window(sizes)})"
            )
        self.window_size = window_size
        self.dtype = dtype
        self.patch = nnx.Conv(
            c,
            embed_dim,
            (patch_size, patch_size),
            strides=patch_size,
            padding="VALID",
            kernel_init=_init,
            dtype=dtype,
            rngs=rngs,
        )
        self.patch_norm = nnx.LayerNorm(embed_dim, epsilon=1e-5, dtype=dtype, rngs=rngs)
        rates = drop_path_rates(drop_path_rate, depths)
        stages, merges = [], []
        for i, (depth, n_heads) in enumerate(zip(depths, heads)):
            dim = embed_dim * 2**i
            if i > 0:
                merges.append(PatchMerging(dim // 2, dtype=dtype, rngs=rngs))
            stages.append(
                nnx.List(
                    [
                        SwinV2Block(
                            dim,
                            n_heads,
                            sizes[i],
                            window_size,
                            j % 2 == 1,
                            rates[i][j],
                            dtype=dtype,
                            rngs=rngs,
                        )
                        for j in range(depth)
                    ]
                )
            )
        self.stages = nnx.List(stages)
        self.merges = nnx.List(merges)
        final = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nnx.LayerNorm(final, epsilon=1e-5, dtype=dtype, rngs=rngs)
        self.head = nnx.Linear(final, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, x_BxHxWxC: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        x = self.patch_norm(self.patch(x_BxHxWxC.astype(self.dtype)))
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.merges[i - 1](x)
            for block in stage:
                x = block(x, rngs=rngs)
        return upcast(self.head(self.norm(x).mean(axis=(1, 2))))


register("swin_v2")(SwinV2)
for _v, (_dim, _heads) in SWIN_V2_VARIANTS.items():
    globals()[f"swin_v2_{_v}"] = register_variant(
        f"swin_v2_{_v}",
        SwinV2,
        f"Swin-V2 with embed dim {_dim}, heads {_heads}.",
        embed_dim=_dim,
        heads=_heads,
    )
    __all__.append(f"swin_v2_{_v}")
