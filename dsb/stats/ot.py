"""Optimal-transport edits of real samples from a source class s toward a target class t.

Edited sets keep both labels: the target t (the set's label) and the source s. Targets are
drawn once from a seed (``draw_targets``), uniformly among the other classes.

  cqn         first order: per-coordinate monotone 1-D OT, x'_j = Q_{t,j}(F_{s,j}(x_j)).
              Atoms of the source marginal are split uniformly at random (the OT plan
              between discrete marginals), so x'_j has exactly the target marginal.
  mean_shift  first order: X <- clip(X - (mean X - mu_t), 0, 1) per target-class batch.
  gaussian    second order: x' = mu_t + A_{s->t}(x - mu_s), A the Bures/Monge map.

The Gaussian maps are built per needed (s, t) pair from one eigendecomposition of each
source covariance (computed once per source class, dropped after its rows are edited), so
at most a handful of d x d float64 matrices live at a time; the K^2 maps are never stored.
ott-jax's ``Gaussian.transport`` computes the same map (tests compare the two), but it
re-factorises the source per call through a Cholesky scale, which fails on the singular
covariances of image data (always-black pixels); here PSD pseudo-inverse roots are used.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.linalg

from dsb.stats.moments import ClassStats, marginal_cdf, marginal_quantile
from dsb.stats.report import MomentReport, moment_report

__all__ = [
    "OT_EDITS",
    "EditedSet",
    "cqn_edit",
    "draw_targets",
    "gaussian_ot_edit",
    "gaussian_ot_map",
    "mean_shift_edit",
    "sym_eig",
]


@dataclasses.dataclass(frozen=True)
class EditedSet:
    """Edited ``x_NxD`` float32, target labels ``y_N`` (= t), source labels ``src_N``."""

    x_NxD: np.ndarray
    y_N: np.ndarray
    src_N: np.ndarray
    report: MomentReport


def draw_targets(src_N: np.ndarray, num_classes: int, seed: int = 0) -> np.ndarray:
    """``[n]`` int32 targets t != s, uniform over the other K - 1 classes."""
    rng = np.random.default_rng(seed)
    off = rng.integers(1, num_classes, size=len(src_N))
    return ((np.asarray(src_N) + off) % num_classes).astype(np.int32)


def _report(x, tgt, src, stats, **extra) -> MomentReport:
    return moment_report(x, tgt, stats, extra=extra)


# ----------------------------------------------------------------------------- CQN


def cqn_edit(
    stats: ClassStats, x_NxD: np.ndarray, src_N: np.ndarray, tgt_N: np.ndarray, seed: int = 0
) -> EditedSet:
    """Coordinatewise quantile normalisation from class s to class t (``[n, d]`` in/out)."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x_NxD, np.float64)
    out = np.empty_like(x)
    v = rng.random(x.shape)
    for s in np.unique(src_N):
        ms = src_N == s
        lo, hi = marginal_cdf(stats, int(s), x[ms])
        u = lo + v[ms] * (hi - lo)
        u = np.clip(u, 0.0, np.nextafter(1.0, 0.0))
        ts = tgt_N[ms]
        res = np.empty_like(u)
        for t in np.unique(ts):
            mt = ts == t
            res[mt] = marginal_quantile(stats, int(t), u[mt])
        out[ms] = res
    return EditedSet(out.astype(np.float32), tgt_N, src_N, _report(out, tgt_N, src_N, stats))


# ----------------------------------------------------------------------------- mean shift


def mean_shift_edit(
    stats: ClassStats,
    x_NxD: np.ndarray,
    src_N: np.ndarray,
    tgt_N: np.ndarray,
    *,
    tol: float = 1e-6,
    max_iters: int = 1000,
) -> EditedSet:
    """Bounded mean shift: per target class, iterate ``X <- clip(X - (mean X - mu_t), 0, 1)``.

    Converges when every coordinate of the batch mean is within ``tol`` of mu_t (reachable
    whenever mu_t lies in [0, 1]); the final max deviation is recorded in the report.
    """
    x = np.asarray(x_NxD, np.float64).copy()
    worst, iters = 0.0, 0
    for t in np.unique(tgt_N):
        m = tgt_N == t
        xt = x[m]
        it = 0
        while it < max_iters:
            gap = xt.mean(0) - stats.mean_KxD[t]
            if np.max(np.abs(gap)) < tol:
                break
            xt = np.clip(xt - gap, 0.0, 1.0)
            it += 1
        iters = max(iters, it)
        worst = max(worst, float(np.max(np.abs(xt.mean(0) - stats.mean_KxD[t]))))
        x[m] = xt
    rep = _report(x, tgt_N, src_N, stats, max_abs_mean_gap=worst, iterations=iters)
    return EditedSet(x.astype(np.float32), tgt_N, src_N, rep)


