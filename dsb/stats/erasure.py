"""Concept erasure as dataset transforms: LEACE (linear) and QLEACE (quadratic).

Both are fitted from ``ClassStats`` of the train split (no second pass over the data) and
are callables ``(x [n, d], y [n]) -> x' [n, d]`` that apply to any split.
``erasure_residuals`` measures, on the erased data itself, how far the class moments still
differ; ``dsb.data.transforms.erase_split_with_report`` turns that into stated targets.

LEACE (Belrose et al. 2023): with ``Sigma`` the total covariance and ``Sigma_XZ`` the
cross-covariance of x with the one-hot label, ``W = Sigma^{-1/2}`` (pseudo-inverse root),
``Q`` an orthonormal basis of ``range(W Sigma_XZ)``, the eraser is
``x' = x - W^+ Q Q' W (x - mu)``. Then ``Cov(x', z) = 0``, i.e. all class means coincide,
with the least expected change in the Sigma^{-1} metric. Stored as two ``[d, r]`` factors,
r <= K - 1. The mean equality is exact for any symmetric ``W`` whose range holds
``Sigma_XZ``; shrinkage only changes the metric of "least change".

LEACE vs concept-erasure's default. dsb's default uses the raw ML covariances (no
shrinkage). ``concept_erasure.LeaceFitter`` shrinks the total covariance ``S`` (n samples,
t = tr S) by default to ``alpha S + (1 - alpha) (t / d) I`` with
``alpha = 1 - t^2 / (n (||S||_F^2 - t^2 / d))`` (its ``optimal_linear_shrinkage``). The
two erasers differ: on the digits train split the erased pixels differ by 5e-3 on average
(1.7e-2 on its first 300 images, up to 0.7 on single pixels). dsb's
``shrinkage=(a, b)`` shrinks each class covariance instead, so the total becomes
``a W + B + b (tr W / d) I`` (W within-class, B between-class). LEACE does not change when
``Sigma`` is rescaled, so ``(1, b)`` with ``b = (1 - alpha) tr S / (alpha tr W)``
reproduces concept-erasure's shrunk metric exactly; ``concept_erasure_shrinkage`` computes
it (data-dependent, so it is not a fixed config value). Two more concept-erasure defaults
are not modelled: it drops whitened cross-covariance singular values below
``svd_tol = 0.01`` (absolute) and mixes in an orthogonal projection when the eraser would
raise the total variance (``constrain_cov_trace``); on the first 300 digits train images
neither acts, and the two erasers then agree to 1e-9 (tested).

QLEACE: ``x' = mu_bar + M_y (x - mu_y)``: class means and covariances of x' coincide.
On a subspace where every class covariance is positive definite, ``M_y`` is the Gaussian OT
(Monge) map from ``N(0, Sigma_y)`` to the prior-weighted Wasserstein barycenter
``N(0, Sigma_bar)``. The barycenter is the fixed point of
``S <- S^{-1/2} (sum_k pi_k (S^{1/2} Sigma_k S^{1/2})^{1/2})^2 S^{-1/2}``
(Alvarez-Esteban et al. 2016; converges for positive definite ``Sigma_k``), stopped when the
relative fixed-point residual ``||T(S) - S||_F / ||S||_F`` is below ``tol``; for K = 2 it is
McCann's interpolant ``((1-w) I + w A_{0->1}) Sigma_0 ((1-w) I + w A_{0->1})``, w = pi_1.
The maps push every class exactly onto ``Sigma_bar`` whatever ``Sigma_bar`` is; the
barycenter's convergence decides only that the change is the least one.

Rank-deficient class covariances (image data: digits classes have rank 48-54 of 64, with
different null spaces). No linear map sends ``N(0, Sigma_y)`` onto a covariance of higher
rank, and the Monge maps between Gaussians with different supports do not exist, so
QLEACE on the full space cannot be exact (it left a 21% covariance gap on digits). dsb's
treatment:

* Support. ``N_y`` = eigenvectors of ``Sigma_y`` with eigenvalue ``<= rcond * lambda_max(
  Sigma_y)``; ``V`` = eigenvectors of ``G = sum_y N_y N_y'`` with eigenvalue ``<=
  support_tol``, i.e. the intersection of the class ranges (complement of the span of the
  union of the null spaces). For a unit ``v`` in ``V``, ``v' Sigma_y v >= (1 - support_tol)
  * cut_y``: every restricted class covariance ``V' Sigma_y V`` is positive definite and no
  worse conditioned than the class's own range, so the barycenter and the maps exist and
  are exact there. (A larger subspace meeting no ``N_y`` exists, up to ``min_y rank
  Sigma_y`` dimensions, but it is not canonical and its restricted covariances have no such
  lower bound: the maps would blow up along near-null directions.)
* Complement ``V-perp``. There some class varies in no direction of its own null space:
  the component carries class information (class-dependent constants), so the component
  of x there is discarded. ``complement="mean"`` puts the prior-weighted global mean there
  (the simplest exact treatment). The default ``complement="regress"`` puts
  ``mu_bar + L z`` there instead, ``z`` the erased V-coordinates and ``L`` the pooled
  least-squares regression of the original V-perp component on ``z``. ``L`` is the same
  for every class, so class means and covariances stay equal on the full space, and x'
  still carries no information beyond its V part; but the expected change
  ``E ||x' - x||^2`` (the quantity QLEACE minimises) is never larger and on digits
  strictly smaller, so it is the better exact treatment.

``info`` records ``dim_support``, ``dim_complement``, ``complement_variance_fraction`` (the
share of the total variance lying in V-perp), ``complement_variance_removed_fraction``
(the share removed by the chosen fill), the cuts and the barycenter's convergence.

Shrinkage (``stats.shrinkage = (a, b)``, b > 0) makes every covariance positive definite
(V = the full space), but the maps are then exact for the shrunk Gaussians, not for the
data: the residual on the data must be measured (``erasure_residuals``) and is reported
and flagged by ``erase_split_with_report``. It is an approximate option; the default is
no shrinkage.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from dsb.stats.moments import ClassStats
from dsb.stats.ot import _inv_sqrt, _map_from_eig, sym_eig

__all__ = [
    "LeaceEraser",
    "QleaceEraser",
    "barycenter_residual",
    "common_support",
    "concept_erasure_shrinkage",
    "erasure_residuals",
    "fit_eraser",
    "fit_leace",
    "fit_qleace",
    "total_covariance",
    "wasserstein_barycenter_cov",
]

log = logging.getLogger("dsb")


def total_covariance(stats: ClassStats) -> np.ndarray:
    """``[d, d]`` covariance of the mixture: within-class plus between-class parts."""
    mu_bar = stats.priors_K @ stats.mean_KxD
    dm = stats.mean_KxD - mu_bar
    tot = (dm.T * stats.priors_K) @ dm
    for k in range(stats.num_classes):
        tot += stats.priors_K[k] * stats.covariance(k)
    return tot


@dataclasses.dataclass(frozen=True)
class LeaceEraser:
    """``x' = x - ((x - mean_D) @ right_DxR) @ left_DxR.T`` (the label is not needed)."""

    mean_D: np.ndarray
    left_DxR: np.ndarray
    right_DxR: np.ndarray

    def __call__(self, x_NxD: np.ndarray, y_N: np.ndarray | None = None) -> np.ndarray:
        x = np.asarray(x_NxD)
        dx = (x - self.mean_D) @ self.right_DxR
        return (x - dx @ self.left_DxR.T).astype(x.dtype)


