"""Shared pieces of the image classifiers: activations, drop path, shape checks, counting.

Stochastic layers follow the registry contract: they keep no ``Rngs`` of their own, draw
from the ``rngs`` passed at call time, and are switched off by ``model.eval()`` through
their ``deterministic`` attribute.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from dsb.registry import Registry

__all__ = [
    "ACTIVATIONS",
    "DropPath",
    "batch_norm",
    "check_input_shape",
    "conv2d_im2col",
    "count_params",
    "drop_path_rates",
    "gelu_exact",
    "gelu_tanh",
    "get_activation",
    "max_pool_2x2",
    "upcast",
]


def _closed_form_jvp(f: Callable, df: Callable) -> Callable:
    """The ``custom_jvp`` rule ``(f(x), f'(x) * t)``. ``f'(x)`` sits behind an
    ``optimization_barrier`` so that XLA computes it once instead of fusing it into (and
    recomputing it inside) each consumer, such as every tangent of a batched JVP. (The
    barrier's own derivative is a barrier on the tangent. A variant whose derivative
    skipped it made jit(jacfwd) of the reference run 1.9x slower, 160 vs 85 ms per step,
    and dsb's chunked forward mode no faster.)"""

    def rule(primals, tangents):
        (x,), (t,) = primals, tangents
        return f(x), lax.optimization_barrier(df(x)) * t

    return rule


# Smooth activations with closed-form derivatives (first and second order). Autodiff of
# jax.nn.gelu gives a chain of about ten elementwise tangent operations, and a batched JVP
# (the dense training Jacobian pushes thousands of tangents through every step) repeats
# the chain per tangent; with the closed forms the tangent is one multiply by a
# coefficient computed once. The primal is jax.nn.gelu itself, bit for bit; derivatives
# agree with autodiff to rounding (tests/models/test_activations.py). Effect on the dense
# reference J: benchmarks/jacobian_dense.py, entries "*_autodiff".
_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


def _gelu_tanh_parts(x):
    t = jnp.tanh(_GELU_C * (x + _GELU_A * x * x * x))
    return t, 1.0 - t * t, _GELU_C * (1.0 + 3.0 * _GELU_A * x * x)  # tanh u, sech^2 u, u'


def _gelu_tanh_d2(x):
    t, s, du = _gelu_tanh_parts(x)
    return s * du + 0.5 * x * s * (6.0 * _GELU_A * _GELU_C * x - 2.0 * t * du * du)


@jax.custom_jvp
def _gelu_tanh_d1(x):
    t, s, du = _gelu_tanh_parts(x)
    return 0.5 * (1.0 + t) + 0.5 * x * s * du


@jax.custom_jvp
def gelu_tanh(x: jax.Array) -> jax.Array:
    """``jax.nn.gelu(x, approximate=True)`` with closed-form first and second derivatives."""
    return jax.nn.gelu(x, approximate=True)


def _normal_pdf(x):
    return jnp.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))


def _gelu_exact_d2(x):
    return _normal_pdf(x) * (2.0 - x * x)


@jax.custom_jvp
def _gelu_exact_d1(x):
    return 0.5 * lax.erfc(-x * (1.0 / math.sqrt(2.0))) + x * _normal_pdf(x)


@jax.custom_jvp
def gelu_exact(x: jax.Array) -> jax.Array:
    """``jax.nn.gelu(x, approximate=False)`` with closed-form first and second derivatives."""
    return jax.nn.gelu(x, approximate=False)


_gelu_tanh_d1.defjvp(_closed_form_jvp(_gelu_tanh_d1, _gelu_tanh_d2))
gelu_tanh.defjvp(_closed_form_jvp(gelu_tanh, _gelu_tanh_d1))
_gelu_exact_d1.defjvp(_closed_form_jvp(_gelu_exact_d1, _gelu_exact_d2))
gelu_exact.defjvp(_closed_form_jvp(gelu_exact, _gelu_exact_d1))

