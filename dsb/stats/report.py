"""Achieved moment errors of a generated or edited set against its target ``ClassStats``."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from dsb.stats.moments import ClassStats, projected_third_moments

__all__ = ["MomentReport", "moment_report", "target_check", "unmet_checks", "warn_unmet"]

log = logging.getLogger("dsb")


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
    than two samples get NaN.
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

    @property
    def met(self) -> bool:
        """Every stated target reached (True when the method states none)."""
        return not unmet_checks(self.checks)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"met": self.met}


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def moment_report(
    x_NxD: np.ndarray,
    y_N: np.ndarray,
    stats: ClassStats,
    *,
    skew_cols: slice | None = None,
    extra: dict | None = None,
    checks: dict | None = None,
) -> MomentReport:
    """Compare the empirical class moments of ``x [n, d]`` (labels ``y [n]``) to ``stats``.

    ``skew_cols`` picks the projections used for the co-skewness error (default: all).
    """
    x_NxD = np.asarray(x_NxD, np.float64)
    y_N = np.asarray(y_N)
    k_all = stats.num_classes
    me, ce, se, cnt = [], [], [], []
    cols = skew_cols if skew_cols is not None else slice(None)
    for k in range(k_all):
        xk = x_NxD[y_N == k]
        cnt.append(len(xk))
        if len(xk) < 2:
            me.append(np.nan), ce.append(np.nan), se.append(np.nan)
            continue
        m = xk.mean(0)
        cen = xk - m
        me.append(_rel(m, stats.mean_KxD[k]))
        ce.append(_rel(cen.T @ cen / len(xk), stats.covariance(k)))
        if stats.proj_DxR is not None:
            s = projected_third_moments(xk, stats.proj_DxR[:, cols])
            se.append(_rel(s, stats.proj_skew_KxR[k, cols]))
        else:
            se.append(np.nan)
    w = np.asarray(cnt, np.float64)
    ok = np.isfinite(me)
    w = np.where(ok, w, 0.0)
    w = w / max(w.sum(), 1.0)

    def avg(v):
        v = np.asarray(v)
        return float(np.sum(np.where(np.isfinite(v), v, 0.0) * w))

    return MomentReport(
        mean_rel_err=avg(me),
        cov_rel_err=avg(ce),
        coskew_rel_err=avg(se),
        mean_rel_err_K=tuple(map(float, me)),
        cov_rel_err_K=tuple(map(float, ce)),
        coskew_rel_err_K=tuple(map(float, se)),
        count_K=tuple(cnt),
        extra=dict(extra or {}),
        checks=dict(checks or {}),
    )