def fit_leace(stats: ClassStats, *, rcond: float = 1e-10) -> LeaceEraser:
    """Closed-form LEACE eraser of the class label from ``stats`` (shrunk covariances
    where ``stats.shrinkage`` is set; see the module docstring for concept-erasure's)."""
    mu_bar = stats.priors_K @ stats.mean_KxD
    sigma_xz = (stats.mean_KxD - mu_bar).T * stats.priors_K  # [d, K]
    lam, u = sym_eig(total_covariance(stats))
    r = np.sqrt(lam)
    ri = _inv_sqrt(lam, rcond)
    w_sxz = (u * ri) @ (u.T @ sigma_xz)  # W Sigma_XZ
    q, sv, _ = np.linalg.svd(w_sxz, full_matrices=False)
    q = q[:, sv > rcond * max(sv.max(), 1e-300)]
    left = (u * r) @ (u.T @ q)  # W^+ Q
    right = (u * ri) @ (u.T @ q)  # W Q (W symmetric)
    return LeaceEraser(mean_D=mu_bar, left_DxR=left, right_DxR=right)


def concept_erasure_shrinkage(stats: ClassStats) -> tuple[float, float]:
    """``(1, b)`` such that ``fit_leace(stats.with_shrinkage((1, b)))`` is the eraser that
    concept-erasure's ``LeaceFitter`` fits with its default RMT shrinkage (same metric up to
    a scale, which LEACE ignores). Computed from the raw ML covariances of ``stats``."""
    raw = stats.with_shrinkage(None)
    n = float(np.sum(stats.counts_K))
    s = total_covariance(raw)
    d = s.shape[0]
    t = float(np.trace(s))
    alpha = 1.0 - t * t / (n * (float(np.sum(s * s)) - t * t / d))
    t_within = float(
        sum(raw.priors_K[k] * np.trace(raw.cov_KxDxD[k]) for k in range(raw.num_classes))
    )
    if not 0.0 < alpha <= 1.0 or t_within <= 0.0:
        raise ValueError(f"concept-erasure shrinkage undefined here (alpha={alpha:.3g})")
    return 1.0, (1.0 - alpha) * t / (alpha * t_within)