# Activation functions by the name models take (``activation=...`` in ``model.kwargs``); a
# new one is ``ACTIVATIONS.register("name", fn)`` here. ``dsb.polyapprox`` reads it too.
ACTIVATIONS: Registry[Callable[[jax.Array], jax.Array]] = Registry("activation")
for _name, _fn in {
    "relu": jax.nn.relu,
    # "gelu" is the tanh approximation, the default of jax.nn.gelu and flax's nn.gelu and
    # what the training-Jacobian reference notebook (flax linen) used; "gelu_tanh" names it
    # explicitly. The exact (erf) GELU, PyTorch's default, is "gelu_exact".
    "gelu": gelu_tanh,
    "gelu_tanh": gelu_tanh,
    "gelu_exact": gelu_exact,
    # jax.nn.gelu with derivatives by autodiff (the reference notebook's function and
    # derivatives), for ablations of the closed forms above.
    "gelu_tanh_autodiff": lambda x: jax.nn.gelu(x, approximate=True),
    "tanh": jnp.tanh,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "sigmoid": jax.nn.sigmoid,
    "elu": jax.nn.elu,
    "leaky_relu": jax.nn.leaky_relu,
    "softplus": jax.nn.softplus,
    "identity": lambda x: x,
}.items():
    ACTIVATIONS.register(_name, _fn)
del _name, _fn


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation function called ``name``; ``ValueError`` for unknown names."""
    return ACTIVATIONS.get(name)


def upcast(x: jax.Array) -> jax.Array:
    """``x`` in float32, or in its own dtype when that is wider.

    Logits and numerically delicate intermediates (norms, softmax) leave bfloat16 compute
    in float32, while a float64 model (training-Jacobian runs) stays float64 throughout.
    """
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def batch_norm(features: int, dtype, norm_axis_name: str | None, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """BatchNorm of the conv nets (momentum 0.9, eps 1e-5) averaging batch statistics over
    the mesh axis ``norm_axis_name`` inside the data-parallel step."""
    return nnx.BatchNorm(
        features, momentum=0.9, epsilon=1e-5, dtype=dtype, axis_name=norm_axis_name, rngs=rngs
    )


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


def conv2d_im2col(
    x_BxHxWxC: jax.Array, kernel_KhxKwxCxO: jax.Array, bias_O: jax.Array | None, padding
) -> jax.Array:
    """Stride-1 2-D convolution (``nnx.Conv``'s cross-correlation) as pad + shifted slices
    + one matmul.

    ``padding`` is ``[(top, bottom), (left, right)]``. Same function as ``nnx.Conv`` with
    that padding, up to float summation order. Its derivatives are matmuls, pads and
    slices, which XLA:CPU runs far faster than convolution derivatives when they are
    nested (a JVP of a gradient, as in a training Jacobian): one float32 LeNet-5
    training-Jacobian product at T = 625 took 2.70 s with XLA convolutions and 0.68 s with
    this (``benchmarks/jacobian_matrix_free.py``).
    """
    (pt, pb), (pl, pr) = padding
    kh, kw, c, o = kernel_KhxKwxCxO.shape
    xp = jnp.pad(x_BxHxWxC, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    ho, wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    cols = [xp[:, i : i + ho, j : j + wo, :] for i in range(kh) for j in range(kw)]
    patches = jnp.concatenate(cols, axis=-1)  # [B, Ho, Wo, Kh Kw C] in (i, j, c) order
    out = patches @ kernel_KhxKwxCxO.reshape(kh * kw * c, o)
    return out if bias_O is None else out + bias_O


def max_pool_2x2(x_BxHxWxC: jax.Array) -> jax.Array:
    """2x2 max pool, stride 2, VALID (an odd last row/column is dropped), by reshape."""
    b, h, w, c = x_BxHxWxC.shape
    x = x_BxHxWxC[:, : h - h % 2, : w - w % 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
