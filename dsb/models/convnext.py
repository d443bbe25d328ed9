"""ConvNeXt-V2 (Woo et al. 2023): depthwise 7x7 blocks with Global Response Normalisation.

Layout (NHWC throughout): stem ``Conv(patch_size x patch_size, stride patch_size) ->
LayerNorm``; four stages of blocks separated by ``LayerNorm -> Conv(2x2, stride 2)``
downsampling; head ``mean over H, W -> LayerNorm -> Linear``.
Block: ``dwconv 7x7 -> LayerNorm -> Linear(4d) -> GELU -> GRN -> Linear(d)``, plus the
residual through stochastic depth (rates rise linearly to ``drop_path_rate``).

``patch_size`` 4 is the ImageNet stem; use 1 or 2 for 8-64 px images. Downsampling convs
pad at the far edge ('SAME') so odd sizes (7 -> 4) work; the stem needs H, W >= patch_size.

Parameter counts (independent of H, W):

===========  ===========  ==========================  ===================
variant      dims         1000 classes, 3 channels    10 classes, 3 ch
===========  ===========  ==========================  ===================
atto         40..320      3,708,400   (paper 3.7M)    3,389,170
femto        48..384      5,233,240   (paper 5.2M)    4,850,362
pico         64..512      9,066,280   (paper 9.1M)    8,556,106
nano         80..640      15,623,800  (paper 15.6M)   14,986,330
tiny         96..768      28,635,496  (paper 28.6M)   27,870,730
===========  ===========  ==========================  ===================

(10-class counts with ``patch_size=2``; a 1-channel stem has ``2 * p * p * dims[0]``
fewer weights than the 3-channel one.)
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dsb.models.layers import DropPath, check_input_shape, drop_path_rates, upcast
from dsb.models.registry import register, register_variant

__all__ = ["CONVNEXT_V2_VARIANTS", "GRN", "ConvNeXtBlock", "ConvNeXtV2"]

CONVNEXT_V2_VARIANTS: dict[str, tuple[tuple[int, ...], int]] = {
    # name: (depths, base width); stage widths are base * (1, 2, 4, 8).
    "atto": ((2, 2, 6, 2), 40),
    "femto": ((2, 2, 6, 2), 48),
    "pico": ((2, 2, 6, 2), 64),
    "nano": ((2, 2, 8, 2), 80),
    "tiny": ((3, 3, 9, 3), 96),
}

_init = nnx.initializers.truncated_normal(stddev=0.02)


class GRN(nnx.Module):
    """Global Response Normalisation over the spatial axes of ``[B, H, W, C]``.

    ``x + gamma * (x * N(x)) + beta`` with ``N(x) = |x|_2 / mean_c |x|_2``; gamma and beta
    start at zero, so the layer starts as the identity.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        self.gamma = nnx.Param(jnp.zeros((dim,), jnp.float32))
        self.beta = nnx.Param(jnp.zeros((dim,), jnp.float32))
        self.eps = eps

    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        # Norms in float32: squares of bfloat16 activations lose too much precision.
        x32 = upcast(x_BxHxWxC)
        g_Bx1x1xC = jnp.sqrt(jnp.sum(x32**2, axis=(1, 2), keepdims=True))
        n_Bx1x1xC = g_Bx1x1xC / (jnp.mean(g_Bx1x1xC, axis=-1, keepdims=True) + self.eps)
        out = self.gamma[...] * (x32 * n_Bx1x1xC) + self.beta[...] + x32
        return out.astype(x_BxHxWxC.dtype)


