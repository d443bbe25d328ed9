"""Whole-split transforms applied before training (concept erasure)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["erase_split"]


def erase_split(
    data: dict[str, np.ndarray],
    kind: str,
    num_classes: int,
    shrinkage: list[float] | None = None,
    report_path: str | Path | None = None,
) -> dict[str, np.ndarray]:
    """LEACE or QLEACE of a split's images, fitted on that split (float64 statistics).

    Returns a new dict with erased ``image`` (same shape, float32; values may leave
    [0, 1], the erasure is affine). Writes what was fitted to ``report_path`` if given.
    """
    from dsb.stats.erasure import fit_eraser
    from dsb.stats.moments import fit_class_stats

    x, y = data["image"], data["label"]
    n = len(y)
    sh = None if shrinkage is None else (float(shrinkage[0]), float(shrinkage[1]))
    stats = fit_class_stats([(x.reshape(n, -1), y)], num_classes, shrinkage=sh)
    eraser = fit_eraser(kind, stats)
    erased = np.asarray(eraser(x.reshape(n, -1).astype(np.float64), y), np.float32)
    if report_path is not None:
        flat = x.reshape(n, -1)
        report = {
            "kind": kind,
            "shrinkage": sh,
            "mean_abs_change": float(np.abs(erased - flat).mean()),
            "fraction_outside_0_1": float(((erased < 0) | (erased > 1)).mean()),
            "stats_hash": stats.content_hash,
        }
        Path(report_path).write_text(json.dumps(report, indent=2))
    return {**data, "image": erased.reshape(x.shape)}
