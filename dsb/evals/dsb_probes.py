"""DSB probes: loss and accuracy on fixed max-ent and OT-edited evaluation sets.

Config entry (the trainer prefixes names with the entry key)::

    evals:
      dsb: {type: dsb_probes, maxent_sets: [ics, box1, gaussian], ot_sets: [cqn, gaussian],
            num_samples: 2000, seed: 0}

At build time the class statistics are fitted on the train split and every set is built
(or loaded from the cache); the achieved moment errors go to
``<run_dir>/dsb_probes_moments.json`` (main process only). At each checkpoint it yields
``maxent/<set>/{loss,accuracy}`` and ``ot/<set>/{loss,target_accuracy,source_loss,
source_accuracy}``: cross-entropy and exact accuracy over the whole set, against the
generating class (max-ent) or the target class t and the source class s (OT).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dsb.cache import PROBE_CACHE_SUBDIR, resolve_probe_cache
from dsb.evals.base import EvalContext, Snapshot, register_evaluator
from dsb.evals.classification import cross_entropy_and_accuracy
from dsb.registry import Registry, signature_of
from dsb.stats import truncnormal
from dsb.stats.evalsets import EvalSet, build_maxent_set, build_ot_set
from dsb.stats.moments import cached_class_stats
from dsb.stats.probesets import MAXENT_SETS, OT_SETS, ProbeSetKind
from dsb.stats.report import unmet_checks, warn_unmet
from dsb.timing import phase

__all__ = ["SET_OPTIONS", "DsbProbes", "cache_dir_of"]

log = logging.getLogger(__name__)


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or int(value) < 1:
        raise ValueError("must be a positive integer")
    return int(value)


def _nonnegative_float(value: Any) -> float:
    if isinstance(value, bool) or not float(value) >= 0:
        raise ValueError("must be a number >= 0")
    return float(value)


# The options of this evaluator that a probe-set kind may take (``ProbeSetKind.options``
# maps them to keywords of its function): each converts the configured value into what the
# function gets, which is also what the set's cache key holds, and raises ValueError for a
# bad value (checked at config validation, before any compute).
SET_OPTIONS: dict[str, Callable[[Any], Any]] = {
    "clip": bool,
    "particle_steps": _positive_int,
    "gibbs_sweeps": _positive_int,
    "truncnorm_ridge": _nonnegative_float,
}

# Evaluator option -> registry of the kinds it lists.
_SET_LISTS: dict[str, Registry[ProbeSetKind]] = {"maxent_sets": MAXENT_SETS, "ot_sets": OT_SETS}


def _set_kwargs(spec: ProbeSetKind, values: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``spec.fn`` from this evaluator's option ``values``."""
    return {kw: SET_OPTIONS[option](values[option]) for option, kw in spec.options.items()}


MOMENTS_FILE = "dsb_probes_moments.json"


CACHE_SUBDIR = PROBE_CACHE_SUBDIR


def cache_dir_of(ctx: EvalContext, cache_dir: str | None) -> Path | None:
    """The directory the sets are cached in (None: no cache) for option ``cache_dir``,
    with ``data_dir`` read from the run's ``data.data_dir`` (``dsb.cache.resolve_probe_cache``:
    None is the user's cache, "none" no cache, "data_dir" ``<data.data_dir>/dsb_probe_sets``,
    anything else the directory itself)."""
    data_dir = getattr(getattr(ctx.config, "data", None), "data_dir", None)
    return resolve_probe_cache(cache_dir, data_dir)


