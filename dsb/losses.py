"""Training losses, by name (``train.loss``): per-example losses of logits ``[n, K]`` and
integer labels ``[n]``.

* ``cross_entropy``: ``-log softmax(z)_y`` (the default; every classifier in dsb).
* ``mse``: the square loss of Cohen et al. (ICLR 2021, "Gradient Descent on Neural Networks
  Typically Occurs at the Edge of Stability", whose public code is
  locuslab/edge-of-stability): ``0.5 * ||z - onehot(y)||^2``, summed over the K outputs.
  Its Hessian in the logits is the identity, so its Gauss-Newton matrix is ``J^T J / n``.

The batch loss is the mean over examples. Evaluators still report the cross-entropy of
held-out data whatever the training loss (``val/loss``); the training-loss curve
(``train/loss``) is the configured loss.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from dsb.registry import Registry

__all__ = ["LOSSES", "per_example_loss"]

LOSSES: Registry[Callable[[jax.Array, jax.Array], jax.Array]] = Registry(
    "training loss", config_key="train.loss"
)


@LOSSES.register("cross_entropy")
def cross_entropy(logits_NxK: jax.Array, labels_N: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits_NxK, labels_N)


@LOSSES.register("mse")
def mse(logits_NxK: jax.Array, labels_N: jax.Array) -> jax.Array:
    onehot = jax.nn.one_hot(labels_N, logits_NxK.shape[-1], dtype=logits_NxK.dtype)
    return 0.5 * jnp.sum((logits_NxK - onehot) ** 2, axis=-1)


def per_example_loss(name: str, logits_NxK: jax.Array, labels_N: jax.Array) -> jax.Array:
    """``[n]`` losses ``name`` (a registered ``LOSSES`` name) of ``logits [n, K]``."""
    return LOSSES.get(name)(logits_NxK, labels_N)
