"""RandAugment (Cubuk et al. 2020) on device, built from dm-pix image ops.

Each example gets ``num_ops`` operations drawn uniformly (with replacement) from ``OPS``,
each at the global ``magnitude`` M in [0, 30] (m = M / 30), with a random sign for the
signed ones. Images are float [0, 1], HWC with C = 1 or 3. Under ``vmap`` the op choice
is a ``lax.switch``, which XLA evaluates as a select over all branches: cheap at the small
image sizes dsb trains on.

Ranges follow the paper's table (rotate +-30 deg, shear +-0.3, translate +-45% of the size
... at m = 1; enhance factors 1 +- 0.9 m; solarize threshold 1 - m; posterize 8 - 4 m
bits). ``Equalize`` is left out: histogram equalisation has no dm-pix op and its
per-image sort is costly under jit; the remaining 13 ops are the paper's other ones.
"""

from __future__ import annotations

import dm_pix as pix
import jax
import jax.numpy as jnp

__all__ = ["OPS", "randaugment"]


def _signed(key, value):
    return jnp.where(jax.random.bernoulli(key), value, -value)


def _affine(x, matrix):
    """Apply a 2x2 spatial map about the image centre (channels untouched)."""
    h, w, _ = x.shape
    centre = jnp.array([(h - 1) / 2, (w - 1) / 2])
    full = jnp.eye(3).at[:2, :2].set(matrix)
    offset = jnp.concatenate([centre - matrix @ centre, jnp.zeros(1)])
    return pix.affine_transform(x, full, offset=offset, order=1, mode="constant", cval=0.0)


def _shift(x, dy, dx):
    full = jnp.eye(3)
    return pix.affine_transform(x, full, offset=jnp.array([dy, dx, 0.0]), order=1, mode="constant")


def _blend(a, b, factor):
    return jnp.clip(b + factor * (a - b), 0.0, 1.0)


def _identity(x, m, k):
    return x


def _autocontrast(x, m, k):
    lo = x.min(axis=(0, 1), keepdims=True)
    hi = x.max(axis=(0, 1), keepdims=True)
    return jnp.where(hi > lo, (x - lo) / jnp.maximum(hi - lo, 1e-6), x)


def _rotate(x, m, k):
    return pix.rotate(x, _signed(k, m * jnp.pi / 6), order=1, mode="constant", cval=0.0)


def _solarize(x, m, k):
    return pix.solarize(x, threshold=1.0 - m)


def _posterize(x, m, k):
    levels = 2.0 ** jnp.round(8 - 4 * m)
    return jnp.floor(x * (levels - 1) + 0.5) / (levels - 1)


def _color(x, m, k):
    if x.shape[-1] != 3:  # saturation is undefined for grey images
        return x
    return jnp.clip(pix.adjust_saturation(x, 1 + _signed(k, 0.9 * m)), 0.0, 1.0)


def _contrast(x, m, k):
    return jnp.clip(pix.adjust_contrast(x, 1 + _signed(k, 0.9 * m)), 0.0, 1.0)


def _brightness(x, m, k):
    return _blend(x, jnp.zeros_like(x), 1 + _signed(k, 0.9 * m))


def _sharpness(x, m, k):
    blurred = pix.gaussian_blur(x, sigma=1.0, kernel_size=3)
    return _blend(x, blurred, 1 + _signed(k, 0.9 * m))


def _shear_x(x, m, k):
    return _affine(x, jnp.array([[1.0, 0.0], [_signed(k, 0.3 * m), 1.0]]))


def _shear_y(x, m, k):
    return _affine(x, jnp.array([[1.0, _signed(k, 0.3 * m)], [0.0, 1.0]]))


def _translate_x(x, m, k):
    return _shift(x, 0.0, _signed(k, 0.45 * m * x.shape[1]))


def _translate_y(x, m, k):
    return _shift(x, _signed(k, 0.45 * m * x.shape[0]), 0.0)


OPS = {
    "identity": _identity,
    "autocontrast": _autocontrast,
    "rotate": _rotate,
    "solarize": _solarize,
    "posterize": _posterize,
    "color": _color,
    "contrast": _contrast,
    "brightness": _brightness,
    "sharpness": _sharpness,
    "shear_x": _shear_x,
    "shear_y": _shear_y,
    "translate_x": _translate_x,
    "translate_y": _translate_y,
}


def randaugment(x_HxWxC: jax.Array, key: jax.Array, num_ops: int = 2, magnitude: float = 9.0):
    """RandAugment of one image (vmap it over a batch with one key per example).

    Each of the ``num_ops`` rounds computes all ops and keeps the drawn one.
    """
    m = jnp.clip(magnitude / 30.0, 0.0, 1.0)
    branches = [lambda x, k, f=f: f(x, m, k).astype(x.dtype) for f in OPS.values()]
    for key_op in jax.random.split(key, num_ops):
        k_choice, k_sign = jax.random.split(key_op)
        index = jax.random.randint(k_choice, (), 0, len(branches))
        # Every op, then a select: what ``vmap`` makes of ``lax.switch`` with a per-example
        # index anyway, written out because under ``shard_map`` the batched switch fails
        # JAX's varying-axes check on the geometric ops (rotate, shear, translate).
        x_HxWxC = jax.lax.select_n(index, *(b(x_HxWxC, k_sign) for b in branches))
    return x_HxWxC
