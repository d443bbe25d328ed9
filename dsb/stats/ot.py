"""Optimal-transport edits of real samples from a source class s toward a target class t.

Edited sets keep both labels: the target t (the set's label) and the source s. Targets are
drawn once from a seed (``draw_targets``), uniformly among the other classes. Every edit
states its targets in ``report.checks`` (``dsb.stats.report.target_check``). The edits are
registered as probe-set kinds under these names (``dsb.stats.probesets.OT_SETS``, also
``OT_EDITS`` here):

  cqn         first order: per-coordinate monotone 1-D OT inside each (s, t) group of rows,
              rank-based and deterministic: the group's edited values per pixel are the
              target marginal's quantiles at the mid-ranks (see ``cqn_edit``).
  mean_shift  first order: x'_j = clip(x_j - lam_j, 0, 1) per target-class batch, lam_j
              solved by bisection so the batch mean is mu_t to ~1e-15.
  gaussian    second order: x' = mu_t + T_{s->t}(x - mu_s), T the linear OT map below.

Gaussian OT with singular covariances (image classes: always-black pixels make Sigma_s
rank-deficient; digits classes have rank 48-54 of 64, each with its own null space).
Samples of class s live in mu_s + range(Sigma_s); let P_s project onto range(Sigma_s),
r_s = rank Sigma_s, r_t = rank Sigma_t. Any linear T gives T Sigma_s T' of rank <= r_s, so
a linear T with T Sigma_s T' = Sigma_t exists iff r_t <= r_s ("reachable"). The transport
cost E|z - y|^2 sees y only through <z, y> = <z, P_s y>, so it is at least the Bures cost
between Sigma_s and P_s Sigma_t P_s, and a map attaining that bound is optimal:

  1. Monge part inside range(Sigma_s): w = A z, A the Bures map from Sigma_s to
     P_s Sigma_t P_s (pseudo-inverse roots; this is all the older code did, so its output
     had covariance P_s Sigma_t P_s, not Sigma_t: median error 0.03, max 0.34 on digits).
  2. Lift: y = L w with L = Sigma_t P_s (P_s Sigma_t P_s)^+, which adds the component in
     null(Sigma_s) that regression on P_s y predicts. L w has covariance Sigma_t minus the
     Schur complement S = Sigma_t - Sigma_t P_s (P_s Sigma_t P_s)^+ P_s Sigma_t, which is 0
     iff P_s is injective on range(Sigma_t).
  3. Fill: the directions of range(Sigma_s) that A does not use (r_s - rank(P_s Sigma_t P_s)
     of them, uncorrelated with w) are mapped onto a square root of S. S lives in
     null(Sigma_s), so this costs nothing in <z, P_s y>; it fits exactly when
     rank S <= their number, i.e. iff r_t <= r_s.

So T = L A + F is an OT map with T Sigma_s T' = Sigma_t on every reachable pair. When
r_t > r_s no linear map reaches Sigma_t; the least achievable ||T Sigma_s T' - Sigma_t||_F
is the Eckart-Young floor ||lambda_{r_s+1..}(Sigma_t)||_2 (best rank-r_s approximation),
and T is built onto that approximation instead, so it reaches the floor (achieved/floor
1.00-1.08 on digits' 38 unreachable pairs, where the floor is <= 5.4e-4 relative). With
Sigma_s positive definite (always under shrinkage) steps 2-3 vanish and T is the
classical Monge map. ``_apply_pair`` has the formulas in Sigma_s's eigenbasis.

The Gaussian maps are applied per needed (s, t) pair from one float64 eigendecomposition
of each source covariance (computed once per source class, its vectors kept in float32,
dropped after its rows are edited) and the target covariance read from the statistics;
the d x d map itself is never formed, let alone the K^2 of them. Beyond the statistics,
at most 1.5 d x d float64 of working memory lives at a time (0.11 GiB at d = 3072) when
the source covariances have full rank; see ``gaussian_ot_edit`` for the singular case.
ott-jax's ``Gaussian.transport`` computes the same map on positive definite covariances
(tests compare the two), but it re-factorises the source per call through a Cholesky
scale, which fails on the singular covariances of image data (always-black pixels).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.linalg

from dsb.stats.moments import ClassStats, marginal_quantile
from dsb.stats.probesets import OT_SETS, register_ot_set
from dsb.stats.report import MomentReport, moment_report, target_check
from dsb.timing import ProgressLog

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


# ----------------------------------------------------------------------------- CQN


def _check_rows(x_NxD, src_N, tgt_N) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.asarray(x_NxD, np.float64)
    src_N, tgt_N = np.asarray(src_N), np.asarray(tgt_N)
    if x.ndim != 2 or src_N.shape != (len(x),) or tgt_N.shape != (len(x),):
        raise ValueError(
            f"expected x [n, d] with src [n] and tgt [n]; got {x.shape}, {src_N.shape}, "
            f"{tgt_N.shape}"
        )
    return x, src_N, tgt_N


def _ks_to_marginal(stats: ClassStats, t: int, v_NxD: np.ndarray) -> np.ndarray:
    """``[d]`` Kolmogorov-Smirnov distance of each column of ``v`` to class t's marginal.

    Both CDFs are right-continuous step functions; the edited values are atoms of the
    table, so the supremum is reached at the table's bin values, where it is evaluated.
    """
    vals_DxB, cdf_DxB = stats.bin_values_KxDxB[t], stats.bin_cdf_KxDxB[t]
    n, d = v_NxD.shape
    srt = np.sort(v_NxD, axis=0)
    return np.array(
        [
            np.max(np.abs(np.searchsorted(srt[:, j], vals_DxB[j], side="right") / n - cdf_DxB[j]))
            for j in range(d)
        ]
    )


# Cache versions of the OT edits: 2 is the lifted Gaussian map on singular covariances, the
# bisection mean shift and the deterministic rank-based CQN.
@register_ot_set("cqn", version=2)
def cqn_edit(
    stats: ClassStats, x_NxD: np.ndarray, src_N: np.ndarray, tgt_N: np.ndarray
) -> EditedSet:
    """Coordinatewise quantile normalisation from class s to class t (``[n, d]`` in/out).

    Rank-based, deterministic monotone transport inside each ``(s, t)`` group of rows: per
    pixel the group's ``n`` source values are ranked (ascending value, ties broken by row
    order: a stable sort) and the row of rank ``i`` gets the target class's marginal
    quantile at the mid-rank, ``Q_{t,j}((i + 0.5) / n)``. The group's edited values per
    pixel are then exactly the target quantiles at its own resolution (its empirical CDF
    is within ``1 / (2 n)`` of the target marginal, the best any ``n`` points can do), and
    the coupling is the comonotone one, i.e. 1-D OT between the group's values and those
    quantiles. No randomness is involved: two calls give the same set.

    ``report.checks`` (tolerances): ``quantile_err`` (sorted edited values minus the
    mid-rank quantiles, max over groups and pixels; 1e-12), ``ks_half_steps`` (per-pixel KS
    distance to the target marginal in units of the group's ``1 / (2 n)``; 1 + 1e-9) and
    ``monotone`` (largest decrease of the edited values along the source ranks; 0).
    """
    x, src_N, tgt_N = _check_rows(x_NxD, src_N, tgt_N)
    out = np.empty_like(x)
    q_err = ks_steps = ks_max = mono = 0.0
    groups = 0
    for s in np.unique(src_N):
        for t in np.unique(tgt_N[src_N == s]):
            rows = np.flatnonzero((src_N == s) & (tgt_N == t))
            n = len(rows)
            order = np.argsort(x[rows], axis=0, kind="stable")  # ties: row order
            u = np.broadcast_to(((np.arange(n) + 0.5) / n)[:, None], order.shape)
            q = marginal_quantile(stats, int(t), u)  # [n, d] ascending in each column
            res = np.empty_like(q)
            np.put_along_axis(res, order, q, axis=0)
            out[rows] = res
            q_err = max(q_err, float(np.max(np.abs(np.sort(res, axis=0) - q), initial=0.0)))
            ks = _ks_to_marginal(stats, int(t), res)
            ks_max = max(ks_max, float(ks.max(initial=0.0)))
            ks_steps = max(ks_steps, float(ks.max(initial=0.0)) * 2 * n)
            along = np.take_along_axis(res, order, axis=0)
            mono = max(mono, float(-np.min(np.diff(along, axis=0), initial=0.0)))
            groups += 1
    checks = {
        "quantile_err": target_check(q_err, 1e-12),
        "ks_half_steps": target_check(ks_steps, 1.0 + 1e-9),
        "monotone": target_check(mono, 0.0),
    }
    rep = moment_report(
        out, tgt_N, stats, extra={"groups": groups, "ks_max": ks_max, "ties": "row order"},
        checks=checks,
    )  # fmt: skip
    return EditedSet(out.astype(np.float32), tgt_N, src_N, rep)


# ----------------------------------------------------------------------------- mean shift

_BISECT_WIDTH = 1e-14


@register_ot_set("mean_shift", version=2)
def mean_shift_edit(
    stats: ClassStats,
    x_NxD: np.ndarray,
    src_N: np.ndarray,
    tgt_N: np.ndarray,
    *,
    tol: float = 1e-6,
    max_iters: int = 200,
) -> EditedSet:
    """Bounded mean shift: per target class t and pixel j, ``x'_ij = clip(x_ij - lam_j, 0, 1)``.

    ``lam_j`` solves ``f(lam) = mean_i clip(x_ij - lam, 0, 1) = mu_tj`` over the rows with
    target t. ``f`` is continuous, piecewise linear and non-increasing, 1 at
    ``lam = min x - 1`` and 0 at ``lam = max x``, so a root exists for every ``mu_tj`` in
    [0, 1] (a constant column, e.g. an always-black pixel, shifts to the constant mu_tj).
    It is found by bisection on that bracket, all pixels at once, until the bracket is
    narrower than 1e-14 (about 50 halvings; ``max_iters`` caps them), then a linear
    interpolation step inside the last bracket (exact where no kink lies in it); the best
    of the three candidates is kept. The achieved gap is ~1e-16.

    ``report.checks``: ``mean_gap`` (max over classes and pixels of ``|mean x' - mu_t|``,
    float64, before the float32 output rounding; tolerance ``tol``), ``targets_in_box``
    (how far any mu_tj lies outside [0, 1], which no clipped shift can reach; 0).
    ``report.extra``: ``iterations`` (most bisection steps of any class),
    ``max_abs_mean_gap``.
    """
    x, src_N, tgt_N = _check_rows(x_NxD, src_N, tgt_N)
    x = x.copy()
    worst, iters, outside = 0.0, 0, 0.0
    for t in np.unique(tgt_N):
        m = tgt_N == t
        xt = x[m]
        mu = stats.mean_KxD[t]
        outside = max(outside, float(np.max(np.maximum(-mu, mu - 1.0))), 0.0)

        def f(lam, xt=xt):
            return np.clip(xt - lam, 0.0, 1.0).mean(0)

        lo, hi = xt.min(0) - 1.0, xt.max(0)  # f(lo) = 1 >= mu >= 0 = f(hi)
        it = 0
        while it < max_iters and np.max(hi - lo) > _BISECT_WIDTH:
            mid = 0.5 * (lo + hi)
            above = f(mid) > mu  # mean still too high: the shift must grow
            lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
            it += 1
        flo, fhi = f(lo), f(hi)
        den = flo - fhi
        frac = np.clip(np.divide(flo - mu, den, out=np.zeros_like(den), where=den > 0), 0, 1)
        cands = np.stack([lo, hi, lo + frac * (hi - lo)])
        gaps = np.abs(np.stack([flo, fhi, f(cands[2])]) - mu)
        lam = np.take_along_axis(cands, np.argmin(gaps, axis=0)[None], axis=0)[0]
        xt = np.clip(xt - lam, 0.0, 1.0)
        iters = max(iters, it)
        worst = max(worst, float(np.max(np.abs(xt.mean(0) - mu))))
        x[m] = xt
    why = ""
    if outside > 0:
        why = f"some target means lie {outside:.3g} outside [0, 1]"
    elif worst > tol:
        why = f"bisection stopped after {iters} steps (max_iters={max_iters})"
    checks = {
        "mean_gap": target_check(worst, tol, why),
        "targets_in_box": target_check(outside, 0.0, why if outside > 0 else ""),
    }
    rep = moment_report(
        x, tgt_N, stats, extra={"max_abs_mean_gap": worst, "iterations": iters}, checks=checks
    )
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


_BLOCK = 256


def _source_factor(stats: ClassStats, s: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (float64) and eigenvectors (``dtype``) of Sigma_s.

    The eigendecomposition is float64 (``syev`` in place on a Fortran-ordered scratch
    copy, which ends up holding the vectors); only the stored vectors are rounded to
    ``dtype``. Peak: the copy plus the rounded vectors, 1.5 d x d float64.
    """
    scratch = _scratch_cov(stats, s)
    lam, u = sym_eig(scratch, overwrite=True, driver="ev")
    del scratch
    return lam, u.astype(dtype, copy=False)


def _scratch_cov(stats: ClassStats, k: int) -> np.ndarray:
    """``stats.covariance(k)`` as a new Fortran-ordered float64 array (one d x d)."""
    scratch = np.array(stats.cov_KxDxD[k], np.float64, order="F", copy=True)
    if stats.shrinkage is not None:  # ClassStats.covariance, without a second copy
        a, b = stats.shrinkage
        d = scratch.shape[0]
        c = b * float(np.trace(scratch)) / d
        scratch *= a
        scratch.flat[:: d + 1] += c
    return scratch


def _target_spectrum(stats: ClassStats, t: int) -> np.ndarray:
    """Eigenvalues of Sigma_t, descending, clipped at 0 (``syev`` without vectors: O(d)
    workspace on one d x d scratch copy)."""
    scratch = _scratch_cov(stats, t)
    lam = scipy.linalg.eigh(
        scratch, lower=True, eigvals_only=True, overwrite_a=True, check_finite=False, driver="ev"
    )
    return np.clip(lam, 0.0, None)[::-1]


def _truncation(stats: ClassStats, t: int, rank_t: int, rank: int) -> np.ndarray:
    """``[d, rank_t - rank]`` factor ``D`` with ``Sigma_t - D D'`` the best rank-``rank``
    approximation of Sigma_t (Eckart-Young): its smallest nonzero eigenpairs, scaled."""
    scratch = _scratch_cov(stats, t)
    d = scratch.shape[0]
    lo, hi = d - rank_t, d - rank - 1  # ascending order: the null space comes first
    lam, vec = scipy.linalg.eigh(
        scratch, lower=True, overwrite_a=True, check_finite=False, subset_by_index=[lo, hi]
    )
    return vec * np.sqrt(np.clip(lam, 0.0, None))


def _shrunk_times(stats: ClassStats, t: int, u_DxB: np.ndarray, defl=None) -> np.ndarray:
    """``Sigma_t @ u`` for a float64 ``[d, b]`` panel, shrinkage ``a S + c I`` folded in
    (minus ``D D' u`` for a truncation factor ``defl = D``)."""
    cov_t = stats.cov_KxDxD[t]
    tu = cov_t @ u_DxB
    if stats.shrinkage is not None:
        a, b = stats.shrinkage
        c = b * float(np.trace(cov_t)) / cov_t.shape[0]
        if a != 1.0:
            tu *= a
        if c != 0.0:
            tu += c * u_DxB
    if defl is not None:
        tu -= defl @ (defl.T @ u_DxB)
    return tu


def _rotated_target(stats: ClassStats, t: int, u_s: np.ndarray, defl=None) -> np.ndarray:
    """``U' Sigma_t U`` for ``U = u_s [d, m]`` as a new ``[m, m]`` float64, in ``_BLOCK`` tiles.

    Sigma_t is read straight from ``stats.cov_KxDxD`` (shrinkage ``a S + c I`` folded in
    as ``a S U + c U``), and ``U`` is upcast to float64 one d x _BLOCK panel at a time,
    so nothing d x d is allocated besides the result. Only the blocks on and above the
    diagonal are multiplied (3 d^3 flops instead of 4 when m = d); the rest is their mirror.
    """
    m = u_s.shape[1]
    out = np.empty((m, m), order="F")  # LAPACK's order: eigh overwrites it, no copy
    blocks = [slice(i, min(i + _BLOCK, m)) for i in range(0, m, _BLOCK)]
    for j, bj in enumerate(blocks):
        tu = _shrunk_times(stats, t, np.asarray(u_s[:, bj], np.float64), defl)  # [d, b]
        for bi in blocks[: j + 1]:  # the result is symmetric: one triangle, mirrored
            ui = np.asarray(u_s[:, bi], np.float64)
            blk = ui.T @ tu
            del ui
            out[bi, bj] = blk
            out[bj, bi] = blk.T
            del blk
        del tu
    return out


def _times_panels(y_NxM: np.ndarray, u_DxM: np.ndarray, transpose: bool = False) -> np.ndarray:
    """``y @ u`` (or ``y @ u.T``) in float64 with ``u [d, m]`` upcast one d x _BLOCK panel
    at a time: a mixed-precision ``@`` would materialise a float64 copy of all of ``u``."""
    d, m = u_DxM.shape
    out = np.zeros((len(y_NxM), d if transpose else m))
    for i in range(0, m, _BLOCK):
        b = slice(i, min(i + _BLOCK, m))
        panel = np.asarray(u_DxM[:, b], np.float64)
        if transpose:
            out += y_NxM[:, b] @ panel.T
        else:
            out[:, b] = y_NxM @ panel
    return out


def _apply_pair(z_NxD, lam_s, u_s, stats, t, rcond, driver="ev", lam_t=None, truncate=True):
    """``(T z, info)``: rows ``z = x - mu_s`` through the OT map ``T_{s->t}`` (module
    docstring), without forming any d x d map.

    In Sigma_s's eigenbasis ``U = [U0 U1]`` (null space first: eigh sorts ascending;
    ``r_s = dim U1`` eigenvalues above ``rcond * max``) with ``T~ = U' Sigma_t U`` in
    blocks ``T11, T10, T00`` and ``R = diag(sqrt(lam_s))`` on U1:
    ``M = R T11 R = V G V'`` (eigh in float64, ``driver="ev"`` in place), whitened
    source coordinates ``eta = V' R^{-1} U1' z`` (identity covariance), and

      U1-part  c1 = R^{-1} V G^{1/2} eta                (Monge map onto P_s Sigma_t P_s)
      U0-part  c0 = W G^{-1/2}_+ eta + F eta_free       (the lift, W = T01 R V)

    where ``eta_free`` are the components with ``g <= rcond * max g`` (source directions
    the Monge part does not use) and ``F`` the leading eigenpairs of the Schur complement
    ``S = T00 - T01 T11^+ T10`` (``F F'`` its best approximation of rank ``#free``). The
    pushed covariance differs from ``T~`` by ``S - F F'`` in the U0 block plus what the
    ``g`` cut leaves out; ``info["cov_err"]`` is that difference's Frobenius norm over
    ``||Sigma_t||_F``, computed from the factors actually applied. Peak: M (then V), r_s^2
    float64, plus ``n0 (d + r_s)`` for the U0 blocks when n0 = d - r_s > 0 (never more than
    the d^2 of the full-rank case plus ``n0 r_s``).

    When rank Sigma_t > r_s (unreachable) and ``truncate``, Sigma_t is replaced by its best
    rank-r_s approximation ``Sigma_t - D D'`` (``_truncation``: one d x d scratch eigh for
    the dropped eigenpairs, ``D`` is d x (rank_t - r_s)); ``cov_err`` is then the error
    against that approximation plus the Eckart-Young floor (an upper bound, triangle
    inequality).
    """
    ri = _inv_sqrt(lam_s, rcond)
    n0 = int(np.count_nonzero(ri == 0))
    if np.any(ri[n0:] == 0):
        raise AssertionError("sym_eig returned eigenvalues out of order")
    rs = len(ri) - n0
    r1, ri1 = np.sqrt(lam_s[n0:]), ri[n0:]
    u0, u1 = u_s[:, :n0], u_s[:, n0:]
    if lam_t is None:
        lam_t = _target_spectrum(stats, t)
    norm_t = max(float(np.linalg.norm(lam_t)), 1e-300)
    rank_t = int(np.count_nonzero(lam_t > rcond * max(float(lam_t[0]), 1e-300)))
    floor = float(np.linalg.norm(lam_t[rs:]) / norm_t)
    defl = _truncation(stats, t, rank_t, rs) if truncate and rank_t > rs else None
    m = _rotated_target(stats, t, u1, defl)
    m *= r1[:, None]
    m *= r1[None, :]
    g, v = sym_eig(m, overwrite=True, driver=driver)
    del m
    used = g > rcond * max(float(g.max(initial=0.0)), 1e-300)
    free = np.flatnonzero(~used)
    sg = np.where(used, np.sqrt(g), 0.0)
    gi = np.where(used, 1.0 / np.sqrt(np.where(used, g, 1.0)), 0.0)
    eta = _times_panels(z_NxD, u1)  # [n, r_s]
    eta *= ri1
    eta = eta @ v
    c1 = (eta * sg) @ v.T
    c1 *= ri1
    # Off-range blocks (absent when Sigma_s is full rank, e.g. under shrinkage).
    t0 = _shrunk_times(stats, t, np.asarray(u0, np.float64), defl)
    t0 = _times_panels(t0.T, u_s)  # [n0, d]
    t00 = t0[:, :n0].copy()
    w = (t0[:, n0:] * r1[None, :]) @ v  # [n0, r_s]: T01 R V
    del t0
    wg = w * gi
    schur = t00 - wg @ wg.T
    schur = 0.5 * (schur + schur.T)
    hs, fs = scipy.linalg.eigh(schur, check_finite=False) if n0 else (np.zeros(0), None)
    hs = np.clip(hs, 0.0, None)[::-1]  # descending
    n_fill = min(len(free), n0)
    c0 = eta @ wg.T  # [n, n0]
    if n_fill:
        fill = fs[:, ::-1][:, :n_fill] * np.sqrt(hs[:n_fill])  # [n0, n_fill]
        c0 += eta[:, free[:n_fill]] @ fill.T
    # What the pushed covariance misses (U-basis blocks; Frobenius norms):
    #   U0 block  S - F F'  -> the Schur eigenvalues not filled
    #   U1 block  R^{-1} V_free diag(g_free) V_free' R^{-1}   (the g cut)
    #   U1 x U0   R^{-1} V_free W_free'                       (ditto; twice, by symmetry)
    b = v[:, free] * ri1[:, None]
    e11 = np.linalg.norm((np.sqrt(g[free])[:, None] * (b.T @ b)) * np.sqrt(g[free])[None, :])
    e10 = np.linalg.norm(b @ w[:, free].T)
    e00 = np.linalg.norm(hs[n_fill:])
    err = float(np.sqrt(e11**2 + 2 * e10**2 + e00**2) / norm_t)
    info = {
        # Against the truncated target: its own error plus the truncation (triangle).
        "cov_err": err + floor if defl is not None else err,
        "floor": floor,
        "reachable": rank_t <= rs,
        "rank_s": rs,
        "rank_t": rank_t,
        "lift_rank": int(np.count_nonzero(used)),
        "filled": n_fill,
    }
    y = np.concatenate([c0, c1], axis=1)
    del c0, c1, eta, v
    return _times_panels(y, u_s, transpose=True), info


def gaussian_ot_map(stats: ClassStats, s: int, t: int, *, rcond: float = 1e-10) -> np.ndarray:
    """``[d, d]`` linear OT map ``T_{s->t}`` of the module docstring (shrinkage applied):
    the Bures/Monge map ``S^{-1/2} (S^{1/2} T S^{1/2})^{1/2} S^{-1/2}`` when Sigma_s is
    positive definite, with the lift onto range(Sigma_t) where it is singular.

    Float64 throughout; ``gaussian_ot_edit`` never forms this matrix (see there).
    """
    lam, u = sym_eig(stats.covariance(s))
    tz, _ = _apply_pair(np.eye(len(lam)), lam, u, stats, t, rcond)
    return np.ascontiguousarray(tz.T)


@register_ot_set("gaussian", version=2, options={"clip": "clip"})
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
    tol: float = 1e-6,
) -> EditedSet:
    """x' = mu_t + T_{s->t}(x - mu_s) row by row; one eigh per source class present.

    ``T_{s->t}`` is the linear OT map of the module docstring (the Monge map, lifted and
    filled where Sigma_s is singular). Components of ``x - mu_s`` outside range(Sigma_s)
    (e.g. a test image lighting a pixel that is black in every training image of class
    s) are dropped: the Gaussian model gives them probability 0.

    One source class at a time: Sigma_s is eigendecomposed in float64 and its
    eigenvectors kept in ``factor_dtype`` (float32 by default: half the memory; edits
    differ from the float64 map by ~2e-7 on [0, 1] pixels in the tests and checks, far
    below the 8-bit step 1/255; pass ``np.float64`` for full precision). Each needed
    target t is then applied through the factors (``_apply_pair``); Sigma_t is read from
    ``stats`` in tiles. The working set beyond ``stats`` is 1.5 d x d float64 (0.11 GiB
    at d = 3072) with float32 vectors, 2 with float64, when the source covariance has
    full rank (always under shrinkage); a source null space of dimension n0 adds at most
    ``n0 (d - n0)`` (the U0 blocks). Before the sources, each target's spectrum is
    computed once on one d x d scratch copy (``_target_spectrum``). No d x d map is ever
    formed, let alone the K^2 of them.
    ``pair_driver`` is the LAPACK driver of the per-pair eigh: ``"ev"`` works in place
    (the 1.5 d^2 above); ``"evr"`` adds a d x d array for the vectors (2.5 d^2, 0.18 GiB
    at d = 3072) but was faster on that eigh (7 s against 24 s, one isolated timing at
    d = 3072, one BLAS thread on a loaded 2-core box; see
    ``benchmarks/results/gaussian_ot_memory.json`` for whole runs).

    ``report.checks`` (tolerance ``tol``, default 1e-6): ``mean`` (max over pairs of
    ``|T(mu_s) - mu_t|_inf``, the class mean pushed through the same code path),
    ``cov_reachable`` (max over pairs with rank Sigma_t <= rank Sigma_s of
    ``||T Sigma_s T' - Sigma_t||_F / ||Sigma_t||_F`` from the applied factors) and, when
    there are unreachable pairs (rank Sigma_t > rank Sigma_s: mapped onto the best
    rank-r_s approximation of Sigma_t), ``cov_unreachable``, which misses, with the
    Eckart-Young floor next to the achieved error in its ``why``.
    ``report.extra["pair_info"]`` lists per pair: s, t, cov_err, floor, reachable, ranks,
    the rank of the Monge part and the filled dims.
    These are about the map, i.e. the pushed Gaussian; the report's empirical moments
    describe the edited rows themselves (a random subset of class s is not Sigma_s).

    ``clip`` clamps the result to [0, 1]; the fraction outside the box is reported (the
    checks describe the map before clipping). Progress (eighs done, ETA) is logged at
    most every 10 s (``dsb.timing.ProgressLog``).
    """
    factor_dtype = np.dtype(factor_dtype)
    x, src_N, tgt_N = _check_rows(x_NxD, src_N, tgt_N)
    out = np.empty_like(x)
    pairs = 0
    # Progress in eighs: one per target spectrum, per source factor and per (s, t) pair.
    sources, targets = np.unique(src_N), np.unique(tgt_N)
    total = len(targets) + len(sources) + len(np.unique(np.stack([src_N, tgt_N]), axis=1).T)
    progress, done = ProgressLog("OT gaussian", total, "eighs"), 0
    spectra = {}
    for t in targets:
        spectra[int(t)] = _target_spectrum(stats, int(t))
        done += 1
        progress.update(done, f"spectrum of target class {t}")
    checks, pair_info, mean_err = {}, [], 0.0
    for s in sources:
        ms = np.flatnonzero(src_N == s)
        lam, u = _source_factor(stats, int(s), factor_dtype)
        done += 1
        progress.update(done, f"source class {s}")
        for t in np.unique(tgt_N[ms]):
            rows = ms[tgt_N[ms] == t]
            z = np.zeros((len(rows) + 1, x.shape[1]))  # last row: mu_s itself
            np.subtract(x[rows], stats.mean_KxD[s], out=z[:-1])
            y, info = _apply_pair(z, lam, u, stats, int(t), rcond, pair_driver, spectra[int(t)])
            y += stats.mean_KxD[t]
            out[rows] = y[:-1]
            mean_err = max(mean_err, float(np.max(np.abs(y[-1] - stats.mean_KxD[t]))))
            del y, z
            pair_info.append({"s": int(s), "t": int(t), **info})
            pairs += 1
            done += 1
            progress.update(done, f"pair {s} -> {t}")
        del lam, u
    checks = {"mean": target_check(mean_err, tol)} | _cov_checks(pair_info, tol)
    outside = float(np.mean((out < 0) | (out > 1)))
    if clip:
        out = np.clip(out, 0.0, 1.0)
    rep = moment_report(
        out, tgt_N, stats, checks=checks,
        extra={"clip": clip, "frac_outside_box": outside, "pairs": pairs, "pair_info": pair_info},
    )  # fmt: skip
    return EditedSet(out.astype(np.float32), tgt_N, src_N, rep)