@register_evaluator("dsb_probes")
class DsbProbes:
    """Evaluator over fixed max-ent and OT-edited sets.

    Options:
      maxent_sets: names in ``dsb.stats.probesets.MAXENT_SETS`` (ics, box1, gaussian,
        truncnorm, box2, box3).
      ot_sets: names in ``dsb.stats.probesets.OT_SETS`` (cqn, mean_shift, gaussian).
      num_samples: size of each max-ent set and (at most) of each OT set.
      seed: fixes every sample, label, OT target and source subset.
      shrinkage: ``None`` or ``[a, b]``: Sigma_hat = a S + b (tr S / d) I for the
        Gaussian / particle samplers and the Gaussian OT map.
      clip: clamp Gaussian samples and Gaussian OT edits to [0, 1] (reported either way).
      source_split: split whose images the OT sets edit.
      cache_dir: where the sets are cached (``cache_dir_of``): default the user's cache,
        ``$DSB_PROBE_CACHE`` if set, else ``$XDG_CACHE_HOME/dsb/probe_sets`` or
        ``~/.cache/dsb/probe_sets``, so each set is built once per (statistics, seed,
        options, sampler version) and every later run loads it; the string "none"
        disables the cache; "data_dir" means ``<data.data_dir>/dsb_probe_sets`` (the
        user's cache when ``data.data_dir`` is unset), a directory every job of a sweep
        reads; concurrent jobs wait on a lock (``dsb.stats.evalsets``); any other string
        is the directory itself.
      particle_steps: Adam steps of the box2 / box3 particle samplers (cost per step
        ~ n_y d^2 per class: seconds on digits, a GPU job at CIFAR size).
      gibbs_sweeps, truncnorm_ridge: Gibbs sweeps and covariance ridge of the truncated
        normal set ``truncnorm`` (``dsb.stats.truncnormal``).
      fit_batch_size: batch size of the streaming statistics fit.

    ``clip``, ``particle_steps``, ``gibbs_sweeps`` and ``truncnorm_ridge`` go to the kinds
    whose registration takes them (``SET_OPTIONS``); ``check_options`` checks set names and
    those values at config validation.
    """

    @classmethod
    def check_options(cls, config_key: str, options: Mapping[str, Any]) -> None:
        """Unknown set names and bad values of the set options, before any compute;
        each message names the key (``<config_key>.maxent_sets[1]``, ...)."""
        params = signature_of(cls).parameters
        values = {k: options.get(k, params[k].default) for k in (*_SET_LISTS, *SET_OPTIONS)}
        for list_key, registry in _SET_LISTS.items():
            names = values[list_key]
            if isinstance(names, str) or not isinstance(names, Sequence):
                raise ValueError(
                    f"{config_key}.{list_key}={names!r}: must be a list of {registry.kind} names"
                )
            for i, name in enumerate(names):
                spec = registry.get(name, config_key=f"{config_key}.{list_key}[{i}]")
                for option in spec.options:
                    try:
                        SET_OPTIONS[option](values[option])
                    except (TypeError, ValueError) as e:
                        raise ValueError(
                            f"{config_key}.{option}={values[option]!r} (used by "
                            f"{registry.kind} {name!r}): {e}"
                        ) from None

    def __init__(
        self,
        ctx: EvalContext,
        maxent_sets: Sequence[str] = ("ics", "box1", "gaussian", "box2"),
        ot_sets: Sequence[str] = ("cqn", "mean_shift", "gaussian"),
        num_samples: int = 2000,
        seed: int = 0,
        shrinkage: Sequence[float] | None = None,
        clip: bool = False,
        source_split: str = "test",
        cache_dir: str | None = None,
        particle_steps: int = 1000,
        gibbs_sweeps: int = truncnormal.SWEEPS,
        truncnorm_ridge: float = truncnormal.RIDGE,
        fit_batch_size: int = 4096,
    ):
        self.input_shape = tuple(ctx.input_shape)
        train = ctx.load_split(ctx.train_split)
        x_tr = np.asarray(train["image"]).reshape(len(train["label"]), -1)
        y_tr = np.asarray(train["label"])
        sh = None if shrinkage is None else tuple(float(v) for v in shrinkage)
        cache = cache_dir_of(ctx, cache_dir)
        if ctx.is_main_process:
            log.info("probe sets: cache %s", cache if cache is not None else "off")
        # The class statistics live in the same cache, keyed by the data: a second job on
        # the same split loads them instead of refitting.
        with phase("stats"):
            stats, _ = cached_class_stats(
                x_tr, y_tr, ctx.num_classes, cache, batch_size=fit_batch_size, shrinkage=sh
            )
        # Only the sets are kept: the K d^2 covariances (0.75 GB at CIFAR size) are freed
        # when __init__ returns.
        self.stats_hash = stats.content_hash
        set_values = {  # every SET_OPTIONS key
            "clip": clip,
            "particle_steps": particle_steps,
            "gibbs_sweeps": gibbs_sweeps,
            "truncnorm_ridge": truncnorm_ridge,
        }
        self.maxent: list[EvalSet] = []
        for kind in maxent_sets:
            opts = _set_kwargs(MAXENT_SETS.get(kind), set_values)
            self.maxent.append(
                build_maxent_set(stats, kind, num_samples, seed, cache_dir=cache, **opts)
            )
        self.ot: list[EvalSet] = []
        if ot_sets:
            src = ctx.load_split(source_split)
            n_src = len(src["label"])
            pick = np.sort(np.random.default_rng(seed).permutation(n_src)[:num_samples])
            x_src = np.asarray(src["image"]).reshape(n_src, -1)[pick]
            y_src = np.asarray(src["label"])[pick]
            for kind in ot_sets:
                opts = _set_kwargs(OT_SETS.get(kind), set_values)
                self.ot.append(
                    build_ot_set(stats, kind, x_src, y_src, seed, cache_dir=cache, **opts)
                )
        if ctx.is_main_process:
            for kind, sets in (("maxent", self.maxent), ("ot", self.ot)):
                for es in sets:
                    warn_unmet(f"{kind} set {es.name!r}", es.report.get("checks", {}))
            ctx.run_dir.mkdir(parents=True, exist_ok=True)
            out = {
                "stats_hash": stats.content_hash,
                "shrinkage": stats.shrinkage,
                "maxent": {s.name: s.report | {"cached": s.from_cache} for s in self.maxent},
                "ot": {s.name: s.report | {"cached": s.from_cache} for s in self.ot},
            }
            (ctx.run_dir / MOMENTS_FILE).write_text(json.dumps(out, indent=1, default=float))

    def _logits(self, snapshot: Snapshot, es: EvalSet) -> np.ndarray:
        x = es.x_NxD.reshape((len(es.y_N), *self.input_shape))
        return np.asarray(snapshot.predict(x))

    def run(self, snapshot: Snapshot) -> Iterable[tuple[str, float]]:
        for es in self.maxent:
            loss, acc = cross_entropy_and_accuracy(self._logits(snapshot, es), es.y_N)
            yield f"maxent/{es.name}/loss", loss
            yield f"maxent/{es.name}/accuracy", acc
            yield f"maxent/{es.name}/target_met", _met(es)
        for es in self.ot:
            logits = self._logits(snapshot, es)
            loss, acc = cross_entropy_and_accuracy(logits, es.y_N)
            s_loss, s_acc = cross_entropy_and_accuracy(logits, es.src_N)
            yield f"ot/{es.name}/loss", loss
            yield f"ot/{es.name}/target_accuracy", acc
            yield f"ot/{es.name}/source_loss", s_loss
            yield f"ot/{es.name}/source_accuracy", s_acc
            yield f"ot/{es.name}/target_met", _met(es)


def _met(es: EvalSet) -> float:
    """1.0 when the set reached every target its method states, else 0.0 (the figures
    flag such sets in their legends; ``dsb_probes_moments.json`` has the numbers)."""
    return float(not unmet_checks(es.report.get("checks", {})))
