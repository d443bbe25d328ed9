"""Multilayer perceptron on flattened images.

``flatten -> [Linear(w) -> act] for w in widths -> Linear(num_classes)``.

The training-Jacobian reference network is expressible as
``mlp(widths=(64,), activation="gelu", bias_init_std=0.125)`` on 8x8x1 digits:
P = 64*64 + 64 + 64*10 + 10 = 4,810 parameters.
Default ``widths=(512, 512)`` with 10 classes: 8x8x1 -> 301,066; 28x28x1 -> 669,706;
32x32x3 -> 1,841,162 parameters.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dsb.models.layers import check_input_shape, get_activation, upcast
from dsb.models.registry import register

__all__ = ["MLP"]


@register("mlp")
class MLP(nnx.Module):
    """Fully connected classifier.

    Args:
      widths: hidden layer widths (may be empty: a linear classifier).
      activation: name from ``dsb.models.layers.ACTIVATIONS``.
      bias_init_std: standard deviation of the normal bias initialisation; 0 gives zeros.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        input_shape: tuple[int, int, int],
        rngs: nnx.Rngs,
        dtype: jnp.dtype = jnp.float32,
        norm_axis_name: str | None = None,  # no BatchNorm here; accepted for the contract
        widths: Sequence[int] = (512, 512),
        activation: str = "relu",
        bias_init_std: float = 0.0,
    ):
        h, w, c = check_input_shape(input_shape, "mlp")
        self.act = get_activation(activation)
        if bias_init_std < 0:
            raise ValueError(f"mlp: bias_init_std must be >= 0, got {bias_init_std}")
        bias_init = (
            nnx.initializers.normal(bias_init_std) if bias_init_std > 0 else nnx.initializers.zeros
        )
        self.dtype = dtype
        sizes = [h * w * c, *(int(v) for v in widths), num_classes]
        self.layers = nnx.List(
            [
                nnx.Linear(d_in, d_out, bias_init=bias_init, dtype=dtype, rngs=rngs)
                for d_in, d_out in itertools.pairwise(sizes)
            ]
        )

    def __call__(self, x_BxHxWxC: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        x_BxD = x_BxHxWxC.reshape(x_BxHxWxC.shape[0], -1).astype(self.dtype)
        for layer in self.layers[:-1]:
            x_BxD = self.act(layer(x_BxD))
        return upcast(self.layers[-1](x_BxD))
