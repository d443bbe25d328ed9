"""Optimal-transport edits of real samples from a source class s toward a target class t.

Edited sets keep both labels: the target t (the set's label) and the source s. Targets are
drawn once from a seed (``draw_targets``), uniformly among the other classes.

  cqn         first order: per-coordinate monotone 1-D OT, x'_j = Q_{t,j}(F_{s,j}(x_j)).
              Atoms of the source marginal are split uniformly at random (the OT plan
              between discrete marginals), so x'_j has exactly the target marginal.
  mean_shift  first order: X <- clip(X - (mean X - mu_t), 0, 1) per target-class batch.
  gaussian    second order: x' = mu_t + A_{s->t}(x - mu_s), A the Bures/Monge map.

The Gaussian maps are applied per needed (s, t) pair from one float64 eigendecomposition
of each source covariance (computed once per source class, its vectors kept in float32,
dropped after its rows are edited) and the target covariance read from the statistics;
the d x d map itself is never formed, let alone the K^2 of them. Beyond the statistics,
at most 1.5 d x d float64 of working memory lives at a time (0.11 GiB at d = 3072).
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


def sym_eig(
    cov_DxD: np.ndarray, overwrite: bool = False, driver: str = "evd"
) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues clipped at 0 and eigenvectors of a symmetric PSD ``[d, d]`` matrix.

    Only the lower triangle is read. ``driver="evd"`` (LAPACK ``syevd``) needs a 2 d^2
    workspace; ``"ev"`` (``syev``, QL iteration) needs O(d) and, with ``overwrite`` on a
    Fortran-ordered float64 input, returns the eigenvectors in the input's own memory, so
    the decomposition costs no d x d array beyond its input. ``overwrite`` lets LAPACK
    work in the input's memory, which saves a d x d copy in the OT maps.
    """
    lam, u = scipy.linalg.eigh(
        cov_DxD, lower=True, overwrite_a=overwrite, check_finite=False, driver=driver
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
    """``[d, d]`` Monge map between N(., Sigma_s) and N(., Sigma_t) (shrinkage applied).

    Float64 throughout; ``gaussian_ot_edit`` never forms this matrix (see there).
    """
    lam, u = sym_eig(stats.covariance(s))
    return _map_from_eig(lam, u, stats.covariance(t), rcond)


_BLOCK = 256


def _source_factor(stats: ClassStats, s: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (float64) and eigenvectors (``dtype``) of Sigma_s.

    The eigendecomposition is float64 (``syev`` in place on a Fortran-ordered scratch
    copy, which ends up holding the vectors); only the stored vectors are rounded to
    ``dtype``. Peak: the copy plus the rounded vectors, 1.5 d x d float64.
    """
    scratch = np.array(stats.cov_KxDxD[s], np.float64, order="F", copy=True)
    if stats.shrinkage is not None:  # ClassStats.covariance, without a second copy
        a, b = stats.shrinkage
        d = scratch.shape[0]
        c = b * float(np.trace(scratch)) / d
        scratch *= a
        scratch.flat[:: d + 1] += c
    lam, u = sym_eig(scratch, overwrite=True, driver="ev")
    del scratch
    return lam, u.astype(dtype, copy=False)


def _rotated_target(stats: ClassStats, t: int, u_s: np.ndarray) -> np.ndarray:
    """``U_s' Sigma_t U_s`` as a new ``[d, d]`` float64, computed in ``_BLOCK`` tiles.

    Sigma_t is read straight from ``stats.cov_KxDxD`` (shrinkage ``a S + c I`` folded in
    as ``a S U + c U``), and ``U_s`` is upcast to float64 one d x _BLOCK panel at a time,
    so nothing d x d is allocated besides the result. Only the blocks on and above the
    diagonal are multiplied (3 d^3 flops instead of 4); the rest is their mirror.
    """
    cov_t = stats.cov_KxDxD[t]
    d = cov_t.shape[0]
    a, c = 1.0, 0.0
    if stats.shrinkage is not None:
        a, b = stats.shrinkage
        c = b * float(np.trace(cov_t)) / d
    out = np.empty((d, d), order="F")  # LAPACK's order: eigh overwrites it, no copy
    blocks = [slice(i, min(i + _BLOCK, d)) for i in range(0, d, _BLOCK)]
    for j, bj in enumerate(blocks):
        uj = np.asarray(u_s[:, bj], np.float64)
        tu = cov_t @ uj  # [d, b]
        if a != 1.0:
            tu *= a
        if c != 0.0:
            tu += c * uj
        del uj
        for bi in blocks[: j + 1]:  # the result is symmetric: one triangle, mirrored
            ui = np.asarray(u_s[:, bi], np.float64)
            blk = ui.T @ tu
            del ui
            out[bi, bj] = blk
            out[bj, bi] = blk.T
            del blk
        del tu
    return out


def _apply_pair(z_NxD, lam_s, u_s, stats, t, rcond, driver="ev") -> np.ndarray:
    """``z A_{s->t}`` for rows ``z = x - mu_s`` without forming the d x d map A.

    ``A = U D (M^{1/2}) D U'`` with ``D = diag(1/sqrt(lam_s))`` (pseudo-inverse) and
    ``M = diag(r) U' T U diag(r)``; M is eigendecomposed in float64 (``driver="ev"``:
    in place, the vectors overwrite M), and the rows go through the factors: n x d work
    per factor instead of d^3 to build A. Peak: M, one d x d float64 array (plus ``U_s``
    and two d x _BLOCK panels; ``"evr"`` adds a d x d array for the vectors).
    """
    r = np.sqrt(lam_s)
    ri = _inv_sqrt(lam_s, rcond)
    m = _rotated_target(stats, t, u_s)
    m *= r[:, None]
    m *= r[None, :]
    g, v = sym_eig(m, overwrite=True, driver=driver)
    del m
    y = _times_panels(z_NxD, u_s)  # [n, d] coordinates in Sigma_s's eigenbasis
    y *= ri
    y = y @ v
    y *= np.sqrt(g)
    y = y @ v.T
    del v
    y *= ri
    return _times_panels(y, u_s, transpose=True)


def _times_panels(y_NxD: np.ndarray, u_DxD: np.ndarray, transpose: bool = False) -> np.ndarray:
    """``y @ u`` (or ``y @ u.T``) in float64 with ``u`` upcast one d x _BLOCK panel at a
    time: a mixed-precision ``@`` would materialise a float64 copy of all of ``u``."""
    d = u_DxD.shape[0]
    out = np.zeros((len(y_NxD), d))
    for i in range(0, d, _BLOCK):
        b = slice(i, min(i + _BLOCK, d))
        panel = np.asarray(u_DxD[:, b], np.float64)
        if transpose:
            out += y_NxD[:, b] @ panel.T
        else:
            out[:, b] = y_NxD @ panel
    return out


def gaussian_ot_edit(
    stats: ClassStats,
    x_NxD: np.ndarray,
    src_N: np.ndarray,
    tgt_N: np.ndarray,
    *,
    clip: bool = False,
    rcond: float = 1e-10,
    factor_dtype=np.float32,
    pair_driver: str = "ev",
) -> EditedSet:
    """x' = mu_t + A_{s->t}(x - mu_s) row by row; one eigh per source class present.

    One source class at a time: Sigma_s is eigendecomposed in float64 and its
    eigenvectors kept in ``factor_dtype`` (float32 by default: half the memory; edits
    differ from the float64 map by ~2e-7 on [0, 1] pixels in the tests and checks, far
    below the 8-bit step 1/255; pass ``np.float64`` for full precision). Each needed
    target t is then applied through the factors (``_apply_pair``); Sigma_t is read from
    ``stats`` in tiles. The working set beyond ``stats`` is 1.5 d x d float64 (0.11 GiB
    at d = 3072) with float32 vectors, 2 with float64; no d x d map is ever formed, let
    alone the K^2 of them.
    ``pair_driver`` is the LAPACK driver of the per-pair eigh: ``"ev"`` works in place
    (the 1.5 d^2 above); ``"evr"`` adds a d x d array for the vectors (2.5 d^2, 0.18 GiB
    at d = 3072) but was faster on that eigh (7 s against 24 s, one isolated timing at
    d = 3072, one BLAS thread on a loaded 2-core box; see
    ``benchmarks/results/gaussian_ot_memory.json`` for whole runs).

    ``clip`` clamps the result to [0, 1]; the fraction outside the box is reported.
    """
    factor_dtype = np.dtype(factor_dtype)
    x = np.asarray(x_NxD, np.float64)
    out = np.empty_like(x)
    pairs = 0
    for s in np.unique(src_N):
        ms = np.flatnonzero(src_N == s)
        lam, u = _source_factor(stats, int(s), factor_dtype)
        for t in np.unique(tgt_N[ms]):
            rows = ms[tgt_N[ms] == t]
            z = x[rows] - stats.mean_KxD[s]
            y = _apply_pair(z, lam, u, stats, int(t), rcond, pair_driver)
            y += stats.mean_KxD[t]
            out[rows] = y
            del y, z
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
