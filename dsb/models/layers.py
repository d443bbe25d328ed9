"""Shared pieces of the image classifiers: activations, drop path, shape checks, counting.

Stochastic layers follow the registry contract: they keep no ``Rngs`` of their own, draw
from the ``rngs`` passed at call time, and are switched off by ``model.eval()`` through
their ``deterministic`` attribute.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = [
    "ACTIVATIONS",
    "DropPath",
    "check_input_shape",
    "count_params",
    "drop_path_rates",
    "get_activation",
]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    # Exact (erf) GELU, the PyTorch default the reference code used.
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "tanh": jnp.tanh,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "sigmoid": jax.nn.sigmoid,
    "elu": jax.nn.elu,
    "leaky_relu": jax.nn.leaky_relu,
    "softplus": jax.nn.softplus,
    "identity": lambda x: x,
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation function called ``name``; ``ValueError`` for unknown names."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of: {', '.join(sorted(ACTIVATIONS))}"
        ) from None


def check_input_shape(input_shape: Sequence[int], model: str) -> tuple[int, int, int]:
    """Validate ``(H, W, C)`` and return it as a tuple of ints."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{model}: input_shape must be (H, W, C) with positive sizes, got {shape}")
    return shape  # type: ignore[return-value]


def count_params(model: nnx.Module) -> int:
    """Number of trainable scalars (``nnx.Param``); works on ``nnx.eval_shape`` models too."""
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def drop_path_rates(max_rate: float, depths: Sequence[int]) -> list[list[float]]:
    """Stochastic-depth rates rising linearly from 0 to ``max_rate`` over all blocks."""
    total = sum(depths)
    rates = [max_rate * i / max(total - 1, 1) for i in range(total)]
    out, start = [], 0
    for d in depths:
        out.append(rates[start : start + d])
        start += d
    return out


class DropPath(nnx.Module):
    """Stochastic depth: zero a residual branch per example with probability ``rate``.

    Kept branches are rescaled by ``1 / (1 - rate)`` so the expectation is unchanged.
    """

    def __init__(self, rate: float, *, deterministic: bool = False):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropPath rate must lie in [0, 1), got {rate}")
        self.rate = float(rate)
        self.deterministic = deterministic

    def __call__(self, x_BxN: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        if self.deterministic or self.rate == 0.0:
            return x_BxN
        if rngs is None:
            raise ValueError(
                "DropPath in training mode needs call-time rngs, e.g. "
                "model(x, rngs=nnx.Rngs(dropout=key)); call model.eval() for inference"
            )
        keep = 1.0 - self.rate
        shape = (x_BxN.shape[0],) + (1,) * (x_BxN.ndim - 1)
        mask = jax.random.bernoulli(rngs.dropout(), keep, shape)
        return jnp.where(mask, x_BxN / keep, 0.0).astype(x_BxN.dtype)
