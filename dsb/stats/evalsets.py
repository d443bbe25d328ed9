"""Fixed evaluation sets: built once from a seed, cached on disk by content hash.

The cache key is a sha256 of the statistics' ``content_hash``, the set kind, its config
(size, seed, options) and, for OT edits, the bytes of the source images; the file is
``<cache_dir>/<kind>-<key[:20]>.npz`` holding ``x`` (float32 ``[n, d]``), ``y``, ``src``
(OT only) and the moment report as JSON. Every checkpoint therefore sees the same samples,
and a second run with the same inputs loads instead of re-sampling. Files are written to a
temporary name and renamed into place (a reader never sees a partial file), and a process
builds a missing set under an exclusive lock on ``<file>.lock`` (``dsb.cache``), so the
jobs of a sweep that share ``cache_dir`` build each set once and the others load it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np

from dsb.cache import load_or_build, write_atomically
from dsb.stats.moments import ClassStats
from dsb.stats.ot import draw_targets
from dsb.stats.probesets import MAXENT_SETS, OT_SETS, ProbeSetKind
from dsb.timing import phase

__all__ = ["EvalSet", "build_maxent_set", "build_ot_set", "eval_set_key"]

log = logging.getLogger(__name__)

_VERSION = "evalset-v1"
# Each kind's own cache version (``ProbeSetKind.version``, bumped when its output changes)
# is registered with it (dsb.stats.probesets) and goes into the key as "sampler_version".


def _set_config(kind: ProbeSetKind, n: int, seed: int, options: dict) -> dict:
    config = {"n": n, "seed": seed, **options}
    if kind.version is not None:
        config["sampler_version"] = kind.version
    return config


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """``x_NxD`` float32, labels ``y_N``, source labels ``src_N`` (OT sets, else None)."""

    name: str
    x_NxD: np.ndarray
    y_N: np.ndarray
    src_N: np.ndarray | None
    report: dict
    key: str
    from_cache: bool = False


def eval_set_key(stats: ClassStats, kind: str, config: dict, extra: bytes = b"") -> str:
    h = hashlib.sha256(_VERSION.encode())
    h.update(stats.content_hash.encode())
    h.update(kind.encode())
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    h.update(extra)
    return h.hexdigest()


def _jsonable(d: dict) -> dict:
    # The same plain-JSON form whether built now or loaded from the cache.
    return json.loads(json.dumps(d, default=float))


def _load(path: Path, name: str, key: str) -> EvalSet | None:
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as f:
        if str(f["key"]) != key:
            return None
        src = f["src"] if f["src"].size else None
        return EvalSet(name, f["x"], f["y"], src, json.loads(str(f["report"])), key, True)


def _save(path: Path, es: EvalSet) -> None:
    def write(f):
        np.savez(
            f,
            x=es.x_NxD,
            y=es.y_N,
            src=np.zeros(0, np.int32) if es.src_N is None else es.src_N,
            report=json.dumps(es.report, default=float),
            key=es.key,
        )

    write_atomically(path, write)


def _cached(cache_dir, prefix, name, key, build) -> EvalSet:
    if cache_dir is None:
        return _built(prefix, build, "not cached")
    path = Path(cache_dir) / f"{prefix}-{key[:20]}.npz"

    def save(es):
        try:
            _save(path, es)
        except OSError as e:
            msg = f"could not cache evaluation set {name!r} in {path}: {e}"
            warnings.warn(msg, stacklevel=5)  # the caller of build_*_set

    es, loaded = load_or_build(
        path,
        lambda: _load_timed(path, name, key, prefix),
        lambda: _built(prefix, build, f"cached in {path}"),
        save,
    )
    if loaded:
        log.info("probe set %s: loaded from %s", prefix, path)
    return es


def _load_timed(path: Path, name: str, key: str, prefix: str) -> EvalSet | None:
    # A missing file is no phase: "loaded" counts the sets that were loaded.
    if not path.exists():
        return None
    with phase(f"probe_set/{prefix}/loaded"):
        return _load(path, name, key)


def _built(prefix: str, build, where: str) -> EvalSet:
    t0 = time.perf_counter()
    with phase(f"probe_set/{prefix}/built"):
        es = build()
    log.info("probe set %s: built in %.1f s, %s", prefix, time.perf_counter() - t0, where)
    return es


def build_maxent_set(
    stats: ClassStats,
    kind: str,
    num_samples: int,
    seed: int = 0,
    *,
    cache_dir: str | Path | None = None,
    **options,
) -> EvalSet:
    """Max-ent set ``kind`` in ``MAXENT_SETS`` (``options`` go to the sampler, e.g. ``clip``)."""
    spec = MAXENT_SETS.get(kind)  # ValueError for an unknown kind
    config = _set_config(spec, num_samples, seed, options)
    key = eval_set_key(stats, f"maxent/{kind}", config)

    def build():
        s = spec.fn(stats, num_samples, seed, **options)
        rep = _jsonable(s.report.to_dict() | {"config": config})
        return EvalSet(kind, s.x_NxD, s.y_N, None, rep, key)

    return _cached(cache_dir, f"maxent-{kind}", kind, key, build)


def build_ot_set(
    stats: ClassStats,
    kind: str,
    x_NxD: np.ndarray,
    src_N: np.ndarray,
    seed: int = 0,
    *,
    cache_dir: str | Path | None = None,
    **options,
) -> EvalSet:
    """OT-edited set ``kind`` in ``OT_SETS`` of real ``x [n, d]`` with labels ``src [n]``.

    Targets t != s come from ``draw_targets(src, K, seed)``; the edits themselves are
    deterministic.
    """
    spec = OT_SETS.get(kind)  # ValueError for an unknown kind
    x = np.ascontiguousarray(x_NxD, np.float32)
    src = np.ascontiguousarray(src_N, np.int32)
    config = _set_config(spec, len(src), seed, options)
    key = eval_set_key(stats, f"ot/{kind}", config, x.tobytes() + src.tobytes())

    def build():
        tgt = draw_targets(src, stats.num_classes, seed)
        e = spec.fn(stats, x, src, tgt, **options)
        rep = _jsonable(e.report.to_dict() | {"config": config})
        return EvalSet(kind, e.x_NxD, e.y_N, e.src_N, rep, key)

    return _cached(cache_dir, f"ot-{kind}", kind, key, build)
