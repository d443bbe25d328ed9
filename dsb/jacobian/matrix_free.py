"""Matrix-free training-Jacobian spectra: products with J and J^T, never J itself.

On top of ``JacobianOperator`` (``dsb.jacobian.operator``; re-exported here) and the Krylov
kernels of ``dsb.jacobian.krylov``:

* ``randomized_svd``: Halko-Martinsson-Tropp range finder with power iterations, top-k.
* ``golub_kahan_svd``: Golub-Kahan bidiagonalisation with full reorthogonalisation
  (``matfree.decomp.bidiag``), top-k. Preferred over Lanczos on ``J^T J`` (squares the
  condition number).
* ``slq_spectrum``: stochastic Lanczos quadrature of the singular values of ``A = J`` or
  ``A = D = J - I``, by default from Golub-Kahan bidiagonalisation of ``A`` (no squaring;
  ``matfree.decomp.bidiag``), or from Lanczos on ``A^T A`` (``matfree.decomp.tridiag_sym``):
  a quadrature measure from which densities, counts below thresholds and rigorous
  Chebyshev-Markov-Stieltjes brackets on those counts follow. The bulk (singular values of J
  near 1 with ``u ~ v``) is the near-null space of ``D``; counting singular values of ``D``
  below a threshold estimates its size without resolving interior eigenvalues of ``J``.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from dsb.jacobian.certified import top_singular_triplets
from dsb.jacobian.estimates import CountEstimate, UnconvergedWarning
from dsb.jacobian.krylov import golub_kahan, shifted_matvec, work_dtype
from dsb.jacobian.operator import JacobianOperator, triplet_residuals

__all__ = [
    "JacobianOperator",  # re-exported from dsb.jacobian.operator
    "SLQResult",
    "golub_kahan_svd",
    "randomized_svd",
    "slq_spectrum",
]


def randomized_svd(
    op: JacobianOperator,
    k: int,
    *,
    oversample: int = 10,
    power_iters: int = 2,
    key: jax.Array | None = None,
    rtol: float | None = 1e-3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` ``(U [P, k], s [k], Vt [k, P])`` by a randomized range finder.

    Costs ``(k + oversample) * (2 * power_iters + 2)`` Jacobian products, plus ``2k`` for
    the residual check: if some triplet's relative residual
    ``max(||A v - s u||, ||A^T u - s v||) / s`` exceeds ``rtol`` it warns
    (``UnconvergedWarning``; ``rtol=None`` skips the check). For a certified, adaptive top-k
    use ``top_singular_triplets``.
    """
    key = jax.random.key(0) if key is None else key
    ell = k + oversample
    omega = jax.random.normal(key, (op.num_params, ell), op.dtype)
    matmat = jax.jit(op.matmat)
    rmatmat = jax.jit(op.rmatmat)
    q, _ = jnp.linalg.qr(matmat(omega))
    for _ in range(power_iters):
        z, _ = jnp.linalg.qr(rmatmat(q))
        q, _ = jnp.linalg.qr(matmat(z))
    bt = np.asarray(rmatmat(q), np.float64)  # B^T = J^T Q, [P, ell]
    v, s, ut_small = np.linalg.svd(bt, full_matrices=False)  # B = ut_small^T s v^T
    u = np.asarray(q, np.float64) @ ut_small.T
    u, s, vt = u[:, :k], s[:k], v[:, :k].T
    if rtol is not None:
        _warn_unconverged("randomized_svd", op, u, s, vt, rtol)
    return u, s, vt


def _warn_unconverged(name, op, u, s, vt, rtol):
    r_left, r_right = triplet_residuals(op, u, s, vt)
    rel = np.maximum(r_left, r_right) / np.maximum(s, 1e-300)
    if (rel > rtol).any():
        warnings.warn(
            f"{name}: {int((rel > rtol).sum())} of {len(s)} singular triplets not converged "
            f"to rtol={rtol:g} (worst relative residual {rel.max():.2e}); use "
            "top_singular_triplets for an adaptive, certified top-k",
            UnconvergedWarning,
            stacklevel=3,
        )


