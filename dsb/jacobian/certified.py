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
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "CountEstimate",
    "KPMCounts",
    "TopSingular",
    "UnconvergedWarning",
    "jackson_coefficients",
    "jackson_delta",
    "kpm_counts",
    "kpm_counts_from_moments",
    "step_filter",
    "top_singular_triplets",
    "triplet_residuals",
]


class UnconvergedWarning(RuntimeWarning):
    """A matrix-free estimate did not reach its stated tolerance within its budget."""


def _work_dtype():
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


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


def triplet_residuals(op, U: np.ndarray, s: np.ndarray, Vt: np.ndarray):
    """``(||A v_i - s_i u_i||, ||A^T u_i - s_i v_i||)`` for ``A = op`` (``op.shift``
    included), by ``2k`` explicit products (vmapped), in float64 on the host."""
    dt = op.dtype

    # The linear map is a jit argument: closed over, its residuals (the activations of
    # the whole run) would be baked into the program as constants.
    @jax.jit
    def products(f_jvp, v_kp, u_kp, shift):
        f_vjp = jax.linear_transpose(f_jvp, v_kp[0])
        av = jax.vmap(lambda v: f_jvp(v) - shift * v)(v_kp)
        atu = jax.vmap(lambda u: f_vjp(u)[0] - shift * u)(u_kp)
        return av, atu

    av, atu = products(op._f_jvp, jnp.asarray(Vt, dt), jnp.asarray(U.T, dt), op.shift)
    av, atu = np.asarray(av, np.float64).T, np.asarray(atu, np.float64).T
    r_left = np.linalg.norm(av - U * s, axis=0)
    r_right = np.linalg.norm(atu - Vt.T * s, axis=0)
    return r_left, r_right


