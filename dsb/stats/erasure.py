"""Concept erasure as dataset transforms: LEACE (linear) and QLEACE (quadratic).

Both are fitted from ``ClassStats`` of the train split (no second pass over the data) and
are callables ``(x [n, d], y [n]) -> x' [n, d]`` that apply to any split.

LEACE (Belrose et al. 2023): with ``Sigma`` the total covariance and ``Sigma_XZ`` the
cross-covariance of x with the one-hot label, ``W = Sigma^{-1/2}`` (pseudo-inverse root),
``Q`` an orthonormal basis of ``range(W Sigma_XZ)``, the eraser is
``x' = x - W^+ Q Q' W (x - mu)``. Then ``Cov(x', z) = 0``, i.e. all class means coincide,
with the least expected change in the Sigma^{-1} metric. Stored as two ``[d, r]`` factors,
r <= K - 1.

QLEACE: ``x' = mu_bar + A_y (x - mu_y)`` with ``A_y`` the Gaussian OT (Monge) map from
``N(0, Sigma_y)`` to the prior-weighted Wasserstein barycenter ``N(0, Sigma_bar)``; class
means and covariances of x' coincide. The barycenter is the fixed point of
``S <- S^{-1/2} (sum_k pi_k (S^{1/2} Sigma_k S^{1/2})^{1/2})^2 S^{-1/2}``; for K = 2 it is
McCann's interpolant ``((1-w) I + w A_{0->1}) Sigma_0 ((1-w) I + w A_{0->1})``, w = pi_1.
Covariances are ``stats.covariance(k)`` (with the recorded shrinkage); QLEACE needs them
non-singular, so fit image data with shrinkage.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dsb.stats.moments import ClassStats
from dsb.stats.ot import _inv_sqrt, _map_from_eig, sym_eig

__all__ = [
    "LeaceEraser",
    "QleaceEraser",
    "fit_eraser",
    "fit_leace",
    "fit_qleace",
    "total_covariance",
    "wasserstein_barycenter_cov",
]


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
    """Closed-form LEACE eraser of the class label from ``stats``."""
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


def _sqrt_and_inv(cov, rcond):
    lam, u = sym_eig(cov)
    return (u * np.sqrt(lam)) @ u.T, (u * _inv_sqrt(lam, rcond)) @ u.T


def wasserstein_barycenter_cov(
    covs_KxDxD: np.ndarray,
    weights_K: np.ndarray,
    *,
    tol: float = 1e-12,
    max_iters: int = 500,
    rcond: float = 1e-12,
) -> tuple[np.ndarray, dict]:
    """Barycenter covariance of centred Gaussians (fixed point; closed form for K = 2).

    Returns ``(Sigma_bar [d, d], info)`` with the iteration count and the last relative
    Frobenius change.
    """
    w = np.asarray(weights_K, np.float64)
    w = w / w.sum()
    covs = np.asarray(covs_KxDxD, np.float64)
    d = covs.shape[-1]
    if len(covs) == 2:
        lam, u = sym_eig(covs[0])
        a = _map_from_eig(lam, u, covs[1], rcond)
        m = (1 - w[1]) * np.eye(d) + w[1] * a
        return m @ covs[0] @ m, {"iterations": 0, "rel_change": 0.0, "closed_form": True}
    s = np.einsum("k,kij->ij", w, covs)
    change = np.inf
    it = 0
    while it < max_iters:
        it += 1
        root, inv_root = _sqrt_and_inv(s, rcond)
        acc = np.zeros_like(s)
        for k in range(len(covs)):
            lam, u = sym_eig(root @ covs[k] @ root)
            acc += w[k] * ((u * np.sqrt(lam)) @ u.T)
        new = inv_root @ acc @ acc @ inv_root
        new = 0.5 * (new + new.T)
        change = float(np.linalg.norm(new - s) / np.linalg.norm(s))
        s = new
        if change < tol:
            break
    return s, {"iterations": it, "rel_change": change, "closed_form": False}


@dataclasses.dataclass(frozen=True)
class QleaceEraser:
    """``x' = mean_D + (x - mean_KxD[y]) @ maps_KxDxD[y].T`` (the maps are symmetric)."""

    mean_D: np.ndarray
    mean_KxD: np.ndarray
    maps_KxDxD: np.ndarray
    barycenter_DxD: np.ndarray
    info: dict

    def __call__(self, x_NxD: np.ndarray, y_N: np.ndarray) -> np.ndarray:
        x = np.asarray(x_NxD)
        y = np.asarray(y_N)
        out = np.empty(x.shape, np.float64)
        for k in np.unique(y):
            m = y == k
            out[m] = self.mean_D + (x[m] - self.mean_KxD[k]) @ self.maps_KxDxD[k].T
        return out.astype(x.dtype)


def fit_qleace(stats: ClassStats, *, rcond: float = 1e-12, **bary_kw) -> QleaceEraser:
    """QLEACE eraser: OT maps of every class Gaussian onto their barycenter."""
    covs = np.stack([stats.covariance(k) for k in range(stats.num_classes)])
    bar, info = wasserstein_barycenter_cov(covs, stats.priors_K, rcond=rcond, **bary_kw)
    maps = np.empty_like(covs)
    for k in range(stats.num_classes):
        lam, u = sym_eig(covs[k])
        maps[k] = _map_from_eig(lam, u, bar, rcond)
    return QleaceEraser(
        mean_D=stats.priors_K @ stats.mean_KxD,
        mean_KxD=stats.mean_KxD,
        maps_KxDxD=maps,
        barycenter_DxD=bar,
        info=info,
    )


def fit_eraser(kind: str, stats: ClassStats, **kw):
    """``"leace"`` or ``"qleace"`` -> a transform ``(x [n, d], y [n]) -> x' [n, d]``."""
    if kind == "leace":
        return fit_leace(stats, **kw)
    if kind == "qleace":
        return fit_qleace(stats, **kw)
    raise ValueError(f"unknown eraser {kind!r}; expected 'leace' or 'qleace'")
