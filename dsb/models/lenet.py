"""LeNet-5-style CNN: conv(6, 5x5) -> pool -> conv(16, 5x5) -> pool -> 120 -> 84 -> K.

Padding adapts to the input so one definition serves 8x8 digits, 28x28 MNIST and 32x32
CIFAR (``padding="auto"``): the first conv is 'VALID' when the image is at least 32 px on
that side and 'SAME' otherwise (the usual MNIST variant); the second conv is 'VALID' when
its input is at least 10 px and 'SAME' otherwise. Pools are 2x2 max pools, stride 2.

Parameter counts with 10 classes and the default widths:

* 28x28x1 and 32x32x1: 61,706 (the classic LeNet-5 count; 16*5*5 = 400 features).
* 32x32x3: 62,006.
* 8x8x1: 21,386 (16*2*2 = 64 features).
* 8x8x1 with ``hidden=(240, 168)``: 60,350 -- the P >= 60,000 LeNet on digits of the
  matrix-free training-Jacobian benchmark (``benchmarks/jacobian_matrix_free.py``, with
  ``conv_impl="im2col"``); ``channels=(16, 32), hidden=(256, 128)`` gives 80,458.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dsb.models.layers import check_input_shape, conv2d_im2col, get_activation, max_pool_2x2, upcast
from dsb.models.registry import register

__all__ = ["LeNet5"]


def _pool(x: jax.Array) -> jax.Array:
    return nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")


@register("lenet5")
class LeNet5(nnx.Module):
    """LeNet-5 with configurable widths.

    Args:
      channels: output channels of the two 5x5 convolutions.
      hidden: widths of the two fully connected hidden layers.
      activation: name from ``dsb.models.layers.ACTIVATIONS``.
      padding: ``"auto"`` (see module docstring), ``"SAME"`` or ``"VALID"`` for both convs.
      conv_impl: ``"xla"`` (``nnx.Conv`` and ``nnx.max_pool``) or ``"im2col"`` (the same
        parameters and function through ``conv2d_im2col`` and ``max_pool_2x2``: matmuls,
        slices and reshapes). Use ``"im2col"`` for training-Jacobian products on CPU, whose
        nested conv derivatives XLA:CPU runs slowly.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: tuple[int, int, int],
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
        norm_axis_name: str | None = None,  # no BatchNorm here; accepted for the contract
        channels: Sequence[int] = (6, 16),
        hidden: Sequence[int] = (120, 84),
        activation: str = "relu",
        padding: str = "auto",
        conv_impl: str = "xla",
    ):
        h, w, c = check_input_shape(input_shape, "lenet5")
        if len(channels) != 2 or len(hidden) != 2:
            raise ValueError(
                f"lenet5: need 2 channels and 2 hidden widths, got {channels}, {hidden}"
            )
        if padding not in ("auto", "SAME", "VALID"):
            raise ValueError(f"lenet5: padding must be 'auto', 'SAME' or 'VALID', got {padding!r}")
        if conv_impl not in ("xla", "im2col"):
            raise ValueError(f"lenet5: conv_impl must be 'xla' or 'im2col', got {conv_impl!r}")
        self.conv_impl = conv_impl
        self.act = get_activation(activation)
        self.dtype = dtype

        def conv_pad(hh: int, ww: int, threshold: int) -> tuple[list, int, int]:
            if padding != "auto":
                pads = (padding, padding)
            else:
                pads = tuple("VALID" if s >= threshold else "SAME" for s in (hh, ww))
            out = [s - 4 if p == "VALID" else s for s, p in zip((hh, ww), pads)]
            return [(0, 0) if p == "VALID" else (2, 2) for p in pads], out[0], out[1]

        pad1, h1, w1 = conv_pad(h, w, 32)
        h1, w1 = h1 // 2, w1 // 2
        pad2, h2, w2 = conv_pad(h1, w1, 10)
        h2, w2 = h2 // 2, w2 // 2
        if min(h1, w1, h2, w2) < 1:
            raise ValueError(
                f"lenet5: input {h}x{w} is too small for two 5x5 convs and two 2x2 pools "
                f"with padding={padding!r} (needs at least 4x4 with SAME padding)"
            )
        c1, c2 = (int(v) for v in channels)
        f1, f2 = (int(v) for v in hidden)
        self.conv1 = nnx.Conv(c, c1, (5, 5), padding=pad1, dtype=dtype, rngs=rngs)
        self.conv2 = nnx.Conv(c1, c2, (5, 5), padding=pad2, dtype=dtype, rngs=rngs)
        self.fc1 = nnx.Linear(c2 * h2 * w2, f1, dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(f1, f2, dtype=dtype, rngs=rngs)
        self.head = nnx.Linear(f2, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, x_BxHxWxC: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        x = x_BxHxWxC.astype(self.dtype)
        for conv in (self.conv1, self.conv2):
            if self.conv_impl == "im2col":
                kernel, bias = conv.kernel[...].astype(self.dtype), conv.bias[...]
                x = max_pool_2x2(
                    self.act(conv2d_im2col(x, kernel, bias.astype(self.dtype), conv.padding))
                )
            else:
                x = _pool(self.act(conv(x)))
        x_BxF = x.reshape(x.shape[0], -1)
        x_BxF = self.act(self.fc1(x_BxF))
        x_BxF = self.act(self.fc2(x_BxF))
        return upcast(self.head(x_BxF))
