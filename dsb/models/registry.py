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

import inspect
from collections.abc import Callable
from typing import Any

from flax import nnx

__all__ = ["available_models", "build_model", "check_model_kwargs", "register", "register_variant"]

_MODELS: dict[str, Callable[..., nnx.Module]] = {}

# Arguments supplied by the trainer, never by the model's config entry.
_RESERVED = {"num_classes", "input_shape", "rngs", "norm_axis_name"}


def register(name: str) -> Callable:
    """Class or function decorator adding a model constructor under ``name``."""

    def deco(fn: Callable[..., nnx.Module]) -> Callable[..., nnx.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        return fn

    return deco


def register_variant(name: str, family: Callable[..., nnx.Module], doc: str, **fixed: Any):
    """Register ``family`` under ``name`` with the hyperparameters ``fixed``.

    The variant takes every other argument of ``family``, with the same defaults (its
    signature says so, which ``check_model_kwargs`` reads); configuring a fixed one is an
    error that points to the family. Returns the variant's constructor.
    """
    sig = inspect.signature(family.__init__ if inspect.isclass(family) else family)
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


def _ensure_imported() -> None:
    # Importing the package registers every built-in family.
    import dsb.models  # noqa: F401


def available_models() -> list[str]:
    _ensure_imported()
    return sorted(_MODELS)


def _lookup(name: str) -> Callable[..., nnx.Module]:
    _ensure_imported()
    try:
        return _MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; registered models: {', '.join(sorted(_MODELS))}"
        ) from None


def check_model_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Fail before any compute if ``kwargs`` holds a key the constructor does not take."""
    fn = _lookup(name)
    # Classes: read __init__ (NNX's metaclass hides the signature of the class itself).
    sig = inspect.signature(fn.__init__ if inspect.isclass(fn) else fn)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    allowed = set(sig.parameters) - _RESERVED - {"self"}
    for key in kwargs:
        if key in _RESERVED:
            raise ValueError(f"model.kwargs.{key} is set by the trainer and cannot be configured")
        if key not in allowed:
            raise ValueError(
                f"model.kwargs.{key}: model {name!r} has no such option; "
                f"valid options: {', '.join(sorted(allowed))}"
            )


def build_model(
    name: str,
    *,
    num_classes: int,
    input_shape: tuple[int, int, int],
    rngs: nnx.Rngs,
    norm_axis_name: str | None = None,
    **kwargs: Any,
) -> nnx.Module:
    """Build the registered model ``name``."""
    check_model_kwargs(name, kwargs)
    return _lookup(name)(
        num_classes=num_classes,
        input_shape=tuple(input_shape),
        rngs=rngs,
        norm_axis_name=norm_axis_name,
        **kwargs,
    )
