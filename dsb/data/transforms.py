"""Whole-split transforms applied before training (concept erasure)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from dsb.cache import hash_array

__all__ = [
    "ERASURE_TOL",
    "apply_eraser",
    "cached_erase_split",
    "erase_split",
    "erase_split_with_report",
]

log = logging.getLogger(__name__)

ERASURE_TOL = 1e-6
"""Relative tolerance of the erasure targets, measured in float64 on the float32 output.
Rounding to float32 (unit roundoff u = 2^-24 = 6e-8) perturbs each value by at most
``u |x'|``; that moves the class-mean spread by at most about ``u max|x'| / std`` and the
class covariances by at most about ``2 u (rms|x'| / std) sqrt(rank)`` relative, a few 1e-7
when the data's mean and spread are of the same size. The rounding errors are nearly
independent, so on digits the measured residuals are ~5e-9 (means) and ~3e-8
(covariances), against ~1e-15 and ~5e-13 before rounding."""


def erase_split(
    data: dict[str, np.ndarray],
    kind: str,
    num_classes: int,
    shrinkage: list[float] | None = None,
    report_path: str | Path | None = None,
) -> dict[str, np.ndarray]:
    """LEACE or QLEACE of a split's images, fitted on that split (float64 statistics).

    Returns a new dict with erased ``image`` (same shape, float32; values may leave
    [0, 1], the erasure is affine). Writes the report of ``erase_split_with_report`` to
    ``report_path`` if given.
    """
    return erase_split_with_report(data, kind, num_classes, shrinkage, report_path)[0]


def erase_split_with_report(
    data: dict[str, np.ndarray],
    kind: str,
    num_classes: int,
    shrinkage: list[float] | None = None,
    report_path: str | Path | None = None,
    *,
    tol: float = ERASURE_TOL,
    return_eraser: bool = False,
) -> tuple[dict[str, np.ndarray], dict] | tuple[dict[str, np.ndarray], dict, object]:
    """``erase_split`` that also returns its report (a JSON-able dict), and with
    ``return_eraser`` the fitted transform (for ``apply_eraser`` on other splits).

    The report holds what was fitted (kind, shrinkage, stats hash, QLEACE's support,
    complement and barycenter records), the residuals of ``erasure_residuals`` computed
    in float64 from the float32 output, and ``checks`` (``target_check`` entries; a warning
    is logged for each one missed) with ``met``:

    * ``class_mean_spread <= tol`` (both erasers);
    * QLEACE: ``class_cov_max_rel_diff <= tol`` on the full space, and the barycenter's
      relative fixed-point residual within its solver tolerance. With shrinkage the maps are
      exact for the shrunk covariances only, so the covariance target is expected to miss
      and is flagged as such.
    """
    from dsb.stats.erasure import erasure_residuals, fit_eraser
    from dsb.stats.moments import fit_class_stats
    from dsb.stats.report import target_check, warn_unmet

    x, y = data["image"], data["label"]
    n = len(y)
    sh = None if shrinkage is None else (float(shrinkage[0]), float(shrinkage[1]))
    flat = x.reshape(n, -1)
    stats = fit_class_stats([(flat, y)], num_classes, shrinkage=sh)
    eraser = fit_eraser(kind, stats)
    erased = np.asarray(eraser(flat.astype(np.float64), y), np.float32)
    res = erasure_residuals(erased, y)
    checks = {
        "class_mean_spread": target_check(
            res["class_mean_spread"], tol, "class means of the erased split differ"
        )
    }
    report = {
        "kind": kind,
        "shrinkage": None if sh is None else list(sh),
        "tol": float(tol),
        "mean_abs_change": float(np.abs(erased - flat).mean()),
        "fraction_outside_0_1": float(((erased < 0) | (erased > 1)).mean()),
        "stats_hash": stats.content_hash,
        "residuals": res,
    }
    if kind == "qleace":
        info = dict(eraser.info)
        bary = info.pop("barycenter")
        why = "class covariances of the erased split differ"
        if sh is not None:
            why += "; with shrinkage the maps are exact for the shrunk covariances only"
        checks["class_cov_max_rel_diff"] = target_check(res["class_cov_max_rel_diff"], tol, why)
        checks["barycenter_residual"] = target_check(
            bary["residual"], bary["tol"], "barycenter fixed point not converged"
        )
        report |= {"support": info, "barycenter": bary}
    warn_unmet(f"erasure ({kind})", checks)
    report |= {"checks": checks, "met": all(c["met"] for c in checks.values())}
    if report_path is not None:
        Path(report_path).write_text(json.dumps(report, indent=2))
    if return_eraser:
        return {**data, "image": erased.reshape(x.shape)}, report, eraser
    return {**data, "image": erased.reshape(x.shape)}, report


def apply_eraser(eraser, data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Another split through an eraser fitted on the training split (each example moved
    by the map of its own label, as the training examples were): float32 images of the
    same shape. No statistics of ``data`` are used, so its class statistics are only as
    equal as the training split's maps make them."""
    x, y = data["image"], data["label"]
    flat = x.reshape(len(y), -1).astype(np.float64)
    return {**data, "image": np.asarray(eraser(flat, y), np.float32).reshape(x.shape)}


# Bump when the erased split, its report or the eraser of the same inputs changes (the
# fit's code: its class statistics, rcond and tolerances are not in the key).
_ERASED_CACHE_VERSION = "erased-v1"


def erased_cache_key(
    data: dict[str, np.ndarray],
    kind: str,
    num_classes: int,
    shrinkage: list[float] | None,
    tol: float,
) -> str:
    """sha256 of everything ``erase_split_with_report`` reads: the images' and labels'
    bytes, dtypes and shapes, and every option (kind, num_classes, shrinkage, tol)."""
    sh = None if shrinkage is None else [float(shrinkage[0]), float(shrinkage[1])]
    options = {"kind": kind, "num_classes": int(num_classes), "shrinkage": sh, "tol": float(tol)}
    h = hashlib.sha256(_ERASED_CACHE_VERSION.encode())
    h.update(json.dumps(options, sort_keys=True).encode())
    for name in ("image", "label"):
        hash_array(h, data[name], name)
    return h.hexdigest()


def _eraser_class(kind: str):
    from dsb.stats.erasure import LeaceEraser, QleaceEraser

    return {"leace": LeaceEraser, "qleace": QleaceEraser}[kind]


def cached_erase_split(
    data: dict[str, np.ndarray],
    kind: str,
    num_classes: int,
    shrinkage: list[float] | None = None,
    report_path: str | Path | None = None,
    *,
    cache_dir: str | Path | None,
    tol: float = ERASURE_TOL,
) -> tuple[dict[str, np.ndarray], dict, object, bool]:
    """``erase_split_with_report(..., return_eraser=True)`` kept in ``cache_dir`` (None:
    no cache): ``(erased data, report, eraser, loaded_from_cache)``.

    The file (``erased-<kind>-<key>.npz``) is keyed by ``erased_cache_key``: the split's
    bytes and every option. It holds the erased images, the report (so its statistics
    hash, which ``dsb.mdl`` compares across prefix runs, is the fitting run's) and the
    eraser's arrays, so a loaded split equals a fresh fit bit for bit. Built under
    ``build_lock`` and written atomically (``dsb.cache.load_or_build``): the prefix runs of
    an MDL value, and every seed and model of a sweep over the same split, fit once (at
    d = 784 on 60000 images: the class statistics and QLEACE's maps take minutes). The
    file is the erased split as float32 plus the maps (QLEACE: ``K d^2`` float64; ~240 MB
    for Fashion-MNIST's train split). The report is written to ``report_path`` either way.
    """
    from dsb.cache import load_or_build, write_atomically
    from dsb.stats.report import warn_unmet

    def fit():
        return erase_split_with_report(
            data, kind, num_classes, shrinkage, tol=tol, return_eraser=True
        )

    if cache_dir is None:
        out, report, eraser = fit()
        loaded = False
    else:
        key = erased_cache_key(data, kind, num_classes, shrinkage, tol)
        path = Path(cache_dir) / f"erased-{kind}-{key[:20]}.npz"

        def load():
            if not path.exists():
                return None
            with np.load(path, allow_pickle=False) as f:
                if str(f["key"]) != key:
                    return None
                meta = json.loads(str(f["meta"]))
                fields = {
                    name: f[f"eraser_{name}"] if name in meta["arrays"] else meta["other"][name]
                    for name in meta["arrays"] + list(meta["other"])
                }
                erased = {**data, "image": f["image"]}
            return erased, meta["report"], _eraser_class(kind)(**fields)

        def save(value) -> None:
            erased, report, eraser = value
            fields = {f.name: getattr(eraser, f.name) for f in dataclasses.fields(eraser)}
            arrays = {n: v for n, v in fields.items() if isinstance(v, np.ndarray)}
            meta = {
                "report": report,
                "arrays": list(arrays),
                "other": {n: v for n, v in fields.items() if n not in arrays},
            }
            try:
                write_atomically(
                    path,
                    lambda fh: np.savez(
                        fh,
                        key=key,
                        meta=json.dumps(meta),
                        image=erased["image"],
                        **{f"eraser_{n}": v for n, v in arrays.items()},
                    ),
                )
                log.info("erasure (%s): fitted, cached in %s", kind, path)
            except OSError as e:
                log.warning("could not cache the erased split in %s: %s", path, e)

        (out, report, eraser), loaded = load_or_build(path, load, fit, save)
        if loaded:
            log.info("erasure (%s): loaded from %s", kind, path)
            warn_unmet(f"erasure ({kind})", report["checks"])
    if report_path is not None:
        Path(report_path).write_text(json.dumps(report, indent=2))
    return out, report, eraser, loaded
