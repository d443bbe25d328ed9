"""Matrix-free spectra that carry their own certificate.

* ``top_singular_triplets``: top-``k`` singular triplets of ``A = J - shift I`` by
  Golub-Kahan bidiagonalisation (``matfree.decomp.bidiag``, full reorthogonalisation), with
  the residuals ``||A v - s u||`` and ``||A^T u - s v||`` computed by explicit products, and
  a converged flag at a stated relative tolerance. Adaptive: the Krylov dimension doubles
  until every triplet converges or a budget of products or seconds is spent.
* ``kpm_counts``: counts of singular values of ``A`` (``A = D = J - I`` for the bulk) below
  thresholds, from Chebyshev moments of ``A^T A`` (kernel polynomial method) with
  Rademacher (Hutchinson) trace estimation, after deflating the top singular directions.
  Every count comes with a bracket from two one-sided step filters (below), and a count
  whose bracket is wider than asked is reported as unresolved: ``estimate = NaN`` with
  the bracket and the resolution reached, never as 0.

Counting method (Weisse et al. 2006, "The kernel polynomial method"; Lin, Saad & Yang 2016,
"Approximating spectral densities of large matrices"; Di Napoli, Polizzi & Saad 2016,
"Efficient estimation of eigenvalue counts in an interval"). With ``L >= sigma_max(A_k)^2``
(``A_k``: ``A`` with its top ``k`` right singular directions projected out) and
``B = 2 A_k^T A_k / L - I`` (spectrum in ``[-1, 1]``), write a singular value as
``sigma = sqrt(L) sin(phi / 2)``, ``phi in [0, pi]``: ``B``'s eigenvalue is ``-cos phi``.
The Jackson-damped Chebyshev expansion of degree ``N`` of the step ``1[phi < phi_c]`` is the
step convolved in ``phi`` with the Jackson kernel, a non-negative kernel of unit mass, so
the filter ``q_c`` lies in ``[0, 1]`` and differs from the step by at most ``eps`` farther
than ``delta(N, eps)`` from ``phi_c`` (``delta`` is where the kernel's tail mass falls to
``eps``; computed exactly, ``delta ~ 1/N``). Hence, with ``phi_t`` the threshold's angle,

    tr q_{phi_t - delta}(B) - eps P  <=  count(sigma < t)  <=  tr q_{phi_t + delta}(B) / (1 - eps),

and both traces come from the same moments ``z^T T_j(B) z``. Hutchinson's error is added
as ``z_score`` standard errors over probes (a Gaussian confidence band, not a rigorous
bound). The lower filter exists only where ``phi_t > delta``: thresholds below
``sqrt(L) sin(delta / 2) ~ sigma_max(A_k) delta / 2`` are unresolved at degree ``N``.
Resolving a threshold ``t`` therefore needs ``N ~ c sigma_max(A_k) / t``, i.e.
``N / 2`` products with ``A_k^T A_k`` (``N`` Jacobian products) per probe: the cost is
``probes * c * sigma_{k+1}(D) / t`` Jacobian products plus the deflation's, linear in the
run's cost (itself ~ P) and inverse in the threshold.

Inexact deflation (``Deflation``). The moments are those of the compression
``C = Q M Q`` on ``range(Q)``, ``M = A^T A``, ``Q = I - V V^T``, ``V [P, k]`` orthonormal
(the deflated right directions, re-orthonormalised in float64). ``V`` need not span an
invariant subspace: in the basis ``[V, Q]``

    M = [[H, X^T], [X, C]],   H = V^T M V,   X = Q M V  (computed by 2k explicit products).

For ``tau = t^2`` not an eigenvalue of ``H``, Haynsworth's inertia additivity on
``M - tau I`` gives, exactly,

    count(M < tau) = count(H < tau) + count(S < tau),   S = C - X (H - tau I)^{-1} X^T.

Split ``X (H - tau)^{-1} X^T = G_+ - G_-`` by the eigenvalues of ``H`` above / below
``tau`` (both PSD), with ``rho_+ = ||G_+|| = ||X W_+ (h_+ - tau)^{-1/2}||^2`` and
``rho_- = ||G_-||`` likewise (``H = W diag(h) W^T``). Then ``C - rho_+ <= S <= C + rho_-``
(Loewner), so by Weyl

    count(H < tau) + count(C < tau - rho_-)  <=  count(M < tau)
                                             <=  count(H < tau) + count(C < tau + rho_+),

and Cauchy interlacing adds ``count(C < tau) <= count(M < tau) <= count(C < tau) + k``
(both kept: the bracket is their intersection). When every deflated direction lies above
the threshold (``h_min > tau``, the usual case) ``rho_- = 0`` and the lower bound is the
compression's own count: inexact deflation only lifts the upper threshold from ``t`` to
``sqrt(t^2 + rho_+)``. ``rho_+`` weights the coupling of each deflated direction by
``1 / (h - tau)``: the top directions' float32 rounding (``~ eps sigma_1^2``) costs
``~ eps^2 sigma_1^2``, and what matters is how well the deflation's lower edge is converged.
Deflation costs ``2 m`` products for ``m`` Golub-Kahan steps plus ``2 k`` for the
certificate.

Depth by a cost model (``deflate=None``). Deflating ``k`` directions costs about ``6 k``
products (two Golub-Kahan steps of two products per converged direction, plus its
certificate row); the moments then cost ``num_probes * 4 jconst / phi_t`` products
(``predicted_moment_products``, ``~ num_probes * 34 sigma_{k+1} / t``). The depth is the
minimiser of the sum over the Ritz values (``cost_optimal_depth``: deepen while the
moment products saved exceed the deflation's), for the smallest threshold whose
predicted total fits the budget; Golub-Kahan restarts with ``m`` doubled (40, 80, ...)
while the optimum lies in the top quarter of the trusted Ritz values (``k >= 3 m / 8``)
and the deflation stays within ``deflation_fraction`` (a quarter) of the budget, and ``k
< P`` always. The chosen rows lose their "ghosts" (rows mostly inside the span of
earlier ones, from a float32 basis that lost orthogonality) and are rotated to the
eigenvectors of ``H`` (Rayleigh-Ritz inside their span, no new products), so the
prefixes follow true Rayleigh quotients (``_certified_deflation``). Of that prefix the
certificate keeps the deepest of 13 with ``rho_+, rho_- <= deflation_tol * t^2`` at the
largest threshold (smaller ones carry the shifts in their brackets). A count the budget
cannot resolve is reported with ``products_to_resolve``, a prediction of the products
that would (its bracket's systematic width extrapolated like ``1 / N``, the statistical
like ``1 / sqrt(probes)``; the cost model below resolution); ``kpm_counts`` stops early
when that exceeds the budget for every unresolved count.

Float32 rounding (not covered by the bracket). The certificate bounds the Krylov and filter
errors of exact products; every product ``J v``, ``J^T u`` is a float32 replay of the whole
training run. Measured on the reference run (P = 4810, T = 625;
``benchmarks/jacobian_float32_rounding.py``): a float32 product of a unit vector is off by
``1.5e-6`` to ``1.8e-6`` (2-norm) from the float64 replay's; the dense float32 and float64
Jacobians differ by ``||J_32 - J_64||_2 = 1.9e-5``, so (Weyl) no singular value of
``D = J - I`` moves by more than that (measured: at most ``4.5e-6``, and ``<= 1.6e-7``
among those within 5 places of 0.1, 1e-2 and 1e-3); the counts of ``sigma(D)`` below
0.1, 1e-2 and 1e-3 are identical in float32 and float64 (3030, 1804, 1008). The rounding
acts like a threshold shift of at most ``2e-5``: negligible against the resolutions these
counts reach (``>= 1e-3``), not against thresholds near ``1e-5``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dsb.jacobian.estimates import CountEstimate, UnconvergedWarning
from dsb.jacobian.krylov import golub_kahan, work_dtype
from dsb.jacobian.operator import JacobianOperator, gram_rows, triplet_residuals

log = logging.getLogger(__name__)

__all__ = [
    "Deflation",
    "KPMCounts",
    "TopSingular",
    "cost_optimal_depth",
    "deflation_subspace",
    "jackson_coefficients",
    "jackson_delta",
    "kpm_counts",
    "kpm_counts_from_moments",
    "predicted_moment_products",
    "products_to_resolve",
    "step_filter",
    "top_singular_triplets",
]


# --------------------------------------------------------------------------------------
# Top-k singular triplets with residuals.


@dataclasses.dataclass
class TopSingular:
    """Top-``k`` singular triplets of ``A = J - shift I`` and their certificate.

    ``U [P, k]``, ``s [k]`` (descending), ``Vt [k, P]``; ``residual_left [k]`` is
    ``||A v_i - s_i u_i||``, ``residual_right [k]`` is ``||A^T u_i - s_i v_i||`` (explicit
    products); ``rel_residual = max(both) / s_i``. A triplet with residual ``r`` has a true
    singular value within ``r`` of ``s_i``, so ``converged[i] = rel_residual[i] <= rtol``
    certifies ``s_i`` to ``rtol`` relative (that it is the ``i``-th one, i.e. that the Krylov
    space did not miss a larger one, is not certified). ``products`` counts Jacobian
    products (``J v`` and ``J^T u`` each count one), residual checks included.
    """

    U: np.ndarray
    s: np.ndarray
    Vt: np.ndarray
    residual_left: np.ndarray
    residual_right: np.ndarray
    rtol: float
    num_krylov: int
    products: int
    seconds: float
    stop_reason: str

    @property
    def rel_residual(self) -> np.ndarray:
        return np.maximum(self.residual_left, self.residual_right) / np.maximum(self.s, 1e-300)

    @property
    def converged(self) -> np.ndarray:
        return self.rel_residual <= self.rtol

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())


def top_singular_triplets(
    op,
    k: int,
    *,
    rtol: float = 1e-3,
    num_krylov: int | None = None,
    max_products: int | None = None,
    max_seconds: float | None = None,
    key: jax.Array | None = None,
    warn: bool = True,
) -> TopSingular:
    """Top-``k`` singular triplets of ``A = op`` to relative residual ``rtol``.

    Golub-Kahan with ``num_krylov`` steps (default ``max(2k + 10, 40)``; each step one
    ``A v`` and one ``A^T u``), then the residuals by ``2k`` explicit products. While some
    triplet has ``rel_residual > rtol`` the Krylov dimension doubles (a fresh run from the
    same start vector) unless that would exceed ``max_products`` (default ``20 P``) or the
    elapsed time ``max_seconds``. Returns what was reached, with ``stop_reason``
    (``"converged"``, ``"max_products"``, ``"max_seconds"`` or ``"krylov_dimension=P"``),
    and warns (``UnconvergedWarning``) if not converged.
    """
    p = op.num_params
    if not 1 <= k <= p:
        raise ValueError(f"top_singular_triplets: k must be in [1, P={p}], got {k}")
    if rtol <= 0:
        raise ValueError(f"top_singular_triplets: rtol must be > 0, got {rtol}")
    max_products = 20 * p if max_products is None else int(max_products)
    key = jax.random.key(0) if key is None else key
    v0 = jax.random.normal(key, (p,), work_dtype())
    m = min(max(num_krylov or max(2 * k + 10, 40), k), p)
    t0 = time.perf_counter()
    products = 0
    while True:
        u, s, vt = golub_kahan(op.linear_jvp, v0, m, shift=op.shift, dtype=op.dtype)
        products += 2 * m
        u, s, vt = u[:, :k], s[:k], vt[:k]
        r_left, r_right = triplet_residuals(op, u, s, vt)
        products += 2 * k
        res = TopSingular(u, s, vt, r_left, r_right, rtol, m, products, 0.0, "converged")
        elapsed = time.perf_counter() - t0
        if res.all_converged:
            break
        m_next = min(2 * m, p)
        if m == p:
            res.stop_reason = "krylov_dimension=P"
            break
        if products + 2 * m_next + 2 * k > max_products:
            res.stop_reason = "max_products"
            break
        # The next run costs about twice this one.
        if max_seconds is not None and elapsed * 3 > max_seconds:
            res.stop_reason = "max_seconds"
            break
        m = m_next
    res.seconds = time.perf_counter() - t0
    if warn and not res.all_converged:
        bad = int((~res.converged).sum())
        warnings.warn(
            f"top_singular_triplets: {bad} of {k} triplets not converged to rtol={rtol:g} "
            f"(worst relative residual {res.rel_residual.max():.2e}, {m} Krylov steps, "
            f"{products} products; stopped: {res.stop_reason})",
            UnconvergedWarning,
            stacklevel=2,
        )
    return res


# --------------------------------------------------------------------------------------
# Deflation with a certificate for inexactness (module docstring, "Inexact deflation").


@dataclasses.dataclass
class Deflation:
    """Deflated directions and the certificate of their inexactness.

    ``Vt [k, P]`` orthonormal rows (nested: the first ``j`` rows span the first ``j`` Ritz
    vectors), ``MVt [k, P]`` the rows ``A^T A v_i`` by explicit products, ``ritz [m]`` the
    Golub-Kahan Ritz values (descending; ``ritz[j]`` estimates ``sigma_{j+1}``, used for the
    Chebyshev interval after deflating ``j``), ``products`` spent (Golub-Kahan and the
    certificate's), ``num_krylov`` the Krylov dimension. ``certificate(j, t)`` gives
    ``(count(H < t^2), rho_+, rho_-)`` for the first ``j`` directions (module docstring).
    """

    Vt: np.ndarray
    MVt: np.ndarray
    ritz: np.ndarray
    products: int
    num_krylov: int
    seconds: float = 0.0

    @property
    def size(self) -> int:
        return int(self.Vt.shape[0])

    def blocks(self, j: int):
        """``(H [j, j], X^T X [j, j])`` for the first ``j`` directions."""
        v, mv = self.Vt[:j], self.MVt[:j]
        h = v @ mv.T
        h = 0.5 * (h + h.T)
        x = mv - h @ v  # rows of X^T: (I - V V^T) M v_i
        return h, x @ x.T

    def certificate(self, j: int, t: float) -> tuple[int, float, float]:
        """``(count(H < t^2), rho_+, rho_-)`` for the first ``j`` directions at threshold
        ``t`` (singular values of ``A``; ``rho`` in units of ``sigma^2``). ``rho`` is
        ``inf`` when ``t^2`` is (numerically) an eigenvalue of ``H``."""
        if j == 0:
            return 0, 0.0, 0.0
        h, xtx = self.blocks(j)
        return _schur_shifts(h, xtx, float(t) ** 2)


def _schur_shifts(h: np.ndarray, xtx: np.ndarray, tau: float) -> tuple[int, float, float]:
    ev, w = np.linalg.eigh(h)
    y = w.T @ xtx @ w  # Gram of X W
    gap = ev - tau
    if np.any(np.abs(gap) <= 1e-12 * max(abs(tau), np.abs(ev).max(), 1e-300)):
        return int((ev < tau).sum()), math.inf, math.inf

    def rho(mask):
        if not mask.any():
            return 0.0
        d = 1.0 / np.sqrt(np.abs(gap[mask]))
        g = d[:, None] * y[np.ix_(mask, mask)] * d[None, :]
        return float(max(np.linalg.eigvalsh(0.5 * (g + g.T))[-1], 0.0))

    return int((ev < tau).sum()), rho(gap > 0), rho(gap < 0)


def deflation_subspace(
    op,
    k: int,
    *,
    num_krylov: int | None = None,
    key: jax.Array | None = None,
    top: TopSingular | None = None,
    chunk: int = 64,
) -> Deflation:
    """Up to ``k`` deflation directions of ``A = op`` with their certificate.

    The top right Ritz vectors of ``num_krylov`` Golub-Kahan steps (default
    ``max(2k + 10, 40)``, at most ``P``; ``2 m`` products, full reorthogonalisation), or
    ``top.Vt[:k]`` if ``top`` is given; re-orthonormalised in float64 (QR keeps the nested
    prefixes), then ``M v_i`` by ``2k`` explicit products. The directions need not be
    converged: ``Deflation.certificate`` accounts for their coupling to the rest.
    """
    p = op.num_params
    if not 0 <= k < p:
        raise ValueError(f"deflation_subspace: k must be in [0, P={p}), got {k}")
    t0 = time.perf_counter()
    if top is not None:
        if k > len(top.s):
            raise ValueError(f"deflation_subspace: k={k} > {len(top.s)} triplets in top")
        vt, ritz, products, m = np.asarray(top.Vt[:k], np.float64), top.s, 0, top.num_krylov
        # The Chebyshev interval after deflating j: the next Ritz value plus its residual.
        res = np.maximum(top.residual_left, top.residual_right)
        ritz = np.asarray(top.s + res, np.float64)
    else:
        m = min(max(num_krylov or max(2 * k + 10, 40), k + 1), p)
        key = jax.random.key(0) if key is None else key
        v0 = jax.random.normal(key, (p,), work_dtype())
        _, ritz, vt_all = golub_kahan(op.linear_jvp, v0, m, shift=op.shift, dtype=op.dtype)
        vt, products = vt_all[:k], 2 * m
    return _certified_deflation(op, vt, ritz, products, m, chunk, t0)


def _certified_deflation(op, vt, ritz, products, m, chunk, t0, rotate=False) -> Deflation:
    """The rows ``vt [k, P]`` re-orthonormalised in float64 with their ``M v_i`` (``2k``
    products added to ``products``), as a ``Deflation``.

    A row that is mostly in the span of the rows before it (``|R_ii| < 1/2`` in the QR:
    a "ghost" copy of a converged Ritz vector, which a float32 Krylov basis produces once
    it loses orthogonality) is dropped with its Ritz value: re-orthonormalised, it would
    be amplified rounding, coupled to everything, and no prefix containing it would pass
    the certificate."""
    p, k = op.num_params, len(vt)
    if k:
        q, r = np.linalg.qr(np.asarray(vt, np.float64).T)
        keep = np.abs(np.diag(r)) >= 0.5 * np.linalg.norm(vt, axis=1)
        if not keep.all():
            ritz = np.concatenate([np.asarray(ritz)[:k][keep], np.asarray(ritz)[k:]])
            vt = np.asarray(vt)[keep]
            k = len(vt)
            q, r = np.linalg.qr(np.asarray(vt, np.float64).T)
        vt = (q * np.sign(np.diag(r))).T  # orthonormal to float64 rounding, same prefixes
        mvt = gram_rows(op, vt, chunk)
        products += 2 * k
        if rotate:
            # Rayleigh-Ritz inside span(V) in float64 (no new products): the prefixes then
            # follow the true Rayleigh quotients, so a direction whose Krylov Ritz value
            # was wrong (float32 basis, breakdown on an exact null space) sorts where it
            # belongs instead of spoiling every prefix after it.
            h = vt @ mvt.T
            ev, w = np.linalg.eigh(0.5 * (h + h.T))
            w = w[:, ::-1]
            vt, mvt = w.T @ vt, w.T @ mvt
            top = np.sqrt(np.maximum(ev[::-1], 0.0))
            ritz = np.concatenate([top, np.asarray(ritz, np.float64)[k:]])
    else:
        vt, mvt = np.zeros((0, p)), np.zeros((0, p))
    return Deflation(vt, mvt, np.asarray(ritz, np.float64), products, m, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------
# Kernel polynomial counts.


def jackson_coefficients(n: int) -> np.ndarray:
    """Jackson damping factors ``g_0..g_n`` for a degree-``n`` Chebyshev expansion."""
    k = np.arange(n + 1)
    a = np.pi / (n + 2)
    return ((n - k + 2) * np.cos(k * a) + np.sin(k * a) / np.tan(a)) / (n + 2)


def jackson_delta(n: int, eps: float) -> float:
    """The smallest angle ``delta`` beyond which the degree-``n`` Jackson kernel's tail mass
    (both sides) is at most ``eps``: a Jackson-damped step at ``phi_c`` is within ``eps``
    of the step wherever ``|phi - phi_c| >= delta``. Exact (closed-form mass), by bisection."""
    g = jackson_coefficients(n)
    k = np.arange(1, n + 1)

    def tail(d):  # 1 - integral of the kernel over [-d, d]
        return 1.0 - (g[0] * d + 2.0 * np.sum(g[1:] * np.sin(k * d) / k)) / np.pi

    # The tail is non-increasing in d: bisection on a grid start.
    grid = np.linspace(0, np.pi, 4 * n + 8)
    tails = np.array([tail(d) for d in grid])
    ok = np.flatnonzero(tails <= eps)
    if len(ok) == 0:
        return float(np.pi)
    hi = grid[ok[0]]
    lo = grid[max(ok[0] - 1, 0)]
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if tail(mid) <= eps else (mid, hi)
    return float(hi)


def step_filter(n: int, phi_c: float) -> np.ndarray:
    """Chebyshev coefficients ``[n + 1]`` (Jackson damping applied) of the step that is 1 on
    eigenvalues ``-cos(phi)`` of ``B`` with ``phi < phi_c`` (singular values below
    ``sqrt(L) sin(phi_c / 2)``) and 0 above. ``phi_c <= 0`` gives 0, ``>= pi`` gives 1."""
    phi_c = float(np.clip(phi_c, 0.0, np.pi))
    # In theta = pi - phi (B = cos theta), the step is 1 for theta > pi - phi_c.
    th = np.pi - phi_c
    k = np.arange(1, n + 1)
    c = np.empty(n + 1)
    c[0] = (np.pi - th) / np.pi
    c[1:] = -2.0 * np.sin(k * th) / (np.pi * k)
    return c * jackson_coefficients(n)


@dataclasses.dataclass
class KPMCounts:
    """Result of ``kpm_counts``: ``counts`` per threshold, and what was spent.

    ``degree`` of the Chebyshev expansion, ``num_probes`` Hutchinson probes, ``sigma_max``
    the bound ``sqrt(L)`` on the deflated operator's largest singular value, ``deflated``
    the number of top directions projected out (their coupling to the rest certified, see
    ``Deflation``), ``products`` Jacobian products in all, of which
    ``deflation_products`` went to the deflation (Golub-Kahan and the certificate) and
    ``moment_products`` to the Chebyshev moments, ``stop_reason``.
    """

    counts: dict[float, CountEstimate]
    degree: int
    num_probes: int
    sigma_max: float
    deflated: int
    products: int
    seconds: float
    stop_reason: str
    top: TopSingular | None = None
    moments: np.ndarray | None = dataclasses.field(default=None, repr=False)
    deflation_products: int = 0
    moment_products: int = 0
    deflation: Deflation | None = dataclasses.field(default=None, repr=False)
    rel_width: float = 0.1
    jconst: float = dataclasses.field(default=float("nan"), repr=False)

    @property
    def all_resolved(self) -> bool:
        return all(c.resolved for c in self.counts.values())

    @property
    def resolution(self) -> float:
        return float(next(iter(self.counts.values())).resolution) if self.counts else np.nan

    def products_needed(self, t: float) -> float:
        """Predicted products that would resolve the count below ``t`` with this run's
        deflation (``products_to_resolve``; 0 when resolved)."""
        return products_to_resolve(
            self.counts[t],
            degree=self.degree,
            num_probes=self.num_probes,
            sigma_max=self.sigma_max,
            rel_width=self.rel_width,
            jconst=self.jconst,
            deflation_products=self.deflation_products,
        )


def kpm_counts_from_moments(
    moments: np.ndarray,
    sigma_max: float,
    thresholds: Sequence[float],
    *,
    num_params: int,
    eps: float | None = None,
    z_score: float = 3.0,
    rel_width: float = 0.1,
    abs_width: float = 0.0,
    extra_below: dict[float, int] | None = None,
    shift_above: dict[float, float] | None = None,
    shift_below: dict[float, float] | None = None,
    num_deflated: int | None = None,
) -> dict[float, CountEstimate]:
    """Counts, brackets and resolution from per-probe Chebyshev moments ``[probes, N + 1]``
    (``moments[i, j] = z_i^T T_j(B) z_i``; exact traces for a single row when the moments
    are exact). ``eps`` (default ``1e-3``; it adds ``eps P`` to the bracket) is the
    filters' allowed leakage; a count is resolved when its bracket is at most
    ``max(rel_width * estimate, abs_width)`` wide (and not inverted: ``low <= high``).
    ``extra_below[t]`` adds ``count(H < t^2)`` of the deflated block. Inexact deflation
    (module docstring): the upper filter moves to ``sqrt(t^2 + shift_above[t])`` and the
    lower to ``sqrt(t^2 - shift_below[t])`` (``rho_+``, ``rho_-``); with ``num_deflated``
    (``k``) the bracket is also intersected with interlacing's
    ``[count(C < t), count(C < t) + k]``."""
    mom = np.atleast_2d(np.asarray(moments, np.float64))
    n = mom.shape[1] - 1
    eps = 1e-3 if eps is None else float(eps)
    delta = jackson_delta(n, eps)
    resolution = float(sigma_max * np.sin(min(delta, np.pi) / 2))
    out = {}
    for t in thresholds:
        t = float(t)
        if t <= 0:
            raise ValueError(f"kpm_counts: thresholds must be > 0, got {t}")
        rho_hi = float((shift_above or {}).get(t, 0.0))
        rho_lo = float((shift_below or {}).get(t, 0.0))

        def angle(x):
            return 2 * np.arcsin(min(math.sqrt(max(x, 0.0)) / sigma_max, 1.0))

        phi_t = angle(t * t)
        phi_lo = angle(t * t - rho_lo) if math.isfinite(rho_lo) else 0.0
        phi_hi = angle(t * t + rho_hi) if math.isfinite(rho_hi) else np.pi
        filters = {"lo": phi_lo - delta, "mid": phi_t, "hi": phi_hi + delta}
        if num_deflated is not None:  # interlacing, around the unshifted threshold
            filters.update(lo0=phi_t - delta, hi0=phi_t + delta)
        per_probe = {name: mom @ step_filter(n, phi_c) for name, phi_c in filters.items()}
        mean = {k: float(v.mean()) for k, v in per_probe.items()}
        se = {
            k: float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
            for k, v in per_probe.items()
        }
        extra = (extra_below or {}).get(t, 0)

        def lower(name, phi, mean=mean, se=se):
            v = mean[name] - z_score * se[name] - eps * num_params if phi > delta else 0.0
            return float(np.clip(v, 0.0, num_params))

        def upper(name, mean=mean, se=se):
            return float(np.clip((mean[name] + z_score * se[name]) / (1 - eps), 0.0, num_params))

        low = lower("lo", phi_lo) + extra
        high = upper("hi") + extra if math.isfinite(rho_hi) else float(num_params)
        stat = z_score * (se["lo"] + se["hi"])
        if num_deflated is not None:
            low0, high0 = lower("lo0", phi_t), upper("hi0") + num_deflated
            if low0 > low:
                low, stat = low0, z_score * (se["lo0"] + se["hi"])
            if high0 < high:
                high = high0
        low, high = min(low, num_params), min(high, num_params)
        est = float(np.clip(mean["mid"] + extra, low, high))
        # low > high: the bounds contradict each other (a z-score bound that failed with
        # few probes, or inconsistent deflation inputs); such a bracket certifies nothing.
        resolved = bool(
            phi_t > delta and low <= high and high - low <= max(rel_width * est, abs_width)
        )
        out[t] = CountEstimate(
            threshold=t,
            estimate=est if resolved else float("nan"),
            low=low,
            high=high,
            resolved=resolved,
            resolution=resolution,
            stderr=se["mid"],
            stat_width=stat,
            deflation_shift=rho_hi,
        )
    return out


def _project_out(vt_kp):
    """``v -> v - V (V^T v)`` with ``V = vt_kp^T`` (or the identity for no rows)."""
    if vt_kp is None or vt_kp.shape[0] == 0:
        return lambda v: v
    return lambda v: v - vt_kp.T @ (vt_kp @ v)


def predicted_moment_products(sigma_max, t: float, *, num_probes: int, jconst: float):
    """The cost model's Jacobian products for the moments that resolve threshold ``t``
    when the deflated operator's largest singular value is ``sigma_max`` (a number or an
    array of candidates, elementwise):
    ``num_probes * 4 jconst / phi_t``, ``phi_t = 2 arcsin(min(t / sigma_max, 1))``
    (``~ num_probes * 2 jconst sigma_max / t``; degree ``N = 4 jconst / phi_t``, four times
    the degree at which ``t`` reaches the resolution, costs ``N`` products per probe)."""
    phi = 2.0 * np.arcsin(np.minimum(t / np.maximum(sigma_max, 1e-300), 1.0))
    return num_probes * 4.0 * jconst / np.maximum(phi, 1e-300)


def cost_optimal_depth(
    ritz: np.ndarray,
    t: float,
    *,
    k_max: int,
    num_probes: int,
    jconst: float,
    margin: float,
    per_direction: float = 6.0,
) -> int:
    """The depth ``k in [0, k_max]`` minimising the predicted cost of resolving ``t``:
    ``per_direction * k + predicted_moment_products(margin * ritz[k], t)``
    (``ritz[k]`` estimates ``sigma_{k+1}``, the top of what deflating ``k`` leaves). The
    default ``per_direction = 6``: a deflated direction needs ~2 Golub-Kahan steps (2
    products each) and one certificate row (2 products). Deepening pays while the
    moment products it saves exceed that: the first minimiser is returned."""
    k_max = int(min(k_max, len(ritz) - 1))
    if k_max <= 0:
        return 0
    sig = margin * np.asarray(ritz[: k_max + 1], np.float64)
    moments = predicted_moment_products(sig, float(t), num_probes=num_probes, jconst=jconst)
    cost = per_direction * np.arange(k_max + 1) + moments
    return int(np.argmin(cost))


def products_to_resolve(
    c: CountEstimate,
    *,
    degree: int,
    num_probes: int,
    sigma_max: float,
    rel_width: float,
    jconst: float,
    deflation_products: int = 0,
) -> float:
    """Predicted Jacobian products that would resolve the count ``c`` (a prediction, not a
    certificate): ``deflation_products + n' N'`` for ``n'`` probes at degree ``N'``.

    Where ``c`` has a bracket (``t`` above the resolution, ``low <= high``), its widths are
    extrapolated: the systematic part ``w_sys = high - low - stat_width`` shrinks like
    ``1 / N`` (the Jackson width), the statistical part like ``1 / sqrt(n)``, and the
    allowed width is ``w = rel_width * (low + high) / 2``. If ``stat_width <= w / 2`` the
    probes stay (``n' = n``) and ``N' = N w_sys / (w - stat_width)``; otherwise
    ``n' = n (2 stat_width / w)^2`` and ``N' = N w_sys / (w / 2)``; ``N' >= N`` either way.
    Where ``t`` is at or below the resolution the bracket says nothing yet and the cost
    model gives ``N' = 4 jconst / phi_t`` (``predicted_moment_products``), ``n' = n``.
    ``0`` for a resolved count."""
    if c.resolved:
        return 0.0
    n, deg = float(num_probes), float(degree)
    if c.threshold > c.resolution and c.low <= c.high:
        w = rel_width * 0.5 * (c.low + c.high)
        stat = float(c.stat_width)
        sys_w = max(c.high - c.low - stat, 0.0)
        if stat <= 0.5 * w:
            n_new, deg_new = n, deg * sys_w / (w - stat)
        else:
            n_new, deg_new = n * (2.0 * stat / w) ** 2, deg * sys_w / (0.5 * w)
        deg_new = max(deg_new, deg)
    else:
        n_new = n
        deg_new = predicted_moment_products(sigma_max, c.threshold, num_probes=1, jconst=jconst)
    return float(deflation_products + n_new * deg_new)


def _choose_depth(defl: Deflation, thresholds, *, tol):
    """The deflation depth for ``kpm_counts(deflate=None)``: the deepest of 13 prefixes of
    the candidates (``defl``, already cut to the cost model's depth) whose certificate at
    the largest threshold ``t`` has ``rho_+ <= tol t^2`` and ``rho_- <= tol t^2`` (each
    filter moves by at most that much in ``sigma^2``; deflated values below ``t`` are
    counted exactly by ``count(H < t^2)``).
    The largest threshold is the count every depth must serve first; at smaller ones the
    bracket carries the certificate's shifts (still a bracket, only wider). The blocks
    of each prefix are computed directly (``Deflation.blocks``): the Gram shortcut
    ``X^T X = (MV)^T MV - H^2`` cancels catastrophically when ``MV`` comes from float32
    products (an error ~ 1e-7 sigma_1^4 in ``X^T X``)."""
    k_max = min(defl.size, len(defl.ritz) - 1)
    if k_max <= 0:
        return 0
    candidates = sorted({round(float(x)) for x in np.linspace(0, k_max, 13)}, reverse=True)
    tau = float(thresholds[-1]) ** 2

    def feasible(j):
        if j == 0:
            return True
        _, rho_hi, rho_lo = _schur_shifts(*defl.blocks(j), tau)
        return rho_lo <= tol * tau and rho_hi <= tol * tau

    return next(j for j in candidates if feasible(j))


def kpm_counts(
    op: JacobianOperator,
    thresholds: Sequence[float],
    *,
    deflate: int | None = None,
    num_probes: int = 8,
    rel_width: float = 0.1,
    degree: int | None = None,
    max_degree: int | None = None,
    max_products: int | None = None,
    max_seconds: float | None = None,
    eps: float | None = None,
    z_score: float = 3.0,
    chunk: int = 64,
    sigma_margin: float = 1.05,
    top: TopSingular | None = None,
    key: jax.Array | None = None,
    warn: bool = True,
    num_krylov: int | None = None,
    deflation_tol: float = 0.05,
    deflation_fraction: float = 0.25,
) -> KPMCounts:
    """Counts of singular values of ``A = op`` (``op.shift`` applied: ``shift=1`` for
    ``D = J - I``) below each threshold, with brackets (see the module docstring).

    1. Deflation (``deflation_subspace``): the top right Ritz vectors of ``num_krylov``
       Golub-Kahan steps (or ``top.Vt`` if given) are projected out, and their coupling to
       the rest is certified (``Deflation``, module docstring): the bracket's upper filter
       moves from ``t`` to ``sqrt(t^2 + rho_+)``. ``deflate=k`` deflates ``k`` (default
       ``num_krylov = max(2k + 10, 40)``). ``deflate=None`` (default) picks the depth
       by the cost model of the module docstring (Golub-Kahan with ``m = 40, 80, ...``
       steps, or ``num_krylov`` once; at most ``deflation_fraction`` of the budget;
       ``k < P``), then the certificate's tolerance ``deflation_tol``.
       ``L = (sigma_margin * s_{k+1})^2`` bounds the deflated spectrum (the next Ritz
       value; plus its residual for ``top``); a probe whose moments leave
       ``[-|z|^2, |z|^2]`` shows the bound was too small, and the run restarts with ``L``
       doubled.
    2. Chebyshev moments of ``B = 2 A_k^T A_k / L - I`` on ``num_probes`` Rademacher
       probes (projected), two moments per product with ``A_k^T A_k`` (doubling). The
       starting degree (``degree``; default: twice the Jackson width over the largest
       threshold's angle, ``N ~ 17 sigma_max / t`` at ``eps = 1e-3``, capped by the
       budget) doubles while some count is
       unresolved and its bracket is mostly systematic; when mostly statistical, the probes
       double. Stops at ``max_degree``, ``max_products`` (default ``10 P``),
       ``max_seconds`` (the next move's time predicted from the measured seconds per
       product) or when every unresolved count is predicted to need more than
       ``max_products`` (``"max_products_predicted"``), and reports what was reached
       (``stop_reason``); unresolved counts have ``estimate = NaN`` and
       ``KPMCounts.products_needed(t)``.

    The steps, each a function below: ``_deflate`` (deflation, depth, bound, certificate),
    ``_starting_degree``, ``_ChebyshevMoments`` (the probes' moments, batched and extended
    in place), ``_next_move`` (more degree, more probes, or stop) inside
    ``_resolve_counts``, and ``kpm_counts_from_moments`` (moments to counts and brackets).
    Progress (each Golub-Kahan run, the deflation, every move with its brackets) goes to
    this module's logger at INFO.
    """
    p = op.num_params
    thresholds = tuple(sorted(float(t) for t in thresholds))
    if not thresholds or thresholds[0] <= 0:
        raise ValueError(f"kpm_counts: thresholds must be positive, got {thresholds}")
    if num_probes < 2:
        raise ValueError(f"kpm_counts: num_probes must be >= 2, got {num_probes}")
    if deflate is not None and not 0 <= deflate < p:
        raise ValueError(f"kpm_counts: deflate must be in [0, P={p}), got {deflate}")
    if deflation_tol <= 0:
        raise ValueError(f"kpm_counts: deflation_tol must be > 0, got {deflation_tol}")
    max_products = 10 * p if max_products is None else int(max_products)
    eps = 1e-3 if eps is None else float(eps)
    key = jax.random.key(0) if key is None else key
    work = work_dtype()
    t_start = time.perf_counter()

    jconst = jackson_delta(256, eps) * 256  # delta ~ jconst / N

    # 1. Deflation, its certificate and the spectral bound.
    defl, k, lsq, cert, deflation_products = _deflate(
        op,
        thresholds,
        deflate=deflate,
        top=top,
        num_krylov=num_krylov,
        max_products=max_products,
        key=key,
        chunk=chunk,
        num_probes=num_probes,
        deflation_tol=deflation_tol,
        jconst=jconst,
        sigma_margin=sigma_margin,
        deflation_fraction=deflation_fraction,
    )
    log.info(
        "kpm_counts: deflated %d directions (%d products, Krylov dimension %d, %.0f s); "
        "Chebyshev interval sigma <= %.3g",
        k,
        deflation_products,
        defl.num_krylov,
        time.perf_counter() - t_start,
        math.sqrt(lsq),
    )
    vt = jnp.asarray(defl.Vt[:k], work) if k else None
    moments = _ChebyshevMoments(op, vt, work, chunk)

    # 2. The starting degree: the one that brackets the largest threshold (the cheapest),
    # within the budget; the loop doubles it while smaller thresholds stay unresolved.
    target_deg = _starting_degree(
        thresholds,
        lsq,
        budget=max_products - deflation_products,
        num_probes=num_probes,
        jconst=jconst,
        degree=degree,
    )

    # 3. Moments and counts, until resolved or out of budget.
    def to_counts(mom, lsq):
        return kpm_counts_from_moments(
            mom,
            math.sqrt(lsq),
            thresholds,
            num_params=p,
            eps=eps,
            z_score=z_score,
            rel_width=rel_width,
            extra_below={t: c[0] for t, c in cert.items()},
            shift_above={t: c[1] for t, c in cert.items()},
            shift_below={t: c[2] for t, c in cert.items()},
            num_deflated=k,
        )

    counts, deg, lsq, num_probes_used, mom, stop_reason = _resolve_counts(
        moments,
        to_counts,
        key=key,
        lsq=lsq,
        num_probes=num_probes,
        target_deg=target_deg,
        max_degree=max_degree or 10**7,
        deflation_products=deflation_products,
        max_products=max_products,
        max_seconds=max_seconds,
        t_start=t_start,
        rel_width=rel_width,
        jconst=jconst,
    )
    products = deflation_products + moments.products

    seconds = time.perf_counter() - t_start
    res = KPMCounts(
        counts=counts,
        degree=deg,
        num_probes=num_probes_used,
        sigma_max=math.sqrt(lsq),
        deflated=k,
        products=products,
        seconds=seconds,
        stop_reason=stop_reason,
        top=top,
        moments=mom,
        deflation_products=deflation_products,
        moment_products=products - deflation_products,
        deflation=defl,
        rel_width=rel_width,
        jconst=jconst,
    )
    if warn and not res.all_resolved:
        bad = [f"{c.threshold:g}" for c in counts.values() if not c.resolved]
        warnings.warn(
            f"kpm_counts: counts below {', '.join(bad)} unresolved (reported as NaN with "
            f"their brackets) at degree {deg}, {res.num_probes} probes, {products} products "
            f"({deflation_products} in deflating {k} directions); "
            f"resolution {res.resolution:.3g}; stopped: {stop_reason}",
            UnconvergedWarning,
            stacklevel=2,
        )
    return res


def _deflate(
    op: JacobianOperator,
    thresholds: tuple[float, ...],
    *,
    deflate: int | None,
    top: TopSingular | None,
    num_krylov: int | None,
    max_products: int,
    key: jax.Array,
    chunk: int,
    num_probes: int,
    deflation_tol: float,
    jconst: float,
    sigma_margin: float,
    deflation_fraction: float = 0.25,
) -> tuple[Deflation, int, float, dict[float, tuple[int, float, float]], int]:
    """Step 1 of ``kpm_counts``: deflate and bound what is left.

    Builds the candidate directions (``deflation_subspace``, from ``top`` or from
    Golub-Kahan), picks the depth ``k`` (``deflate``, or ``_choose_depth`` when ``None``),
    sets the Chebyshev interval ``L = (sigma_margin * s_{k+1})^2`` from the next Ritz value
    and computes the certificate ``(count(H < t^2), rho_+, rho_-)`` at each threshold
    from the chosen prefix's blocks directly. Returns ``(deflation, k, L, certificate,
    products)``, ``products`` counting ``top``'s too when given.
    """
    p = op.num_params
    products = 0
    if top is not None:
        products += top.products
        k_max = min(len(top.s) - 1, p - 1) if deflate is None else min(deflate, len(top.s) - 1)
        defl = deflation_subspace(op, k_max, top=top, chunk=chunk)
    else:
        if deflate is None:
            defl = _cost_model_deflation(
                op,
                thresholds,
                num_krylov=num_krylov,
                max_products=max_products,
                key=key,
                chunk=chunk,
                num_probes=num_probes,
                jconst=jconst,
                margin=sigma_margin,
                deflation_fraction=deflation_fraction,
            )
        else:
            m = num_krylov or max(2 * deflate + 10, 40)
            defl = deflation_subspace(op, deflate, num_krylov=m, key=key, chunk=chunk)
    products += defl.products
    if deflate is None:
        k = _choose_depth(defl, thresholds, tol=deflation_tol)
    else:
        k = min(deflate, defl.size)
    s_next = float(defl.ritz[min(k, len(defl.ritz) - 1)])
    lsq = (sigma_margin * s_next) ** 2
    if k:
        h, xtx = defl.blocks(k)
        cert = {t: _schur_shifts(h, xtx, t * t) for t in thresholds}
    else:
        cert = {t: (0, 0.0, 0.0) for t in thresholds}
    return defl, k, lsq, cert, products


def _target_depth(ritz, thresholds, *, k_max, num_probes, jconst, margin, budget) -> int:
    """The cost-optimal depth (``cost_optimal_depth``) for the smallest threshold whose
    predicted cost (``2 k`` certificate products plus the moments) fits ``budget``; for the
    largest threshold when none fits."""
    k = 0
    for t in thresholds:  # ascending
        k = cost_optimal_depth(
            ritz, t, k_max=k_max, num_probes=num_probes, jconst=jconst, margin=margin
        )
        sig = margin * ritz[min(k, len(ritz) - 1)]
        cost = 2 * k + predicted_moment_products(sig, t, num_probes=num_probes, jconst=jconst)
        if cost <= budget:
            return k
    return k


def _cost_model_deflation(
    op: JacobianOperator,
    thresholds: tuple[float, ...],
    *,
    num_krylov: int | None,
    max_products: int,
    key: jax.Array,
    chunk: int,
    num_probes: int,
    jconst: float,
    margin: float,
    deflation_fraction: float,
) -> Deflation:
    """The deflation of ``kpm_counts(deflate=None)``: Golub-Kahan with ``m`` steps (fresh
    runs, ``m = 40, 80, ...``, or ``num_krylov`` once), the depth ``k <= m / 2`` that
    minimises the predicted cost (``_target_depth``: ``6 k`` deflation products plus the
    moments' ``num_probes * 4 jconst / phi_t`` at ``sigma_{k+1}``). ``m`` doubles while the
    optimum sits in the top quarter of the trusted Ritz values (``k >= 3/8 m``: deeper may
    still pay) and the next run, its certificate included, keeps the deflation within
    ``deflation_fraction`` of ``max_products``; never ``k >= P``. Only the chosen ``k``
    rows get the certificate's ``2 k`` products."""
    p = op.num_params
    t0 = time.perf_counter()
    v0 = jax.random.normal(key, (p,), work_dtype())
    cap = deflation_fraction * max_products
    m = min(num_krylov or 40, p)
    products = 0
    while True:
        _, ritz, vt_all = golub_kahan(op.linear_jvp, v0, m, shift=op.shift, dtype=op.dtype)
        products += 2 * m
        k_max = min(m // 2, p - 1)
        k = _target_depth(
            ritz,
            thresholds,
            k_max=k_max,
            num_probes=num_probes,
            jconst=jconst,
            margin=margin,
            budget=max_products - products,
        )
        log.info(
            "kpm_counts: Golub-Kahan with %d steps (%d products so far, %.0f s): "
            "cost-optimal depth %d of %d",
            m,
            products,
            time.perf_counter() - t0,
            k,
            k_max,
        )
        m_next = min(2 * m, p)
        if num_krylov or m == p or 4 * k < 3 * k_max:
            break
        if products + 2 * m_next + 2 * min(m_next // 2, p - 1) > cap:
            break
        m = m_next
    return _certified_deflation(op, vt_all[:k], ritz, products, m, chunk, t0, rotate=True)


def _starting_degree(
    thresholds: tuple[float, ...],
    lsq: float,
    *,
    budget: int,
    num_probes: int,
    jconst: float,
    degree: int | None,
) -> int:
    """Step 2 of ``kpm_counts``: ``degree`` if given, else the degree whose Jackson width
    (``jconst / N``) is half the largest threshold's angle, capped by what ``budget``
    products afford for ``num_probes`` probes (at least 16)."""
    phi_max = 2 * np.arcsin(min(thresholds[-1] / math.sqrt(lsq), 1.0))
    affordable = max(16, budget // (2 * num_probes))
    return degree or min(int(np.ceil(2.0 * jconst / max(phi_max, 1e-12))), affordable)


class _ChebyshevMoments:
    """Step 3 of ``kpm_counts``: Chebyshev moments ``z^T T_j(B) z`` of
    ``B = 2 A_k^T A_k / L - I`` on batches of Rademacher probes ``z`` (projected).

    A batch (``start``) keeps its probes' last two Chebyshev vectors and its moments
    ``[n, 2 s + 1]``; ``extend`` advances it to a degree, two moments per product with
    ``A_k^T A_k`` (``T_{2j} = 2 T_j^2 - 1``, ``T_{2j+1} = 2 T_j T_{j+1} - T_1``).
    ``products`` counts the Jacobian products spent (two per probe and step).
    """

    def __init__(self, op: JacobianOperator, vt: jax.Array | None, work, chunk: int):
        p = op.num_params
        proj = _project_out(vt)
        self.products = 0
        self.seconds = 0.0  # wall time of the products (and their compiles)

        def scaled_gram(f_jvp, lsq):
            """``v -> 2 A_k^T A_k v / lsq - v`` (A_k = D with the top k directions projected
            out): the operator whose Chebyshev recurrence gives the moments."""
            f_vjp = jax.linear_transpose(f_jvp, jnp.zeros(p, op.dtype))

            def bmat(v):
                v = proj(v)
                x = v.astype(op.dtype)
                w = f_jvp(x) - op.shift * x
                y = (f_vjp(w)[0] - op.shift * w).astype(work)
                return 2.0 * proj(y) / lsq - v

            return bmat

        @jax.jit
        def advance(f_jvp, lsq, t_prev, t_cur, mu0, mu1, num):
            """``num`` Chebyshev steps (``num`` a static-length fori_loop via a mask), each
            one product with ``A_k^T A_k``, batched over probes. Returns the new pair and
            the two moments per step."""
            bmat = scaled_gram(f_jvp, lsq)

            def body(i, carry):
                tp, tc, mo = carry
                tn = 2.0 * jax.vmap(bmat)(tc) - tp
                odd = 2.0 * jnp.sum(tn * tc, axis=1) - mu1
                even = 2.0 * jnp.sum(tn * tn, axis=1) - mu0
                mo = mo.at[:, 2 * i].set(odd).at[:, 2 * i + 1].set(even)
                return tc, tn, mo

            mo = jnp.zeros((t_cur.shape[0], 2 * chunk), work)
            tp, tc, mo = jax.lax.fori_loop(0, num, body, (t_prev, t_cur, mo))
            return tp, tc, mo

        @jax.jit
        def first(f_jvp, lsq, z):
            bmat = scaled_gram(f_jvp, lsq)

            return jax.vmap(bmat)(z)

        self._op, self._p, self._work, self._chunk, self._proj = op, p, work, chunk, proj
        self._advance, self._first = advance, first

    def start(self, bkey: jax.Array, n: int, lsq: float) -> dict:
        """A batch of ``n`` probes drawn from ``bkey``, with moments 0, 1 and 2."""
        t0 = time.perf_counter()
        r = jax.random.rademacher(bkey, (n, self._p), self._work)
        z = jax.vmap(self._proj)(r)
        t1 = self._first(self._op.linear_jvp, lsq, z)
        self.products += 2 * n
        mu0 = jnp.sum(z * z, axis=1)
        mu1 = jnp.sum(z * t1, axis=1)
        mu2 = 2.0 * jnp.sum(t1 * t1, axis=1) - mu0
        mom = np.stack([np.asarray(mu0), np.asarray(mu1), np.asarray(mu2)], axis=1)
        self.seconds += time.perf_counter() - t0
        return {"tp": z, "tc": t1, "mu0": mu0, "mu1": mu1, "mom": mom, "n": n}

    def extend(self, b: dict, deg: int, lsq: float) -> None:
        """Advance batch ``b`` in place until it has the moments ``0..deg``."""
        t0 = time.perf_counter()
        while b["mom"].shape[1] - 1 < deg:
            have = b["mom"].shape[1] - 1  # moments 0..have, have = 2 * (steps + 1)
            steps = max(1, min(self._chunk, (deg - have + 1) // 2))
            tp, tc, mo = self._advance(
                self._op.linear_jvp, lsq, b["tp"], b["tc"], b["mu0"], b["mu1"], steps
            )
            self.products += 2 * b["n"] * steps
            b["tp"], b["tc"] = tp, tc
            b["mom"] = np.concatenate([b["mom"], np.asarray(mo, np.float64)[:, : 2 * steps]], 1)
        self.seconds += time.perf_counter() - t0


def _moments_blew_up(mom: np.ndarray) -> bool:
    """Whether some probe's moments leave ``[-|z|^2, |z|^2]`` (or are not finite): then
    ``B``'s spectrum left ``[-1, 1]`` and the bound ``L`` was too small."""
    return bool(not np.isfinite(mom).all() or (np.abs(mom) > mom[:, :1] * (1 + 1e-6) + 1e-9).any())


def _next_move(
    counts: dict[float, CountEstimate],
    *,
    deg: int,
    num_probes: int,
    products: int,
    max_products: int,
    max_degree: int,
    elapsed: float,
    max_seconds: float | None,
    seconds_per_product: float | None = None,
    products_needed=None,
) -> str:
    """What to do about unresolved ``counts``: ``"probes"`` (double them: the worst bracket
    is mostly statistical), ``"degree"`` (double it: mostly systematic, or a threshold at or
    below the resolution) or a stop reason (``"max_products"``, ``"max_degree"``,
    ``"max_seconds"``) when the move would not fit the budget. The move costs about
    ``(deg + 1) * num_probes`` products; in time, ``seconds_per_product`` (measured on the
    moments so far) times that, or without it ``1.2 elapsed`` (a doubling).
    ``products_needed(c)`` (``products_to_resolve``): counts predicted to need more than
    ``max_products`` are not pursued, and when no other is left the answer is
    ``"max_products_predicted"``."""
    worst = [c for c in counts.values() if not c.resolved]
    if products_needed is not None:
        worst = [c for c in worst if products_needed(c) <= max_products]
        if not worst:
            return "max_products_predicted"
    sub_resolution = any(c.threshold <= c.resolution for c in worst)
    stat = max(c.stat_width for c in worst)
    systematic = max(c.high - c.low - c.stat_width for c in worst)
    more_probes = not sub_resolution and stat > systematic
    cost = (deg + 1) * num_probes  # either move: about deg products per probe
    if more_probes and products + cost > max_products:
        return "max_products"
    if not more_probes and (2 * deg > max_degree):
        return "max_degree"
    if not more_probes and products + cost > max_products:
        return "max_products"
    if max_seconds is not None:
        more = 1.2 * elapsed if seconds_per_product is None else cost * seconds_per_product
        if elapsed + more > max_seconds:
            return "max_seconds"
    return "probes" if more_probes else "degree"


def _resolve_counts(
    moments: _ChebyshevMoments,
    to_counts,
    *,
    key: jax.Array,
    lsq: float,
    num_probes: int,
    target_deg: int,
    max_degree: int,
    deflation_products: int,
    max_products: int,
    max_seconds: float | None,
    t_start: float,
    rel_width: float = 0.1,
    jconst: float | None = None,
):
    """Step 3 of ``kpm_counts``: moments, counts (``to_counts(moments, L)``) and the next
    move, until every count is resolved or the budget is spent (or predicted to be too
    small for every unresolved count: ``products_to_resolve`` with ``jconst``). When the
    moments blow up (``_moments_blew_up``) the run restarts from fresh probes with ``L``
    doubled. Returns
    ``(counts, degree, L, probes, moments, stop_reason)``."""
    while True:
        batches = []  # per batch: the probes' last two Chebyshev vectors, moments
        key, bkey = jax.random.split(key)
        batches.append(moments.start(bkey, num_probes, lsq))
        deg = min(target_deg, max_degree)
        blown = False
        while True:
            for b in batches:
                moments.extend(b, deg, lsq)
            mom = np.concatenate([b["mom"][:, : deg + 1] for b in batches], 0)
            if _moments_blew_up(mom):
                blown = True
                break
            counts = to_counts(mom, lsq)
            probes = sum(b["n"] for b in batches)
            log.info(
                "kpm_counts: degree %d, %d probes, %d of %d products, %.0f s; %s",
                deg,
                probes,
                deflation_products + moments.products,
                max_products,
                time.perf_counter() - t_start,
                ", ".join(
                    f"t={t:g}: {'resolved' if c.resolved else 'bracket'} "
                    f"[{c.low:.0f}, {c.high:.0f}]"
                    for t, c in counts.items()
                ),
            )
            if all(c.resolved for c in counts.values()):
                stop_reason = "resolved"
                break
            move = _next_move(
                counts,
                deg=deg,
                num_probes=probes,
                products=deflation_products + moments.products,
                max_products=max_products,
                max_degree=max_degree,
                elapsed=time.perf_counter() - t_start,
                max_seconds=max_seconds,
                seconds_per_product=moments.seconds / max(moments.products, 1),
                products_needed=None
                if jconst is None
                else functools.partial(
                    products_to_resolve,
                    degree=deg,
                    num_probes=probes,
                    sigma_max=math.sqrt(lsq),
                    rel_width=rel_width,
                    jconst=jconst,
                    deflation_products=deflation_products,
                ),
            )
            if move == "probes":
                # Double the probes, in batches of the first batch's size (one compile).
                for _ in range(len(batches)):
                    key, bkey = jax.random.split(key)
                    batches.append(moments.start(bkey, num_probes, lsq))
            elif move == "degree":
                deg = 2 * deg
            else:
                stop_reason = move
                break
        if not blown:
            return counts, deg, lsq, sum(b["n"] for b in batches), mom, stop_reason
        # The spectrum left [-1, 1]: the bound L was too small.
        lsq *= 2.0
        if deflation_products + moments.products > max_products:
            raise FloatingPointError(
                "kpm_counts: the deflated spectrum exceeds the estimated bound and the "
                "product budget is spent"
            )
