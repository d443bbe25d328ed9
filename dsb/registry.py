"""Named registries: every extension point of dsb (models, datasets, evaluator types, figures,
probe-set kinds, optimizers, schedules, activations) is one ``Registry``.

A ``Registry`` maps a name to a constructor (or a spec) and checks configured options
against the constructor's signature before any compute, with errors that name the config
key. Where built-ins are registered in several modules, the registry lives in a package's
``registry``/``base`` module and the package's ``__init__`` imports every module that
registers a built-in entry; since importing any submodule imports its package first, a
lookup always sees every built-in. Where they all sit in one module (optimizers,
activations, run figures), the registry lives in that module::

    MODELS = Registry("model")

    @MODELS.register("mlp")
    class MLP(nnx.Module): ...

    MODELS.check_options("model.kwargs", "mlp", {"depth": 3}, reserved={"rngs"})
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

__all__ = ["Registry", "signature_of"]

T = TypeVar("T")


def signature_of(fn: Callable) -> inspect.Signature:
    """The call signature of a function or class (a class is read through ``__init__``:
    NNX's metaclass hides the signature of the class itself)."""
    return inspect.signature(fn.__init__ if inspect.isclass(fn) else fn)


class Registry(Generic[T]):
    """``name -> entry``, filled by ``register``."""

    def __init__(self, kind: str, config_key: str | None = None):
        self.kind = kind  # "model", "evaluator type", "dataset", ...: used in messages
        self.config_key = config_key  # e.g. "data.name", for messages about a bad name
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None):
        """``register(name, entry)``, or ``@register(name)`` on a class or function."""

        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = entry
            return entry

        return add if entry is None else add(entry)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._entries[name]) for name in self.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def copy(self) -> Registry[T]:
        """A new registry with the same entries (tests register into a copy)."""
        new = Registry(self.kind, self.config_key)
        new._entries = dict(self._entries)
        return new

    def get(self, name: str, config_key: str | None = None) -> T:
        """The entry ``name``; a ValueError naming ``config_key`` (default: the registry's)
        and the registered names if there is none."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name, e.g. a list
            config_key = config_key or self.config_key
            where = f"{config_key}={name!r}: " if config_key else ""
            raise ValueError(
                f"{where}unknown {self.kind} {name!r}; registered: {', '.join(self.names())}"
            ) from None

    def check_options(
        self,
        config_key: str,
        name: str,
        options: Iterable[str],
        reserved: Iterable[str] = (),
    ) -> None:
        """Fail on an option the constructor of ``name`` does not take, or one the caller
        supplies itself (``reserved``); ``config_key`` prefixes each message."""
        sig = signature_of(self.get(name))
        reserved = set(reserved)
        takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        allowed = set(sig.parameters) - reserved - {"self"}
        for option in options:
            if option in reserved:
                raise ValueError(
                    f"{config_key}.{option} is set by the trainer and cannot be configured"
                )
            if not takes_any and option not in allowed:
                raise ValueError(
                    f"{config_key}.{option}: {self.kind} {name!r} has no such option; "
                    f"valid options: {', '.join(sorted(allowed))}"
                )

    def build(self, name: str, *args: Any, **kwargs: Any):
        return self.get(name)(*args, **kwargs)