def _golub_kahan(op, m: int, v0):
    from matfree import decomp

    work = _work_dtype()
    bidiag = decomp.bidiag(m, materialize=True, reortho="full")

    @jax.jit
    def run(f_jvp, v0):
        def av(v):
            v = v.astype(op.dtype)
            return (f_jvp(v) - op.shift * v).astype(work)

        (u_mk, v_mk), b_mm, *_ = bidiag(av, v0)
        return u_mk, b_mm, v_mk

    u_mk, b_mm, v_mk = run(op._f_jvp, v0)
    pu, s, pvt = np.linalg.svd(np.asarray(b_mm, np.float64))
    u = np.asarray(u_mk, np.float64).T @ pu
    vt = pvt @ np.asarray(v_mk, np.float64)
    return u, s, vt


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
    v0 = jax.random.normal(key, (p,), _work_dtype())
    m = min(max(num_krylov or max(2 * k + 10, 40), k), p)
    t0 = time.perf_counter()
    products = 0
    while True:
        u, s, vt = _golub_kahan(op, m, v0)
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
class CountEstimate:
    """A count of singular values below ``threshold`` with its certificate.

    ``estimate`` is ``NaN`` unless ``resolved``; ``low``/``high`` always bound the count
    (systematic part rigorous, Hutchinson part ``z_score`` standard errors); ``resolution``
    is the smallest threshold the method's degree could bracket at all; ``stderr`` the
    estimate's standard error over probes and ``stat_width`` the part of the bracket's
    width that is statistical (the rest is the filters' resolution).
    """

    threshold: float
    estimate: float
    low: float
    high: float
    resolved: bool
    resolution: float
    stderr: float = float("nan")
    stat_width: float = float("nan")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class KPMCounts:
    """Result of ``kpm_counts``: ``counts`` per threshold, and what was spent.

    ``degree`` of the Chebyshev expansion, ``num_probes`` Hutchinson probes, ``sigma_max``
    the bound ``sqrt(L)`` on the deflated operator's largest singular value, ``deflated``
    the number of top directions projected out (counted exactly), ``products`` Jacobian
    products in all (deflation included), ``stop_reason``.
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

    @property
    def all_resolved(self) -> bool:
        return all(c.resolved for c in self.counts.values())

    @property
    def resolution(self) -> float:
        return float(next(iter(self.counts.values())).resolution) if self.counts else np.nan


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
) -> dict[float, CountEstimate]:
    """Counts, brackets and resolution from per-probe Chebyshev moments ``[probes, N + 1]``
    (``moments[i, j] = z_i^T T_j(B) z_i``; exact traces for a single row when the moments
    are exact). ``eps`` (default ``1e-3``; it adds ``eps P`` to the bracket) is the
    filters' allowed leakage; a count is resolved when its bracket is at most
    ``max(rel_width * estimate, abs_width)`` wide.
    ``extra_below[t]`` adds deflated singular values below ``t`` (known exactly)."""
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
        phi_t = 2 * np.arcsin(min(t / sigma_max, 1.0))
        per_probe = {}
        for name, phi_c in (("lo", phi_t - delta), ("mid", phi_t), ("hi", phi_t + delta)):
            per_probe[name] = mom @ step_filter(n, phi_c)
        mean = {k: float(v.mean()) for k, v in per_probe.items()}
        se = {
            k: float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
            for k, v in per_probe.items()
        }
        extra = (extra_below or {}).get(t, 0)
        low = mean["lo"] - z_score * se["lo"] - eps * num_params if phi_t > delta else 0.0
        high = (mean["hi"] + z_score * se["hi"]) / (1 - eps)
        low = float(np.clip(low, 0.0, num_params)) + extra
        high = float(np.clip(high, 0.0, num_params)) + extra
        est = float(np.clip(mean["mid"] + extra, low, high))
        resolved = bool(phi_t > delta and high - low <= max(rel_width * est, abs_width))
        out[t] = CountEstimate(
            threshold=t,
            estimate=est if resolved else float("nan"),
            low=low,
            high=high,
            resolved=resolved,
            resolution=resolution,
            stderr=se["mid"],
            stat_width=z_score * (se["lo"] + se["hi"]),
        )
    return out


def _project_out(vt_kp):
    """``v -> v - V (V^T v)`` with ``V = vt_kp^T`` (or the identity for no rows)."""
    if vt_kp is None or vt_kp.shape[0] == 0:
        return lambda v: v
    return lambda v: v - vt_kp.T @ (vt_kp @ v)


def kpm_counts(
    op,
    thresholds: Sequence[float],
    *,
    deflate: int = 20,
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
) -> KPMCounts:
    """Counts of singular values of ``A = op`` (``op.shift`` applied: ``shift=1`` for
    ``D = J - I``) below each threshold, with brackets (see the module docstring).

    1. Deflation: the top ``deflate`` singular triplets (``top_singular_triplets`` at
       ``rtol=1e-3``, or ``top`` if given); those below a threshold are counted exactly,
       the rest are projected out. ``L = (sigma_margin * (s_k + r_k))^2`` bounds the
       deflated spectrum (the next Ritz value plus its residual, with a margin); a probe
       whose moments leave ``[-|z|^2, |z|^2]`` shows the bound was too small, and the run
       restarts with ``L`` doubled.
    2. Chebyshev moments of ``B = 2 A_k^T A_k / L - I`` on ``num_probes`` Rademacher
       probes (projected), two moments per product with ``A_k^T A_k`` (doubling). The
       starting degree (``degree``; default: twice the Jackson width over the largest
       threshold's angle, ``N ~ 17 sigma_max / t`` at ``eps = 1e-3``, capped by the
       budget) doubles while some count is
       unresolved and its bracket is mostly systematic; when mostly statistical, the probes
       double. Stops at ``max_degree``, ``max_products`` (default ``10 P``) or
       ``max_seconds``, and reports what was reached (``stop_reason``); unresolved counts
       have ``estimate = NaN``.
    """
    p = op.num_params
    thresholds = tuple(sorted(float(t) for t in thresholds))
    if not thresholds or thresholds[0] <= 0:
        raise ValueError(f"kpm_counts: thresholds must be positive, got {thresholds}")
    if num_probes < 2:
        raise ValueError(f"kpm_counts: num_probes must be >= 2, got {num_probes}")
    if not 0 <= deflate < p:
        raise ValueError(f"kpm_counts: deflate must be in [0, P={p}), got {deflate}")
    max_products = 10 * p if max_products is None else int(max_products)
    eps = 1e-3 if eps is None else float(eps)
    key = jax.random.key(0) if key is None else key
    work = _work_dtype()
    t_start = time.perf_counter()
    products = 0

    # 1. Deflation and the spectral bound.
    if top is None:
        top = top_singular_triplets(
            op, deflate + 1, rtol=1e-3, max_products=max_products // 2, key=key, warn=warn
        )
    products += top.products
    k = min(deflate, len(top.s) - 1)
    s_next = float(top.s[k] + max(top.residual_left[k], top.residual_right[k]))
    lsq = (sigma_margin * s_next) ** 2
    defl_s = top.s[:k]
    extra = {t: int((defl_s < t).sum()) for t in thresholds}
    vt = jnp.asarray(top.Vt[:k], work) if k else None
    proj = _project_out(vt)

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
        one product with ``A_k^T A_k``, batched over probes. Returns the new pair and the
        two moments per step."""
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

    def new_probes(key, n):
        r = jax.random.rademacher(key, (n, p), work)
        return jax.vmap(proj)(r)

    jconst = jackson_delta(256, eps) * 256  # delta ~ jconst / N
    # Start at the degree that brackets the largest threshold (the cheapest), within the
    # budget; the loop doubles it while smaller thresholds stay unresolved.
    phi_max = 2 * np.arcsin(min(thresholds[-1] / math.sqrt(lsq), 1.0))
    affordable = max(16, (max_products - products) // (2 * num_probes))
    target_deg = degree or min(int(np.ceil(2.0 * jconst / max(phi_max, 1e-12))), affordable)
    max_degree = max_degree or 10**7
    stop_reason = "resolved"

    def start_batch(bkey, n, lsq):
        nonlocal products
        z = new_probes(bkey, n)
        t1 = first(op._f_jvp, lsq, z)
        products += 2 * n
        mu0 = jnp.sum(z * z, axis=1)
        mu1 = jnp.sum(z * t1, axis=1)
        mu2 = 2.0 * jnp.sum(t1 * t1, axis=1) - mu0
        mom = np.stack([np.asarray(mu0), np.asarray(mu1), np.asarray(mu2)], axis=1)
        return {"tp": z, "tc": t1, "mu0": mu0, "mu1": mu1, "mom": mom, "n": n}

    def extend(b, deg, lsq):
        nonlocal products
        while b["mom"].shape[1] - 1 < deg:
            have = b["mom"].shape[1] - 1  # moments 0..have, have = 2 * (steps + 1)
            steps = max(1, min(chunk, (deg - have + 1) // 2))
            tp, tc, mo = advance(op._f_jvp, lsq, b["tp"], b["tc"], b["mu0"], b["mu1"], steps)
            products += 2 * b["n"] * steps
            b["tp"], b["tc"] = tp, tc
            b["mom"] = np.concatenate([b["mom"], np.asarray(mo, np.float64)[:, : 2 * steps]], 1)

    while True:
        batches = []  # per batch: the probes' last two Chebyshev vectors, moments
        key, bkey = jax.random.split(key)
        batches.append(start_batch(bkey, num_probes, lsq))
        deg = min(target_deg, max_degree)
        blown = False
        while True:
            for b in batches:
                extend(b, deg, lsq)
            mom = np.concatenate([b["mom"][:, : deg + 1] for b in batches], 0)
            if not np.isfinite(mom).all() or (np.abs(mom) > mom[:, :1] * (1 + 1e-6) + 1e-9).any():
                blown = True
                break
            counts = kpm_counts_from_moments(
                mom,
                math.sqrt(lsq),
                thresholds,
                num_params=p,
                eps=eps,
                z_score=z_score,
                rel_width=rel_width,
                extra_below=extra,
            )
            if all(c.resolved for c in counts.values()):
                stop_reason = "resolved"
                break
            # What limits the worst unresolved count: resolution (degree) or probes.
            worst = [c for c in counts.values() if not c.resolved]
            n_all = sum(b["n"] for b in batches)
            sub_resolution = any(c.threshold <= c.resolution for c in worst)
            stat = max(c.stat_width for c in worst)
            systematic = max(c.high - c.low - c.stat_width for c in worst)
            more_probes = not sub_resolution and stat > systematic
            cost = (deg + 1) * n_all  # either move: about deg products per probe
            elapsed = time.perf_counter() - t_start
            if more_probes and products + cost > max_products:
                stop_reason = "max_products"
                break
            if not more_probes and (2 * deg > max_degree):
                stop_reason = "max_degree"
                break
            if not more_probes and products + cost > max_products:
                stop_reason = "max_products"
                break
            if max_seconds is not None and elapsed * 2.2 > max_seconds:
                stop_reason = "max_seconds"
                break
            if more_probes:
                # Double the probes, in batches of the first batch's size (one compile).
                for _ in range(len(batches)):
                    key, bkey = jax.random.split(key)
                    batches.append(start_batch(bkey, num_probes, lsq))
            else:
                deg = 2 * deg
        if not blown:
            break
        # The spectrum left [-1, 1]: the bound L was too small.
        lsq *= 4.0
        if products > max_products:
            raise FloatingPointError(
                "kpm_counts: the deflated spectrum exceeds the estimated bound and the "
                "product budget is spent"
            )

    seconds = time.perf_counter() - t_start
    res = KPMCounts(
        counts=counts,
        degree=deg,
        num_probes=sum(b["n"] for b in batches),
        sigma_max=math.sqrt(lsq),
        deflated=k,
        products=products,
        seconds=seconds,
        stop_reason=stop_reason,
        top=top,
        moments=mom,
    )
    if warn and not res.all_resolved:
        bad = [f"{c.threshold:g}" for c in counts.values() if not c.resolved]
        warnings.warn(
            f"kpm_counts: counts below {', '.join(bad)} unresolved (reported as NaN with "
            f"their brackets) at degree {deg}, {res.num_probes} probes, {products} products; "
            f"resolution {res.resolution:.3g}; stopped: {stop_reason}",
            UnconvergedWarning,
            stacklevel=2,
        )
    return res