# ----------------------------------------------------------------------------- Gaussian


def sym_eig(cov_DxD: np.ndarray, overwrite: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues clipped at 0 and eigenvectors of a symmetric PSD ``[d, d]`` matrix.

    Only the lower triangle is read (LAPACK ``syevd``); ``overwrite`` lets LAPACK work in
    the input's memory, which saves a d x d copy in the OT maps.
    """
    lam, u = scipy.linalg.eigh(
        cov_DxD, lower=True, overwrite_a=overwrite, check_finite=False, driver="evd"
    )
    return np.clip(lam, 0.0, None), u


def _inv_sqrt(lam: np.ndarray, rcond: float) -> np.ndarray:
    cut = rcond * max(float(lam.max()), 1e-300)
    return np.where(lam > cut, 1.0 / np.sqrt(np.where(lam > cut, lam, 1.0)), 0.0)


def _map_from_eig(lam, u_s, cov_t, rcond) -> np.ndarray:
    """``A = S^{-1/2} (S^{1/2} T S^{1/2})^{1/2} S^{-1/2}`` with S = U diag(lam) U'.

    Worked in S's eigenbasis: with ``T~ = U' T U`` and ``r = sqrt(lam)``,
    ``A = U diag(1/r) (diag(r) T~ diag(r))^{1/2} diag(1/r) U'`` (pseudo-inverse on the
    null space of S). Peak: U, the middle matrix, its eigenvectors and LAPACK's
    2 d^2 workspace, about five d x d float64 arrays (0.35 GiB at d = 3072).
    """
    r = np.sqrt(lam)
    ri = _inv_sqrt(lam, rcond)
    m = u_s.T @ cov_t @ u_s
    m *= r[:, None]
    m *= r[None, :]
    g, v = sym_eig(m, overwrite=True)
    del m
    v *= np.sqrt(np.sqrt(g))[None, :]
    mid = v @ v.T  # (diag(r) T~ diag(r))^{1/2}
    del v
    mid *= ri[:, None]
    mid *= ri[None, :]
    a = u_s @ mid
    del mid
    return a @ u_s.T


def gaussian_ot_map(stats: ClassStats, s: int, t: int, *, rcond: float = 1e-10) -> np.ndarray:
    """``[d, d]`` Monge map between N(., Sigma_s) and N(., Sigma_t) (shrinkage applied)."""
    lam, u = sym_eig(stats.covariance(s))
    return _map_from_eig(lam, u, stats.covariance(t), rcond)


def gaussian_ot_edit(
    stats: ClassStats,
    x_NxD: np.ndarray,
    src_N: np.ndarray,
    tgt_N: np.ndarray,
    *,
    clip: bool = False,
    rcond: float = 1e-10,
) -> EditedSet:
    """x' = mu_t + A_{s->t}(x - mu_s) row by row; one eigh per source class present.

    ``clip`` clamps the result to [0, 1]; the fraction outside the box is reported.
    """
    x = np.asarray(x_NxD, np.float64)
    out = np.empty_like(x)
    pairs = 0
    for s in np.unique(src_N):
        ms = np.flatnonzero(src_N == s)
        lam, u = sym_eig(stats.covariance(int(s)))
        for t in np.unique(tgt_N[ms]):
            rows = ms[tgt_N[ms] == t]
            a = _map_from_eig(lam, u, stats.covariance(int(t)), rcond)
            out[rows] = stats.mean_KxD[t] + (x[rows] - stats.mean_KxD[s]) @ a.T
            del a
            pairs += 1
        del lam, u
    outside = float(np.mean((out < 0) | (out > 1)))
    if clip:
        out = np.clip(out, 0.0, 1.0)
    rep = _report(out, tgt_N, src_N, stats, clip=clip, frac_outside_box=outside, pairs=pairs)
    return EditedSet(out.astype(np.float32), tgt_N, src_N, rep)


OT_EDITS = {
    "cqn": cqn_edit,
    "mean_shift": mean_shift_edit,
    "gaussian": gaussian_ot_edit,
}