class ConvNeXtBlock(nnx.Module):
    def __init__(self, dim: int, drop_path: float, *, dtype, rngs: nnx.Rngs):
        self.dwconv = nnx.Conv(
            dim,
            dim,
            (7, 7),
            padding="SAME",
            feature_group_count=dim,
            kernel_init=_init,
            dtype=dtype,
            rngs=rngs,
        )
        self.norm = nnx.LayerNorm(dim, epsilon=1e-6, dtype=dtype, rngs=rngs)
        self.pw1 = nnx.Linear(dim, 4 * dim, kernel_init=_init, dtype=dtype, rngs=rngs)
        self.grn = GRN(4 * dim)
        self.pw2 = nnx.Linear(4 * dim, dim, kernel_init=_init, dtype=dtype, rngs=rngs)
        self.drop_path = DropPath(drop_path)

    def __call__(self, x: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        y = self.norm(self.dwconv(x))
        y = self.pw2(self.grn(jax.nn.gelu(self.pw1(y), approximate=False)))
        return x + self.drop_path(y, rngs=rngs)


class _Downsample(nnx.Module):
    def __init__(self, c_in: int, c_out: int, *, dtype, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(c_in, epsilon=1e-6, dtype=dtype, rngs=rngs)
        self.conv = nnx.Conv(
            c_in,
            c_out,
            (2, 2),
            strides=2,
            padding="SAME",
            kernel_init=_init,
            dtype=dtype,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(self.norm(x))


class ConvNeXtV2(nnx.Module):
    """ConvNeXt-V2 classifier.

    Args:
      depths: blocks per stage.
      dims: channels per stage.
      patch_size: stem patch (and stride); 4 on ImageNet, 1 or 2 for small images.
      drop_path_rate: stochastic-depth rate of the last block.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: tuple[int, int, int],
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
        norm_axis_name: str | None = None,  # LayerNorm only; accepted for the contract
        depths: Sequence[int] = (2, 2, 6, 2),
        dims: Sequence[int] = (40, 80, 160, 320),
        patch_size: int = 4,
        drop_path_rate: float = 0.0,
    ):
        h, w, c = check_input_shape(input_shape, "convnext_v2")
        if len(depths) != len(dims) or not depths:
            raise ValueError(f"convnext_v2: depths {depths} and dims {dims} must match")
        if patch_size < 1 or min(h, w) < patch_size:
            raise ValueError(
                f"convnext_v2: input {h}x{w} is smaller than the stem patch_size={patch_size}; "
                "use patch_size=1 or 2 for small images"
            )
        self.dtype = dtype
        dims = [int(d) for d in dims]
        self.stem = nnx.Conv(
            c,
            dims[0],
            (patch_size, patch_size),
            strides=patch_size,
            padding="VALID",
            kernel_init=_init,
            dtype=dtype,
            rngs=rngs,
        )
        self.stem_norm = nnx.LayerNorm(dims[0], epsilon=1e-6, dtype=dtype, rngs=rngs)
        rates = drop_path_rates(drop_path_rate, depths)
        self.downsamples = nnx.List(
            [_Downsample(a, b, dtype=dtype, rngs=rngs) for a, b in itertools.pairwise(dims)]
        )
        self.stages = nnx.List(
            [
                nnx.List([ConvNeXtBlock(d, r, dtype=dtype, rngs=rngs) for r in stage_rates])
                for d, stage_rates in zip(dims, rates)
            ]
        )
        self.head_norm = nnx.LayerNorm(dims[-1], epsilon=1e-6, dtype=dtype, rngs=rngs)
        self.head = nnx.Linear(dims[-1], num_classes, kernel_init=_init, dtype=dtype, rngs=rngs)

    def __call__(self, x_BxHxWxC: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        x = self.stem_norm(self.stem(x_BxHxWxC.astype(self.dtype)))
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.downsamples[i - 1](x)
            for block in stage:
                x = block(x, rngs=rngs)
        x_BxC = self.head_norm(x.mean(axis=(1, 2)))
        return upcast(self.head(x_BxC))


register("convnext_v2")(ConvNeXtV2)
for _v, (_depths, _base) in CONVNEXT_V2_VARIANTS.items():
    globals()[f"convnext_v2_{_v}"] = register_variant(
        f"convnext_v2_{_v}",
        ConvNeXtV2,
        f"ConvNeXt-V2-{_v}: depths {_depths}, dims {_base} x (1, 2, 4, 8).",
        depths=_depths,
        dims=tuple(_base * m for m in (1, 2, 4, 8)),
    )
    __all__.append(f"convnext_v2_{_v}")