def _cov_checks(pair_info: list[dict], tol: float) -> dict:
    """``cov_reachable``: the worst covariance error over the pairs with rank Sigma_t <=
    rank Sigma_s; ``cov_unreachable`` (only if there are any): the worst over the others,
    which miss by construction, with the Eckart-Young floor they were held to in ``why``.
    One entry each, so a run logs one warning, not one per pair (``pair_info`` has all)."""
    checks = {}
    reach = [p for p in pair_info if p["reachable"]]
    unreach = [p for p in pair_info if not p["reachable"]]
    if reach:
        checks["cov_reachable"] = target_check(max(p["cov_err"] for p in reach), tol)
    if unreach:
        worst = max(unreach, key=lambda p: p["cov_err"])
        ratio = max(p["cov_err"] / max(p["floor"], 1e-300) for p in unreach)
        checks["cov_unreachable"] = target_check(
            worst["cov_err"], tol,
            f"{len(unreach)} of {len(pair_info)} (s, t) pairs have rank Sigma_t > rank "
            f"Sigma_s: no affine map reaches Sigma_t; they reach the Eckart-Young floor "
            f"within a factor {ratio:.3g} (worst pair {worst['s']}->{worst['t']}: floor "
            f"{worst['floor']:.3g}, achieved {worst['cov_err']:.3g}); see pair_info",
        )  # fmt: skip
    return checks


# The registry of OT probe-set kinds (``ProbeSetKind`` entries), by its older name.
OT_EDITS = OT_SETS
