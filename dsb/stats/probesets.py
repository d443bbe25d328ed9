"""Kinds of DSB probe sets, each registered once with everything about it.

A kind is a max-ent sampler (``MAXENT_SETS``: ``fn(stats, n, seed, **options) ->
SampledSet``) or an OT edit (``OT_SETS``: ``fn(stats, x, src, tgt, **options) ->
EditedSet``). Its ``ProbeSetKind`` holds the function, its cache version and the
``dsb_probes`` options it takes; the evaluator (``dsb.evals.dsb_probes``), the config checks
and the on-disk cache (``dsb.stats.evalsets``) all read it from there, so a new kind is its
function plus one decorator::

    @register_maxent_set("my_set", version=1, options={"clip": "clip"})
    def sample_my_set(stats, n, seed=0, clip=False, *, reference_x=None, reference_y=None):
        ...

``dsb/stats/__init__.py`` imports the modules that register the built-ins (``maxent``,
``ot``), and importing any ``dsb.stats`` submodule imports the package first, so a lookup
always sees every built-in. A kind in a new module is registered by importing that module
there too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from dsb.registry import Registry

__all__ = ["MAXENT_SETS", "OT_SETS", "ProbeSetKind", "register_maxent_set", "register_ot_set"]


@dataclasses.dataclass(frozen=True)
class ProbeSetKind:
    """One registered kind of probe set.

    ``fn``: builds the set (signatures in the module docstring).
    ``version``: cache version, stored in the set's cache key as ``sampler_version``; bump
    it (or set it, if it is None) whenever ``fn``'s output changes for the same inputs, so
    one key never names two different sets. None: the key has no version (the kinds whose
    output never changed since the cache was introduced).
    ``options``: ``{dsb_probes option: keyword of fn}``, the evaluator options this kind
    takes (e.g. ``{"particle_steps": "steps"}``); the evaluator passes them converted
    (``dsb.evals.dsb_probes.SET_OPTIONS``) and checks their values at config validation.
    """

    fn: Callable[..., Any]
    version: int | None = None
    options: Mapping[str, str] = dataclasses.field(default_factory=dict)


# Built-in kinds register in dsb.stats.maxent and dsb.stats.ot.
MAXENT_SETS: Registry[ProbeSetKind] = Registry("max-ent set")
OT_SETS: Registry[ProbeSetKind] = Registry("OT set")


def _register(registry: Registry[ProbeSetKind], name, version, options):
    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        registry.register(name, ProbeSetKind(fn, version, dict(options or {})))
        return fn

    return deco


def register_maxent_set(
    name: str, *, version: int | None = None, options: Mapping[str, str] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register a max-ent sampler as probe-set kind ``name`` (see
    ``ProbeSetKind`` for ``version`` and ``options``); returns the function unchanged."""
    return _register(MAXENT_SETS, name, version, options)


def register_ot_set(
    name: str, *, version: int | None = None, options: Mapping[str, str] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register an OT edit as probe-set kind ``name`` (see ``ProbeSetKind``)."""
    return _register(OT_SETS, name, version, options)