def _sqrt_and_inv(cov, rcond):
    lam, u = sym_eig(cov)
    return (u * np.sqrt(lam)) @ u.T, (u * _inv_sqrt(lam, rcond)) @ u.T


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a) / max(float(np.linalg.norm(b)), 1e-300))


def _fixed_point_step(s, covs, w, rcond):
    """One step ``T(S)`` of the barycenter fixed-point map."""
    root, inv_root = _sqrt_and_inv(s, rcond)
    acc = np.zeros_like(s)
    for k in range(len(covs)):
        if w[k] == 0:
            continue
        lam, u = sym_eig(root @ covs[k] @ root)
        acc += w[k] * ((u * np.sqrt(lam)) @ u.T)
    new = inv_root @ acc @ acc @ inv_root
    return 0.5 * (new + new.T)


def barycenter_residual(
    covs_KxDxD: np.ndarray, weights_K: np.ndarray, bar_DxD: np.ndarray, *, rcond: float = 0.0
) -> float:
    """Relative fixed-point residual ``||T(S) - S||_F / ||S||_F`` of a candidate barycenter
    ``S`` (0 exactly at the Bures-Wasserstein barycenter of positive definite covariances)."""
    w = np.asarray(weights_K, np.float64)
    w = w / w.sum()
    s = np.asarray(bar_DxD, np.float64)
    return _rel(_fixed_point_step(s, np.asarray(covs_KxDxD, np.float64), w, rcond) - s, s)


def wasserstein_barycenter_cov(
    covs_KxDxD: np.ndarray,
    weights_K: np.ndarray,
    *,
    tol: float = 1e-10,
    max_iters: int = 1000,
    on_fail: str = "raise",
    rcond: float = 0.0,
) -> tuple[np.ndarray, dict]:
    """Barycenter covariance of centred Gaussians (fixed point; closed form for K = 2).

    The covariances must be positive definite on the space they live in (``fit_qleace``
    restricts them to their common support first). Returns ``(Sigma_bar [d, d], info)``;
    ``info["residual"]`` is the relative fixed-point residual of the returned matrix itself
    (``barycenter_residual``), ``info["converged"]`` whether it is ``<= tol``, plus
    ``iterations`` (fixed-point steps taken), ``tol`` and ``closed_form``. When it is not
    converged after ``max_iters`` steps (or the K = 2 closed form misses ``tol``),
    ``on_fail="raise"`` raises ``RuntimeError`` and ``"warn"`` logs a warning and returns
    the last iterate.
    """
    if on_fail not in ("raise", "warn"):
        raise ValueError(f"on_fail={on_fail!r}: expected 'raise' or 'warn'")
    w = np.asarray(weights_K, np.float64)
    w = w / w.sum()
    covs = np.asarray(covs_KxDxD, np.float64)
    d = covs.shape[-1]
    if len(covs) == 2:
        lam, u = sym_eig(covs[0])
        a = _map_from_eig(lam, u, covs[1], max(rcond, 1e-300))
        m = (1 - w[1]) * np.eye(d) + w[1] * a
        s = m @ covs[0] @ m
        s = 0.5 * (s + s.T)
        res = _rel(_fixed_point_step(s, covs, w, rcond) - s, s)
        it, closed = 0, True
    else:
        s = np.einsum("k,kij->ij", w, covs)
        res, it, closed = np.inf, 0, False
        while it < max_iters:
            it += 1
            new = _fixed_point_step(s, covs, w, rcond)
            res = _rel(new - s, s)  # the residual of s, the matrix returned on a stop
            if res <= tol:
                break
            s = new
    info = {
        "iterations": it,
        "residual": res,
        "tol": float(tol),
        "converged": bool(res <= tol),
        "closed_form": closed,
    }
    if not info["converged"]:
        msg = (
            f"Wasserstein barycenter not converged: relative fixed-point residual {res:.3g} "
            f"> tol {tol:.3g} after {it} iterations (K={len(covs)}, d={d}); singular "
            "covariances do not converge, restrict them to their common support"
        )
        if on_fail == "raise":
            raise RuntimeError(msg)
        log.warning(msg)
    return s, info


