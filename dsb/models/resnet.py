"""CIFAR-style ResNets with BasicBlocks (He et al. 2016, the CIFAR variant).

Stem: 3x3 conv (stride 1, no max pool) -> BatchNorm -> ReLU; then stages of BasicBlocks
with widths ``width * (1, 2, 4, 8)`` and strides (1, 2, 2, 2); global average pool;
Linear(num_classes). Projection shortcuts (1x1 conv + BN) where shape changes.

Every BatchNorm gets ``axis_name=norm_axis_name`` so the data-parallel step can average
batch statistics across devices. Momentum 0.9 and epsilon 1e-5 match PyTorch defaults.

Parameter counts, 10 classes, ``resnet18`` (depths (2, 2, 2, 2), width 64):
32x32x3 -> 11,173,962 (the standard CIFAR ResNet-18 count); 1-channel inputs
(8x8x1, 28x28x1) -> 11,172,810. The count does not depend on H and W; any size >= 1 px
works (stride-2 'SAME' convs round up).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dsb.models.layers import batch_norm, check_input_shape, upcast
from dsb.models.registry import register, register_variant

__all__ = ["BasicBlock", "ResNet", "resnet18"]


class BasicBlock(nnx.Module):
    """Two 3x3 conv-BN layers with an identity or projection shortcut."""

    def __init__(
        self, c_in: int, c_out: int, stride: int, *, dtype, norm_axis_name, rngs: nnx.Rngs
    ):
        conv = lambda a, b, k, s: nnx.Conv(
            a, b, (k, k), strides=s, padding="SAME", use_bias=False, dtype=dtype, rngs=rngs
        )
        self.conv1 = conv(c_in, c_out, 3, stride)
        self.bn1 = batch_norm(c_out, dtype, norm_axis_name, rngs)
        self.conv2 = conv(c_out, c_out, 3, 1)
        self.bn2 = batch_norm(c_out, dtype, norm_axis_name, rngs)
        if stride != 1 or c_in != c_out:
            self.proj = conv(c_in, c_out, 1, stride)
            self.proj_bn = batch_norm(c_out, dtype, norm_axis_name, rngs)
        else:
            self.proj = None
            self.proj_bn = None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x if self.proj is None else self.proj_bn(self.proj(x))
        return jax.nn.relu(y + shortcut)


@register("resnet")
class ResNet(nnx.Module):
    """CIFAR ResNet with BasicBlocks.

    Args:
      depths: number of blocks per stage (stage ``i`` has width ``width * 2**i``).
      width: channels of the stem and first stage.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: tuple[int, int, int],
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
        norm_axis_name: str | None = None,
        depths: Sequence[int] = (2, 2, 2, 2),
        width: int = 64,
    ):
        _, _, c = check_input_shape(input_shape, "resnet")
        if len(depths) == 0 or min(depths) < 1 or width < 1:
            raise ValueError(f"resnet: depths must be positive and non-empty, got {depths}")
        self.dtype = dtype
        self.stem = nnx.Conv(
            c, width, (3, 3), padding="SAME", use_bias=False, dtype=dtype, rngs=rngs
        )
        self.stem_bn = batch_norm(width, dtype, norm_axis_name, rngs)
        blocks = []
        c_in = width
        for i, depth in enumerate(depths):
            c_out = width * 2**i
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(
                    BasicBlock(
                        c_in, c_out, stride, dtype=dtype, norm_axis_name=norm_axis_name, rngs=rngs
                    )
                )
                c_in = c_out
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(c_in, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, x_BxHxWxC: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        x = jax.nn.relu(self.stem_bn(self.stem(x_BxHxWxC.astype(self.dtype))))
        for block in self.blocks:
            x = block(x)
        x_BxC = x.mean(axis=(1, 2))
        return upcast(self.head(x_BxC))


resnet18 = register_variant(
    "resnet18",
    ResNet,
    "CIFAR ResNet-18: depths (2, 2, 2, 2) with base ``width`` (default 64).",
    depths=(2, 2, 2, 2),
)
