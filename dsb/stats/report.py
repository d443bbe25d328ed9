"""Achieved moment errors of a generated or edited set against its target ``ClassStats``.

Every report carries a noise floor beside its errors: the same relative errors for an
independent sample of the real data of the same size per class. Without the real data the
floor is the Gaussian approximation computed from ``stats`` alone (``"source": "gaussian"``);
with ``reference_x/reference_y`` (the data ``stats`` were fitted on) it is a bootstrap:
``count_K[k]`` rows drawn with replacement from class k, averaged over ``floor_repeats``
draws (``"source": "bootstrap"``). Drawing with replacement is sampling n i.i.d. points from
the empirical law whose moments are the targets, so it is the floor of any honest sampler of
that law, also when n exceeds the class size. On UCI digits (train split, 2000 samples,
~200 per class) the bootstrap floor is mean 0.032, covariance 0.21, co-skewness 0.39.

Co-skewness is measured on projections no sampler fitted: by default the last
``HELDOUT_PROJECTIONS`` columns of ``stats.proj_DxR`` (the particle sampler fits only the
columns before them), and with reference data on ``fresh_projections`` new random unit
directions whose targets are the reference data's own projected third moments.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from dsb.stats.moments import ClassStats, projected_third_moments

__all__ = [
    "FLOOR_FACTOR",
    "HELDOUT_PROJECTIONS",
    "MomentReport",
    "floor_checks",
    "heldout_cols",
    "moment_report",
    "target_check",
    "unmet_checks",
    "warn_unmet",
]

log = logging.getLogger("dsb")

HELDOUT_PROJECTIONS = 64
"""The last this many columns of ``ClassStats.proj_DxR`` are never fitted by a sampler."""

FLOOR_FACTOR = 1.5
"""A sampler meets a moment target when its error is at most this times the noise floor:
an independent resample of the real data sits at the floor on average, and the floor itself
is an estimate (a Gaussian approximation without the data, a few bootstrap draws with it)."""


def heldout_cols(stats: ClassStats) -> slice:
    """The projections of ``stats`` reserved for held-out co-skewness (all when R <= 64)."""
    r = 0 if stats.proj_DxR is None else stats.proj_DxR.shape[1]
    return slice(max(r - HELDOUT_PROJECTIONS, 0), r)


def target_check(achieved: float, tol: float, why: str = "") -> dict:
    """One stated target of an edit, sampler or eraser: the error ``achieved`` against its
    tolerance ``tol``, whether it was met, and (when it was not) ``why``. NaN never meets."""
    achieved = float(achieved)
    return {"achieved": achieved, "tol": float(tol), "met": bool(achieved <= tol), "why": why}


def unmet_checks(checks: dict) -> dict:
    """The entries of ``{name: target_check(...)}`` that missed their tolerance."""
    return {k: c for k, c in checks.items() if not c["met"]}


def warn_unmet(what: str, checks: dict) -> bool:
    """Log one warning per missed target of ``what``; True when every target was met."""
    missed = unmet_checks(checks)
    for name, c in missed.items():
        why = f" ({c['why']})" if c.get("why") else ""
        log.warning(
            "%s: target %s missed: achieved %.3g > tolerance %.3g%s",
            what, name, c["achieved"], c["tol"], why,
        )  # fmt: skip
    return not missed


@dataclasses.dataclass(frozen=True)
class MomentReport:
    """Relative moment errors per class and their prior-weighted averages.

    mean: ``||m_hat - mu||_2 / ||mu||_2``; cov: ``||C_hat - Sigma||_F / ||Sigma||_F``
    against ``stats.covariance(k)`` (shrunk where shrinkage is recorded); coskew:
    ``||s_hat - s||_2 / ||s||_2`` over the projected central third moments (the held-out
    half of the projections when the sampler matched the other half). Classes with fewer
    than two samples get NaN; an average over no measured class (co-skewness of stats
    fitted without projections, or no class with two samples) is NaN, never 0.
    """

    mean_rel_err: float
    cov_rel_err: float
    coskew_rel_err: float
    mean_rel_err_K: tuple[float, ...]
    cov_rel_err_K: tuple[float, ...]
    coskew_rel_err_K: tuple[float, ...]
    count_K: tuple[int, ...]
    extra: dict = dataclasses.field(default_factory=dict)
    checks: dict = dataclasses.field(default_factory=dict)
    """``{name: target_check(...)}``: the method's own stated targets (convergence of its
    solver, the moments it claims to reach) and what it achieved."""
    noise_floor: dict = dataclasses.field(default_factory=dict)
    """``{"mean_rel_err", "cov_rel_err", "coskew_rel_err", "source", ...}``: the same errors
    for an independent sample of the real data with the same class counts (module doc)."""

    @property
    def met(self) -> bool:
        """Every stated target reached (True when the method states none)."""
        return not unmet_checks(self.checks)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"met": self.met}


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def _class_errors(xk, mu, cov, w_DxR, skew_R):
    """(mean, cov, coskew) relative errors of the rows ``xk`` (coskew NaN without w)."""
    m = xk.mean(0)
    cen = xk - m
    se = np.nan if w_DxR is None else _rel(projected_third_moments(xk, w_DxR), skew_R)
    return _rel(m, mu), _rel(cen.T @ cen / len(xk), cov), se


def _gaussian_floor(n, mu, cov, w_DxR, skew_R):
    """Expected relative errors of n Gaussian draws with these moments (leading order).

    ``E||m - mu||^2 = tr S / n``; ``E||C - S||_F^2 = (||S||_F^2 + (tr S)^2) / n``; the
    sample third central moment of ``w'x ~ N(., s2)`` has variance ``6 s2^3 / n``.
    """
    tr = np.trace(cov)
    fro2 = float(np.sum(cov * cov))
    me = np.sqrt(tr / n) / max(np.linalg.norm(mu), 1e-300)
    ce = np.sqrt((fro2 + tr**2) / n) / max(np.sqrt(fro2), 1e-300)
    se = np.nan
    if w_DxR is not None:
        s2 = np.einsum("dr,dr->r", w_DxR, cov @ w_DxR)
        se = np.sqrt(np.sum(6 * s2**3) / n) / max(np.linalg.norm(skew_R), 1e-300)
    return me, ce, se


def _avg(v, w) -> float:
    """Weighted mean of per-class errors over the classes where it was measured; NaN when
    none was (no class with two rows, or co-skewness without projections): an unmeasured
    error is never reported as 0."""
    v, w = np.asarray(v, np.float64), np.asarray(w, np.float64)
    ok = np.isfinite(v)
    if not ok.any():
        return float("nan")
    return float(np.sum(v[ok] * w[ok]) / np.sum(w[ok]))


def floor_checks(rep: MomentReport, names=("mean", "cov"), factor: float = FLOOR_FACTOR) -> dict:
    """``{name: target_check(err, factor x floor)}`` for the moments a sampler claims."""
    src = rep.noise_floor.get("source", "?")
    out = {}
    for name in names:
        err = getattr(rep, f"{name}_rel_err")
        floor = rep.noise_floor.get(f"{name}_rel_err", np.nan)
        out[name] = target_check(
            err,
            factor * floor,
            f"{name} error above {factor} x the {src} noise floor {floor:.3g} of an "
            "independent real-data sample of this size",
        )
    return out


def moment_report(
    x_NxD: np.ndarray,
    y_N: np.ndarray,
    stats: ClassStats,
    *,
    skew_cols: slice | None = None,
    extra: dict | None = None,
    checks: dict | None = None,
    reference_x: np.ndarray | None = None,
    reference_y: np.ndarray | None = None,
    fresh_projections: int = HELDOUT_PROJECTIONS,
    floor_repeats: int = 3,
    floor_seed: int = 0,
) -> MomentReport:
    """Compare the empirical class moments of ``x [n, d]`` (labels ``y [n]``) to ``stats``.

    Co-skewness uses ``skew_cols`` of ``stats.proj_DxR`` (default ``heldout_cols(stats)``,
    never fitted), or with ``reference_x [m, d] / reference_y [m]`` (the data ``stats`` were
    fitted on) ``fresh_projections`` new unit directions (seeded by ``floor_seed``) with the
    reference's projected third moments as targets. ``noise_floor`` is filled either way
    (module doc): bootstrap with ``floor_repeats`` draws when reference data is given, the
    Gaussian approximation otherwise.
    """
    x_NxD = np.asarray(x_NxD, np.float64)
    y_N = np.asarray(y_N)
    if x_NxD.ndim != 2 or len(x_NxD) != len(y_N) or x_NxD.shape[1] != stats.dim:
        raise ValueError(
            f"expected x [n, {stats.dim}] and y [n]; got {x_NxD.shape} and {y_N.shape}"
        )
    k_all = stats.num_classes
    ref = reference_x is not None or reference_y is not None
    if ref:
        if reference_x is None or reference_y is None:
            raise ValueError("pass both reference_x and reference_y, or neither")
        reference_x = np.asarray(reference_x, np.float64).reshape(len(reference_y), -1)
        reference_y = np.asarray(reference_y)
        if reference_x.shape[1] != stats.dim:
            raise ValueError(f"reference_x has dimension {reference_x.shape[1]}, not {stats.dim}")
        if fresh_projections < 1 or floor_repeats < 1:
            raise ValueError("fresh_projections and floor_repeats must be >= 1")
        # Its own seed stream (not ``projection_seed``'s): independent of every fitted column.
        rng = np.random.default_rng([floor_seed, 0x5EED])
        w_all = rng.standard_normal((stats.dim, fresh_projections))
        w_all /= np.linalg.norm(w_all, axis=0, keepdims=True)
    else:
        w_all = None if stats.proj_DxR is None else stats.proj_DxR
        cols = skew_cols if skew_cols is not None else heldout_cols(stats)
        if w_all is not None:
            w_all = w_all[:, cols]
    me, ce, se, cnt = [], [], [], []
    fm, fc, fs = [], [], []
    for k in range(k_all):
        xk = x_NxD[y_N == k]
        cnt.append(len(xk))
        if len(xk) < 2:
            for v in (me, ce, se, fm, fc, fs):
                v.append(np.nan)
            continue
        cov = stats.covariance(k)
        mu = stats.mean_KxD[k]
        if ref:
            rk = reference_x[reference_y == k]
            if len(rk) < 2:
                raise ValueError(f"reference data has {len(rk)} rows of class {k}; need 2")
            skew = projected_third_moments(rk, w_all)
        else:
            skew = None if w_all is None else stats.proj_skew_KxR[k, cols]
        e = _class_errors(xk, mu, cov, w_all, skew)
        me.append(e[0]), ce.append(e[1]), se.append(e[2])
        if ref:
            reps = [
                _class_errors(rk[rng.integers(0, len(rk), len(xk))], mu, cov, w_all, skew)
                for _ in range(floor_repeats)
            ]
            f = np.mean(reps, axis=0)
        else:
            f = _gaussian_floor(len(xk), mu, cov, w_all, skew)
        fm.append(f[0]), fc.append(f[1]), fs.append(f[2])
    w = np.asarray(cnt, np.float64)  # a class with < 2 rows has NaN errors: _avg skips it
    floor = {
        "mean_rel_err": _avg(fm, w),
        "cov_rel_err": _avg(fc, w),
        "coskew_rel_err": _avg(fs, w),
        "source": "bootstrap" if ref else "gaussian",
    }
    if ref:
        floor["repeats"] = floor_repeats
    ex = {"coskew_projections": f"fresh:{fresh_projections}" if ref else "stats_heldout"}
    if not ref and skew_cols is not None:
        ex["coskew_projections"] = "stats_cols"
    return MomentReport(
        mean_rel_err=_avg(me, w),
        cov_rel_err=_avg(ce, w),
        coskew_rel_err=_avg(se, w),
        mean_rel_err_K=tuple(map(float, me)),
        cov_rel_err_K=tuple(map(float, ce)),
        coskew_rel_err_K=tuple(map(float, se)),
        count_K=tuple(cnt),
        extra=ex | dict(extra or {}),
        checks=dict(checks or {}),
        noise_floor=floor,
    )