def common_support(
    covs_KxDxD: np.ndarray, *, rcond: float = 1e-10, support_tol: float = 1e-6
) -> tuple[np.ndarray, dict]:
    """Orthonormal basis ``[d, m]`` of the intersection of the covariances' ranges.

    ``N_k``: eigenvectors of ``covs[k]`` with eigenvalue ``<= rcond * lambda_max(covs[k])``;
    the support is the eigenspace of ``sum_k N_k N_k'`` with eigenvalue ``<= support_tol``
    (the complement of the span of the union of the null spaces). Returns the basis and
    ``{"dim_support", "dim_complement", "class_ranks", "rcond", "support_tol"}``.
    """
    covs = np.asarray(covs_KxDxD, np.float64)
    d = covs.shape[-1]
    g = np.zeros((d, d))
    ranks = []
    for c in covs:
        lam, u = sym_eig(c)
        null = lam <= rcond * max(float(lam.max()), 1e-300)
        ranks.append(int(d - null.sum()))
        g += u[:, null] @ u[:, null].T
    lam_g, u_g = np.linalg.eigh(g)
    basis = u_g[:, lam_g <= support_tol]
    info = {
        "dim_support": int(basis.shape[1]),
        "dim_complement": int(d - basis.shape[1]),
        "class_ranks": ranks,
        "rcond": float(rcond),
        "support_tol": float(support_tol),
    }
    return basis, info


@dataclasses.dataclass(frozen=True)
class QleaceEraser:
    """``x' = mean_D + (x - mean_KxD[y]) @ maps_KxDxD[y].T``.

    ``barycenter_DxD``: the common class covariance of x' on the full space;
    ``support_DxM``: orthonormal basis of the common support V (see the module docstring);
    ``info``: the support, complement and barycenter records.
    """

    mean_D: np.ndarray
    mean_KxD: np.ndarray
    maps_KxDxD: np.ndarray
    barycenter_DxD: np.ndarray
    support_DxM: np.ndarray
    info: dict

    def __call__(self, x_NxD: np.ndarray, y_N: np.ndarray) -> np.ndarray:
        x = np.asarray(x_NxD)
        y = np.asarray(y_N)
        out = np.empty(x.shape, np.float64)
        for k in np.unique(y):
            m = y == k
            out[m] = self.mean_D + (x[m] - self.mean_KxD[k]) @ self.maps_KxDxD[k].T
        return out.astype(x.dtype)