def golub_kahan_svd(
    op: JacobianOperator,
    k: int,
    *,
    num_matvecs: int | None = None,
    key: jax.Array | None = None,
    rtol: float | None = 1e-3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` ``(U [P, k], s [k], Vt [k, P])`` by Golub-Kahan bidiagonalisation.

    Default (``num_matvecs=None``): adaptive, ``top_singular_triplets(op, k, rtol=rtol)``
    (Krylov dimension doubled until every triplet's relative residual is at most ``rtol``,
    or its budget is spent). With ``num_matvecs``: that many Krylov steps, each one ``J v``
    and one ``J^T u``, with full reorthogonalisation (matfree). Either way it warns
    (``UnconvergedWarning``) when a triplet misses ``rtol`` (``rtol=None``: no check,
    fixed steps only).
    """
    if num_matvecs is None:
        top = top_singular_triplets(op, k, rtol=rtol or 1e-3, key=key, warn=rtol is not None)
        return top.U, top.s, top.Vt
    m = min(num_matvecs, op.num_params)
    key = jax.random.key(0) if key is None else key
    v0 = jax.random.normal(key, (op.num_params,), work_dtype())
    u, s, vt = golub_kahan(op.linear_jvp, v0, m, shift=op.shift, dtype=op.dtype)
    u, s, vt = u[:, :k], s[:k], vt[:k]
    if rtol is not None:
        _warn_unconverged("golub_kahan_svd", op, u, s, vt, rtol)
    return u, s, vt


@dataclasses.dataclass
class SLQResult:
    """Gauss quadrature of the spectral measure of ``A^T A`` (``A = J - shift I``), per probe.

    ``sigma [probes, m]`` (ascending) are the Ritz singular values of ``A`` and
    ``weights [probes, m]`` sum to 1 per probe; the spectral measure of the squared singular
    values is estimated by ``P * mean_probes sum_j w_j delta(sigma_j^2)``. ``method`` says how
    the quadrature was formed (``"bidiag"``: Golub-Kahan on ``A``; ``"lanczos"``: Lanczos on
    ``A^T A``).
    """

    sigma: np.ndarray
    weights: np.ndarray
    num_params: int
    shift: float
    method: str = "bidiag"

    @property
    def singular_values(self) -> np.ndarray:
        return self.sigma

    @property
    def nodes(self) -> np.ndarray:
        """Ritz values of ``A^T A`` (``sigma ** 2``)."""
        return self.sigma**2

    def count_bounds(self, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """Per-probe bounds ``[probes]`` on the count of singular values of ``A`` below
        ``threshold``, for the spectral measure each probe sees.

        Chebyshev-Markov-Stieltjes: with Gauss nodes ``s_1 < ... < s_m`` and ``s_k`` the
        largest node below the threshold, the measure's distribution function at the
        threshold lies in ``[sum_{j<k} w_j, sum_{j<=k+1} w_j]``: the weights of the two nodes
        that straddle the threshold are the uncertainty. Exact up to the rounding of the
        products and of the Krylov recurrence; a wide bracket means more steps.
        """
        below = self.sigma < threshold
        rows = np.arange(below.shape[0])
        k = below.sum(1)  # nodes ascend: nodes 0..k-1 are below
        staircase = (self.weights * below).sum(1)
        w_last_below = np.where(k > 0, self.weights[rows, np.maximum(k - 1, 0)], 0.0)
        has_above = k < below.shape[1]
        m1 = below.shape[1] - 1
        w_first_above = np.where(has_above, self.weights[rows, np.minimum(k, m1)], 0.0)
        lo = np.clip(staircase - w_last_below, 0.0, 1.0)
        hi = np.clip(staircase + w_first_above, 0.0, 1.0)
        return self.num_params * lo, self.num_params * hi

    def count_below(self, threshold: float) -> tuple[float, float]:
        """The SLQ estimate of the count of singular values of ``A`` below ``threshold``
        (the Gauss staircase ``P sum_{s_j < threshold} w_j``, averaged over probes) and its
        standard error over probes. It always lies inside ``count_bounds``, but it is a bare
        point: where the bracket is wide it can be far off (0 below the smallest node).
        Report ``counts`` instead, which says when a count is unresolved."""
        est = self.num_params * (self.weights * (self.sigma < threshold)).sum(1)
        sem = est.std(ddof=1) / np.sqrt(len(est)) if len(est) > 1 else np.nan
        return float(est.mean()), float(sem)

    @property
    def resolution(self) -> float:
        """The mean over probes of the smallest Ritz singular value: below it every probe's
        Chebyshev-Markov-Stieltjes lower bound is 0, so no count there is resolved."""
        return float(self.sigma[:, 0].mean())

    def counts(
        self, thresholds, *, rel_width: float = 0.1, z_score: float = 3.0
    ) -> dict[float, CountEstimate]:
        """Certified counts of singular values of ``A`` below each threshold.

        The bracket is ``[mean(lo) - z SE, mean(hi) + z SE]`` of the per-probe
        ``count_bounds`` (rigorous per probe; the probe average adds a Gaussian band). The
        count is resolved, and its ``estimate`` is the Gauss staircase, only when the
        bracket is at most ``rel_width * estimate`` wide; otherwise ``estimate = NaN``.
        """
        out = {}
        n = self.sigma.shape[0]
        for t in thresholds:
            t = float(t)
            lo, hi = self.count_bounds(t)
            est, sem = self.count_below(t)
            se = lambda x: float(x.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
            low = float(np.clip(lo.mean() - z_score * se(lo), 0, self.num_params))
            high = float(np.clip(hi.mean() + z_score * se(hi), 0, self.num_params))
            resolved = bool(low > 0 and high - low <= rel_width * est)
            out[t] = CountEstimate(
                t, est if resolved else float("nan"), low, high, resolved, self.resolution, sem
            )
        return out

    def density(self, grid: np.ndarray, *, width: float = 0.05, log: bool = True) -> np.ndarray:
        """Gaussian-smoothed density of singular values on ``grid`` (log10 scale if ``log``)."""
        s = self.sigma
        x = np.log10(np.maximum(s, 1e-12)) if log else s
        kern = np.exp(-0.5 * ((grid[:, None, None] - x[None]) / width) ** 2)
        kern /= width * np.sqrt(2 * np.pi)
        return self.num_params * (kern * self.weights[None]).sum(-1).mean(-1)


def slq_spectrum(
    op: JacobianOperator,
    *,
    num_matvecs: int = 64,
    num_probes: int = 8,
    key: jax.Array | None = None,
    method: str = "bidiag",
) -> SLQResult:
    """Stochastic Lanczos quadrature of the singular values of ``A = J - shift I``.

    Rademacher probes, run together (vmapped: every product is a batched J pass); each
    costs ``num_matvecs`` products ``A v`` and ``num_matvecs`` products ``A^T u``. Full
    reorthogonalisation (matfree) keeps the Ritz values honest, which matters for the
    large cluster at 0 that the bulk makes in ``D = J - I``.

    ``method="bidiag"`` (default) runs Golub-Kahan bidiagonalisation of ``A`` and takes the
    quadrature from the SVD of the small bidiagonal ``B``: ``B^T B`` is the Lanczos matrix
    of ``A^T A`` for the same probe, but ``A`` is never squared, so a product error of
    ``eps * sigma_1`` leaves singular values down to about ``eps * sigma_1`` resolved.
    ``method="lanczos"`` runs Lanczos on ``A^T A``; its products carry ``eps * sigma_1^2``,
    so nothing below ``sqrt(eps) * sigma_1`` is resolved. Read counts near small thresholds
    with ``SLQResult.count_bounds``, and run in float64 when ``sigma_1`` is large.
    """
    from matfree import decomp

    if method not in ("bidiag", "lanczos"):
        raise ValueError(f"slq_spectrum: method must be 'bidiag' or 'lanczos', got {method!r}")
    if num_probes < 1:
        raise ValueError(f"slq_spectrum: num_probes must be >= 1, got {num_probes}")
    m = min(num_matvecs, op.num_params)
    key = jax.random.key(0) if key is None else key
    work = work_dtype()

    if method == "bidiag":
        bidiag = decomp.bidiag(m, materialize=True, reortho="full")

        @jax.jit
        def all_probes(f_jvp, v0_NxP):
            av = shifted_matvec(f_jvp, shift=op.shift, dtype=op.dtype, work=work)
            return jax.vmap(lambda v0: bidiag(av, v0).J_small)(v0_NxP)

    else:
        tridiag = decomp.tridiag_sym(m, materialize=True, reortho="full", custom_vjp=False)

        @jax.jit
        def all_probes(f_jvp, v0_NxP):
            f_vjp = jax.linear_transpose(f_jvp, jnp.zeros(op.num_params, op.dtype))

            def gram(v):
                v = v.astype(op.dtype)
                w = f_jvp(v) - op.shift * v
                return (f_vjp(w)[0] - op.shift * w).astype(work)

            return jax.vmap(lambda v0: tridiag(gram, v0).J_small)(v0_NxP)

    v0 = jax.random.rademacher(key, (num_probes, op.num_params), work)
    small = np.asarray(all_probes(op.linear_jvp, v0), np.float64)
    if not np.isfinite(small).all():
        raise FloatingPointError("slq_spectrum: the Krylov recurrence produced non-finite values")
    if method == "bidiag":
        # A V = U B: B^T B is the Lanczos matrix of A^T A started at the probe (V e_1), so
        # the quadrature nodes are sigma(B)^2 and the weights the squared first components
        # of B's right singular vectors.
        _, s, vt = np.linalg.svd(small)  # batched over probes, descending
        sigma, weights = s[:, ::-1], (vt[:, :, 0] ** 2)[:, ::-1]
    else:
        evals, evecs = np.linalg.eigh(small)  # ascending
        sigma, weights = np.sqrt(np.clip(evals, 0.0, None)), evecs[:, 0, :] ** 2
    return SLQResult(sigma, weights, op.num_params, float(op.shift), method)
