"""RegNet-Y (Radosavovic et al. 2020): grouped-conv bottlenecks with squeeze-excitation.

Widths come from the quantised linear rule ``u_j = w0 + wa * j``,
``w_j = w0 * wm ** round(log(u_j / w0) / log(wm))`` rounded to multiples of 8; consecutive
equal widths form a stage. Bottleneck ratio 1, SE ratio 0.25 of the block input width.
Stem: 3x3 conv (32 ch, stride ``stem_stride``) -> BN -> ReLU; the first block of each stage
has stride 2; head: mean over H, W -> Linear. 'SAME' padding gives ceil(H / 2) per stride,
as PyTorch's padding=1 does, so every input size >= 1 px works. ``stem_stride=1`` keeps more
resolution on 8-32 px images (total stride 16 instead of 32).

Parameter counts (independent of H, W and stem stride):

==========  =============================  ================
variant     1000 classes, 3 channels       10 classes, 3 ch
==========  =============================  ================
400MF       4,344,144   (paper 4.3M)       3,907,554
800MF       6,263,168   (paper 6.3M)       5,501,858
1.6GF       11,202,430  (paper 11.2M)      10,322,320
3.2GF       19,436,338  (paper 19.4M)      17,938,468
==========  =============================  ================
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dsb.models.layers import batch_norm, check_input_shape, upcast
from dsb.models.registry import register, register_variant

__all__ = ["REGNET_Y_VARIANTS", "RegNetY", "regnet_widths"]

# name: (depth, w0, wa, wm, group_width)  -- the RegNet paper's RegNetY-* settings.
REGNET_Y_VARIANTS: dict[str, tuple[int, int, float, float, int]] = {
    "400mf": (16, 48, 27.89, 2.09, 8),
    "800mf": (14, 56, 38.84, 2.4, 16),
    "1.6gf": (27, 48, 20.71, 2.65, 24),
    "3.2gf": (21, 80, 42.63, 2.66, 24),
}


def regnet_widths(
    depth: int, w0: int, wa: float, wm: float, group_width: int
) -> tuple[list[int], list[int], list[int]]:
    """Stage ``(widths, depths, group_widths)`` of the quantised linear width rule."""
    if depth < 1 or w0 < 1 or wa < 0 or wm <= 1:
        raise ValueError(f"regnet: invalid width rule depth={depth} w0={w0} wa={wa} wm={wm}")
    block_widths = []
    for j in range(depth):
        u = w0 + wa * j
        s = round(math.log(u / w0) / math.log(wm))
        block_widths.append(int(round(w0 * wm**s / 8) * 8))
    widths, depths = [], []
    for bw in block_widths:
        if widths and widths[-1] == bw:
            depths[-1] += 1
        else:
            widths.append(bw)
            depths.append(1)
    groups = [min(group_width, w) for w in widths]
    widths = [int(round(w / g) * g) for w, g in zip(widths, groups)]
    return widths, depths, groups


class SqueezeExcite(nnx.Module):
    def __init__(self, channels: int, squeeze: int, *, dtype, rngs: nnx.Rngs):
        self.reduce = nnx.Linear(channels, squeeze, dtype=dtype, rngs=rngs)
        self.expand = nnx.Linear(squeeze, channels, dtype=dtype, rngs=rngs)

    def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
        s_BxC = x_BxHxWxC.mean(axis=(1, 2))
        s_BxC = jax.nn.sigmoid(self.expand(jax.nn.relu(self.reduce(s_BxC))))
        return x_BxHxWxC * s_BxC[:, None, None, :]


class YBlock(nnx.Module):
    """1x1 -> grouped 3x3 (stride) -> SE -> 1x1, with a projection shortcut if needed."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        stride: int,
        group_width: int,
        se_ratio: float,
        *,
        dtype,
        norm_axis_name,
        rngs: nnx.Rngs,
    ):
        conv = lambda a, b, k, s=1, g=1: nnx.Conv(
            a,
            b,
            (k, k),
            strides=s,
            padding="SAME",
            feature_group_count=g,
            use_bias=False,
            dtype=dtype,
            rngs=rngs,
        )
        self.a = conv(c_in, c_out, 1)
        self.a_bn = batch_norm(c_out, dtype, norm_axis_name, rngs)
        self.b = conv(c_out, c_out, 3, stride, c_out // group_width)
        self.b_bn = batch_norm(c_out, dtype, norm_axis_name, rngs)
        self.se = SqueezeExcite(c_out, round(se_ratio * c_in), dtype=dtype, rngs=rngs)
        self.c = conv(c_out, c_out, 1)
        self.c_bn = batch_norm(c_out, dtype, norm_axis_name, rngs)
        if stride != 1 or c_in != c_out:
            self.proj = conv(c_in, c_out, 1, stride)
            self.proj_bn = batch_norm(c_out, dtype, norm_axis_name, rngs)
        else:
            self.proj = None
            self.proj_bn = None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.nn.relu(self.a_bn(self.a(x)))
        y = jax.nn.relu(self.b_bn(self.b(y)))
        y = self.c_bn(self.c(self.se(y)))
        shortcut = x if self.proj is None else self.proj_bn(self.proj(x))
        return jax.nn.relu(y + shortcut)


class RegNetY(nnx.Module):
    """RegNet-Y from explicit stage widths/depths/group widths.

    Args:
      widths, depths, group_widths: per-stage settings (see ``regnet_widths``).
      stem_width: channels of the stem conv.
      stem_stride: 2 on ImageNet; 1 for small images.
      se_ratio: squeeze width as a fraction of each block's input width.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: tuple[int, int, int],
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
        norm_axis_name: str | None = None,
        widths: Sequence[int] = (48, 104, 208, 440),
        depths: Sequence[int] = (1, 3, 6, 6),
        group_widths: Sequence[int] = (8, 8, 8, 8),
        stem_width: int = 32,
        stem_stride: int = 2,
        se_ratio: float = 0.25,
    ):
        _, _, c = check_input_shape(input_shape, "regnet_y")
        if not len(widths) == len(depths) == len(group_widths) or not widths:
            raise ValueError("regnet_y: widths, depths and group_widths must have equal length")
        for w, g in zip(widths, group_widths):
            if w % g:
                raise ValueError(f"regnet_y: width {w} is not a multiple of group width {g}")
        if stem_stride not in (1, 2):
            raise ValueError(f"regnet_y: stem_stride must be 1 or 2, got {stem_stride}")
        self.dtype = dtype
        self.stem = nnx.Conv(
            c,
            stem_width,
            (3, 3),
            strides=stem_stride,
            padding="SAME",
            use_bias=False,
            dtype=dtype,
            rngs=rngs,
        )
        self.stem_bn = batch_norm(stem_width, dtype, norm_axis_name, rngs)
        blocks, c_in = [], stem_width
        for w, d, g in zip(widths, depths, group_widths):
            for j in range(d):
                blocks.append(
                    YBlock(
                        c_in,
                        w,
                        2 if j == 0 else 1,
                        g,
                        se_ratio,
                        dtype=dtype,
                        norm_axis_name=norm_axis_name,
                        rngs=rngs,
                    )
                )
                c_in = w
        self.blocks = nnx.List(blocks)
        self.head = nnx.Linear(c_in, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, x_BxHxWxC: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        x = jax.nn.relu(self.stem_bn(self.stem(x_BxHxWxC.astype(self.dtype))))
        for block in self.blocks:
            x = block(x)
        return upcast(self.head(x.mean(axis=(1, 2))))


register("regnet_y")(RegNetY)
for _v, _spec in REGNET_Y_VARIANTS.items():
    _name = "regnet_y_" + _v.replace(".", "_")
    _widths, _depths, _groups = regnet_widths(*_spec)
    globals()[_name] = register_variant(
        _name,
        RegNetY,
        f"RegNetY-{_v.upper()}: widths {_widths}, depths {_depths}.",
        widths=_widths,
        depths=_depths,
        group_widths=_groups,
    )
    __all__.append(_name)