def fit_qleace(
    stats: ClassStats,
    *,
    rcond: float = 1e-10,
    support_tol: float = 1e-6,
    complement: str = "regress",
    tol: float = 1e-10,
    max_iters: int = 1000,
    on_fail: str = "raise",
) -> QleaceEraser:
    """QLEACE eraser: OT maps of every class Gaussian onto their barycenter on the common
    support V, and the V-perp component replaced (module docstring).

    ``rcond``, ``support_tol``: the cuts of ``common_support``. ``complement``:
    ``"regress"`` (default) or ``"mean"``. ``tol``, ``max_iters``, ``on_fail``: the
    barycenter solve (``wasserstein_barycenter_cov``). Classes with zero prior take no
    part and are mapped to the global mean.
    """
    if complement not in ("regress", "mean"):
        raise ValueError(f"complement={complement!r}: expected 'regress' or 'mean'")
    num_k, d = stats.num_classes, stats.dim
    pri = np.asarray(stats.priors_K, np.float64)
    live = np.flatnonzero(pri > 0)
    covs = np.stack([stats.covariance(k) for k in live])
    basis, info = common_support(covs, rcond=rcond, support_tol=support_tol)
    if basis.shape[1] == 0:
        raise ValueError(
            "QLEACE: the class covariances share no common support (every direction is in "
            "some class's null space); raise rcond or use shrinkage"
        )
    # Two matrix products, not einsum's default loop over all four indices at once
    # (K d^2 m^2 operations: hours at d = 784, m ~ 400, against seconds).
    covs_v = basis.T @ covs @ basis
    bar_v, bary = wasserstein_barycenter_cov(
        covs_v, pri[live], tol=tol, max_iters=max_iters, on_fail=on_fail
    )
    a_v = np.empty_like(covs_v)
    for i in range(len(live)):
        lam, u = sym_eig(covs_v[i])  # positive definite on V by construction
        a_v[i] = _map_from_eig(lam, u, bar_v, 1e-300)
    w = pri[live] / pri[live].sum()
    lift = basis.copy()  # [d, m]: erased V-coordinates z -> x' - mu_bar
    if complement == "regress":
        proj_c = np.eye(d) - basis @ basis.T
        cross = sum(w[i] * covs[i] @ basis @ a_v[i] for i in range(len(live)))  # Cov(x, z)
        lam_b, u_b = sym_eig(bar_v)
        lift += proj_c @ cross @ ((u_b / lam_b) @ u_b.T)
    maps = np.zeros((num_k, d, d))
    for i, k in enumerate(live):
        maps[k] = lift @ a_v[i] @ basis.T
    mu_bar = pri @ stats.mean_KxD
    bar = lift @ bar_v @ lift.T
    tot = float(np.trace(total_covariance(stats)))
    in_c = tot - float(np.sum(basis * (total_covariance(stats) @ basis)))
    kept_c = float(np.trace(bar)) - float(np.trace(bar_v))
    info |= {
        "complement": complement,
        "complement_variance_fraction": in_c / max(tot, 1e-300),
        "complement_variance_removed_fraction": (in_c - kept_c) / max(tot, 1e-300),
        "barycenter": bary,
    }
    return QleaceEraser(
        mean_D=mu_bar,
        mean_KxD=stats.mean_KxD,
        maps_KxDxD=maps,
        barycenter_DxD=0.5 * (bar + bar.T),
        support_DxM=basis,
        info=info,
    )


def erasure_residuals(
    x_NxD: np.ndarray, y_N: np.ndarray, *, support_DxM: np.ndarray | None = None
) -> dict:
    """How far the class moments of (erased) data still differ, in float64.

    ``class_mean_spread``: ``sqrt(sum_k pi_k ||m_k - m||^2) / sqrt(tr Cov(x))`` (class-mean
    spread in units of the data's standard deviation); ``class_cov_max_rel_diff``:
    ``max_k ||C_k - C_pool||_F / ||C_pool||_F`` with ``C_pool = sum_k pi_k C_k`` (ML
    covariances). With ``support_DxM`` the same two on the coordinates ``x @ support``
    (keys with a ``_support`` suffix). Classes absent from ``y`` are skipped.
    """
    x = np.asarray(x_NxD, np.float64)
    y = np.asarray(y_N)
    out = _residuals(x, y)
    if support_DxM is not None:
        out |= {f"{k}_support": v for k, v in _residuals(x @ support_DxM, y).items()}
    return out


def _residuals(x, y):
    ks, counts = np.unique(y, return_counts=True)
    pri = counts / counts.sum()
    means, covs = [], []
    for k in ks:
        xk = x[y == k]
        m = xk.mean(0)
        means.append(m)
        covs.append((xk - m).T @ (xk - m) / len(xk))
    m = pri @ np.stack(means)
    spread = np.sqrt(sum(p * np.sum((mk - m) ** 2) for p, mk in zip(pri, means)))
    scale = np.sqrt(np.sum((x - x.mean(0)) ** 2) / len(x))
    pool = np.einsum("k,kij->ij", pri, np.stack(covs))
    return {
        "class_mean_spread": float(spread / max(scale, 1e-300)),
        "class_cov_max_rel_diff": max(_rel(c - pool, pool) for c in covs),
    }


def fit_eraser(kind: str, stats: ClassStats, **kw):
    """``"leace"`` or ``"qleace"`` -> a transform ``(x [n, d], y [n]) -> x' [n, d]``."""
    if kind == "leace":
        return fit_leace(stats, **kw)
    if kind == "qleace":
        return fit_qleace(stats, **kw)
    raise ValueError(f"unknown eraser {kind!r}; expected 'leace' or 'qleace'")
