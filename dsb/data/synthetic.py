"""Synthetic training sets: train on a max-ent or OT-edited set, test on real data.

``data.synthetic`` (``dsb.config.SyntheticConfig``) replaces the training split by a DSB
probe set built from the split's own class statistics, with the builders and the on-disk
cache of the ``dsb_probes`` evaluator (``dsb.stats.evalsets``):

* ``kind: maxent``: ``set`` in ``MAXENT_SETS``; ``num_samples`` samples, each labelled with
  the class it was drawn from (labels drawn from the class priors).
* ``kind: ot``: ``set`` in ``OT_SETS``; ``num_samples`` training images (a seeded subset,
  or the whole split) edited from their class s to a target class t != s drawn uniformly;
  each is labelled with its TARGET class t.

Evaluation splits, and the statistics the ``dsb_probes`` evaluator fits, stay real. The
authors' code (EleutherAI/features-across-time, ``train_vision.py --train_on_fake``) has
the same option for its Gaussian set.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

# ``syn`` below is a ``dsb.config.SyntheticConfig``; this module does not import dsb.config,
# which calls ``check_synthetic`` from its validation (no import cycle).
SyntheticConfig = Any

__all__ = ["REPORT_FILE", "check_synthetic", "synthetic_split"]

log = logging.getLogger(__name__)

REPORT_FILE = "synthetic_set.json"

_KINDS = ("maxent", "ot")


def _registry(kind: str):
    from dsb.stats.probesets import MAXENT_SETS, OT_SETS

    return {"maxent": MAXENT_SETS, "ot": OT_SETS}[kind]


def check_synthetic(syn: SyntheticConfig) -> dict:
    """Raise ValueError naming the ``data.synthetic.*`` key of a bad value (before any data
    is loaded); return the set function's keyword arguments from ``syn.options``."""
    from dsb.evals.dsb_probes import SET_OPTIONS

    if syn.kind not in _KINDS:
        raise ValueError(f"data.synthetic.kind={syn.kind!r}: must be null, maxent or ot")
    registry = _registry(syn.kind)
    spec = registry.get(syn.set, config_key="data.synthetic.set")
    if syn.num_samples is not None and (isinstance(syn.num_samples, bool) or syn.num_samples < 1):
        raise ValueError(f"data.synthetic.num_samples={syn.num_samples}: must be positive or null")
    if syn.shrinkage is not None and len(syn.shrinkage) != 2:
        raise ValueError("data.synthetic.shrinkage: must be null or [a, b]")
    kwargs = {}
    for option, value in syn.options.items():
        if option not in spec.options:
            takes = ", ".join(spec.options) or "no options"
            raise ValueError(
                f"data.synthetic.options.{option}: not an option of {registry.kind} "
                f"{syn.set!r} (it takes {takes})"
            )
        try:
            kwargs[spec.options[option]] = SET_OPTIONS[option](value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"data.synthetic.options.{option}={value!r}: {e}") from None
    return kwargs


def synthetic_split(
    syn: SyntheticConfig,
    data: dict[str, np.ndarray],
    num_classes: int,
    *,
    data_dir: str | Path | None = None,
    report_path: str | Path | None = None,
) -> tuple[dict[str, np.ndarray], dict]:
    """The synthetic set of ``syn`` built from the real training split ``data``
    (``{"image": [n, h, w, c], "label": [n]}``), as ``({"image", "label"}, report)``.

    The report is the set's moment report (errors against the split's class statistics,
    noise floor, ``checks``, ``met``) with what was built; it is written to
    ``report_path`` when given and summarised in the log. The set is cached where
    ``syn.cache_dir`` says (``dsb.cache.resolve_probe_cache``, with ``data_dir`` for its
    ``"data_dir"`` value): by default in the user's probe-set cache, which the
    ``dsb_probes`` evaluator shares.
    """
    from dsb.cache import resolve_probe_cache
    from dsb.stats.evalsets import build_maxent_set, build_ot_set
    from dsb.stats.moments import fit_class_stats

    kwargs = check_synthetic(syn)
    x, y = np.asarray(data["image"]), np.asarray(data["label"])
    n, shape = len(y), x.shape[1:]
    flat = x.reshape(n, -1)
    sh = None if syn.shrinkage is None else (float(syn.shrinkage[0]), float(syn.shrinkage[1]))
    stats = fit_class_stats([(flat, y)], num_classes, shrinkage=sh)
    size = n if syn.num_samples is None else int(syn.num_samples)
    cache = resolve_probe_cache(syn.cache_dir, data_dir)
    if syn.kind == "maxent":
        es = build_maxent_set(stats, syn.set, size, syn.seed, cache_dir=cache, **kwargs)
        labels = "the class each sample was drawn from"
    else:
        pick = np.sort(np.random.default_rng(syn.seed).permutation(n)[:size])
        es = build_ot_set(stats, syn.set, flat[pick], y[pick], syn.seed, cache_dir=cache, **kwargs)
        labels = "the TARGET class of each edit (source class != target)"
    report = {
        "kind": syn.kind,
        "set": syn.set,
        "num_samples": len(es.y_N),
        "seed": syn.seed,
        "options": dict(syn.options),
        "shrinkage": None if sh is None else list(sh),
        "labels": labels,
        "stats_hash": stats.content_hash,
        "cache_key": es.key,
        "cached": es.from_cache,
        "report": es.report,
    }
    met = bool(es.report.get("met", True))
    log.info(
        "training on synthetic %s set %r (%d samples, labels: %s): mean / cov relative "
        "errors %.3g / %.3g against the training split's class statistics, targets %s%s",
        syn.kind, syn.set, len(es.y_N), labels, es.report.get("mean_rel_err", float("nan")),
        es.report.get("cov_rel_err", float("nan")), "met" if met else "MISSED",
        f"; report in {report_path}" if report_path is not None else "",
    )  # fmt: skip
    if report_path is not None:
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(report_path).write_text(json.dumps(report, indent=1, default=float))
    image = np.ascontiguousarray(es.x_NxD, np.float32).reshape(len(es.y_N), *shape)
    return {"image": image, "label": np.asarray(es.y_N, np.int32)}, report
