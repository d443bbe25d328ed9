"""Model registry: every architecture is a named constructor built from config.

Contract for a registered model class or factory::

    Model(*, num_classes: int, input_shape: tuple[int, int, int], rngs: nnx.Rngs,
          dtype=jnp.float32, norm_axis_name: str | None = None, **hyperparameters)

    model(x_BxHxWxC) -> logits_BxK            # float32 logits (float64 for a float64 model)
    model(x, rngs=nnx.Rngs(dropout=key))     # stochastic layers draw from call-time rngs

* ``input_shape`` is (H, W, C); inputs are NHWC floats in [0, 1] (or normalised).
* ``dtype`` is the compute dtype (bfloat16 is allowed); parameters stay float32.
* ``norm_axis_name``: mesh axis over which BatchNorm averages batch statistics inside
  the data-parallel step (``'data'``); ``None`` outside it.
* Train/eval behaviour follows NNX: ``model.train()`` / ``model.eval()`` flip the
  ``deterministic`` and ``use_running_average`` attributes of submodules.
* Constructors must raise ``ValueError`` with a clear message for impossible input sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flax import nnx

from dsb.registry import Registry, signature_of

__all__ = [
    "MODELS",
    "available_models",
    "build_model",
    "check_model_kwargs",
    "register",
    "register_variant",
]

MODELS: Registry[Callable[..., nnx.Module]] = Registry("model")

# Arguments supplied by the trainer, never by the model's config entry.
_RESERVED = {"num_classes", "input_shape", "rngs", "norm_axis_name"}


def register(name: str) -> Callable:
    """Class or function decorator adding a model constructor under ``name``."""
    return MODELS.register(name)


def register_variant(name: str, family: Callable[..., nnx.Module], doc: str, **fixed: Any):
    """Register ``family`` under ``name`` with the hyperparameters ``fixed``.

    The variant takes every other argument of ``family``, with the same defaults (its
    signature says so, which ``check_model_kwargs`` reads); configuring a fixed one is an
    error that points to the family. Returns the variant's constructor.
    """
    sig = signature_of(family)
    unknown = sorted(set(fixed) - set(sig.parameters))
    if unknown:
        raise TypeError(f"variant {name!r}: {family.__name__} takes no {', '.join(unknown)}")

    def build(**kwargs: Any) -> nnx.Module:
        clash = sorted(set(kwargs) & set(fixed))
        if clash:
            raise ValueError(
                f"{name}: {', '.join(clash)} fixed by the variant; configure the "
                f"{family.__name__} family for other values"
            )
        return family(**fixed, **kwargs)

    params = [p for n, p in sig.parameters.items() if n != "self" and n not in fixed]
    build.__signature__ = sig.replace(parameters=params)
    build.__name__ = build.__qualname__ = name
    build.__doc__ = doc
    return register(name)(build)


def available_models() -> list[str]:
    return MODELS.names()


def check_model_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Fail before any compute if ``kwargs`` holds a key the constructor does not take."""
    MODELS.check_options("model.kwargs", name, kwargs, reserved=_RESERVED)


def build_model(
    name: str,
    *,
    num_classes: int,
    input_shape: tuple[int, ...],
    rngs: nnx.Rngs,
    norm_axis_name: str | None = None,
    **kwargs: Any,
) -> nnx.Module:
    """Build the registered model ``name``."""
    check_model_kwargs(name, kwargs)
    return MODELS.get(name)(
        num_classes=num_classes,
        input_shape=tuple(input_shape),
        rngs=rngs,
        norm_axis_name=norm_axis_name,
        **kwargs,
    )
