"""Truncated-normal max-ent set: each class's Gaussian restricted to the pixel box [0, 1]^d.

Per class k the law is ``N(mu_k, Sigma_k)`` conditioned on ``x in [0, 1]^d``: the
maximum-entropy density on the box among those of the form ``exp(-b'x - x'Ax)`` whose
*untruncated* moments are the class's. Truncation moves the moments: the set does NOT have
the class mean and covariance (a pixel that is 0 in most images of a class has a Gaussian
half below 0; truncated, its mean rises). Its report therefore holds the achieved errors
against the class moments as every max-ent set does, and its ``checks`` hold the mean and
covariance against the noise floor (expected to miss on real images) plus the convergence
of the sampler; the set's ``met`` / ``target_met`` is 1 only if all of them were reached.

The authors' code (EleutherAI/features-across-time, ``scripts/script_utils/
truncated_normal.py``) has a function of this name, but it optimises sigmoid-reparametrised
particles to match the untruncated mean and covariance with a nearest-neighbour entropy
bonus (the method of dsb's ``box2``); the truncated Gaussian itself is sampled here.

Sampler: Gibbs sampling on the precision matrix, every sample its own chain, all chains of
all classes updated together. With ``P = Sigma^-1`` the conditional of coordinate j given
the others is ``N(x_j - r_j / P_jj, 1 / P_jj)`` truncated to [0, 1], where
``r = P (x - mu)``; a sweep visits j = 1..d in order, drawing from the 1-D truncated normal
by the inverse CDF (``truncated_normal_1d``: mirrored to the lower tail, an exponential
tail law beyond 30 sd), and keeps ``r`` current with rank-one updates inside a block of
coordinates and one matrix product per block (cost per sweep ~ 2 n d^2 flops plus n d
special functions, in float64 numpy: a Python loop over the d coordinates, vectorised over
all n chains; a JAX ``fori_loop`` version was slower on CPU, its ``ndtr`` / ``ndtri`` cost
~20x scipy's per element).

Rank-deficient covariances (real MNIST has pixels that are 0 in every image of a class):
coordinates whose class variance is at most ``VAR_TOL`` x the largest are fixed at the class
mean (their exact value in the data); on the rest (the class's *support*) the sampler uses
``Sigma_S + ridge (tr Sigma_S / |S|) I``, ``ridge`` (default ``RIDGE``) relative to the mean
variance on the support. The ridge keeps the Gaussian proper and bounds the Gibbs chain's
condition number (its mixing time grows with it); it is recorded in the report.

Convergence: half of each class's chains start at a draw of the untruncated Gaussian
projected onto the box, half at the class mean (under-dispersed, so slow mixing shows as a
covariance that is too small). After ``sweeps`` sweeps (all of them burn-in; the set is the
final state of the chains, one sample per chain, so samples are independent) the two halves
are compared, and so is the whole ensemble after ``sweeps // 2`` sweeps against the end
(a drift that both starts share, e.g. mass still moving away from the box walls):
``checks["converged_{halves,drift}_{mean,cov,top_variance}"]`` hold the relative
differences of the mean, the covariance and the variances along the class's top
``TOP_DIRECTIONS`` eigenvectors (where Gibbs mixes slowest) against ``CONVERGENCE_FACTOR``
(halves) or ``DRIFT_FACTOR`` (drift) x their Monte Carlo noise (two independent samples of
the same law), and the report's ``extra`` records sweeps, ridge, support sizes and these
diagnostics. They have little power where the noise is large (few chains per class): they
catch chains that have not spread or still move, not a drift below the noise.

Measured (one BLAS thread, a 2-core machine shared with other jobs, load ~10): on UCI
digits (d = 64, 2000 samples) the moment errors after 20 and 200 sweeps agree within noise
(mean 0.18 / 0.18, covariance 0.74 / 0.74 against the class's; the untruncated Gaussian's
are 0.035 / 0.23; 200 sweeps took 5 s). On MNIST (d = 784, supports of 551-611 pixels per
class, 2000 samples) a sweep took 0.5 s at load ~5 (2.5 s at load ~10) after ~25 s of
set-up and report, and the mean error against the class means was 0.35 / 0.43 / 0.50 /
0.55 / 0.56 after 10 / 20 / 40 / 80 / 320 sweeps; a run in chunks of 40 sweeps was flat
(0.56-0.57) from 120 sweeps on, so the default ``SWEEPS`` = 200 is past the burn-in there.
The convergence checks passed at 80 sweeps, where the mean still moved a little (drift of
the mean 0.0625 against a tolerance of 0.064): at d = 784 they catch gross failures only.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.special import ndtr, ndtri

from dsb.stats.maxent import SampledSet, _report, draw_labels, psd_factor
from dsb.stats.moments import ClassStats
from dsb.stats.probesets import register_maxent_set
from dsb.stats.report import target_check

__all__ = [
    "CONVERGENCE_FACTOR",
    "DRIFT_FACTOR",
    "RIDGE",
    "SWEEPS",
    "TOP_DIRECTIONS",
    "VAR_TOL",
    "class_precisions",
    "gibbs_truncated_normal",
    "sample_truncnorm",
    "truncated_normal_1d",
]

VAR_TOL = 1e-10
"""Coordinates with class variance <= this x the class's largest are fixed at the mean."""

RIDGE = 1e-2
"""Default ridge on the support, relative to the mean variance there."""

SWEEPS = 200
"""Default Gibbs sweeps."""

CONVERGENCE_FACTOR = 3.0
"""The two halves of the chains agree when their moment difference is at most this times its
Monte Carlo noise (the relative norms concentrate near 1 in high dimension; 3 leaves room
for the fluctuation of a norm over few coordinates)."""

TOP_DIRECTIONS = 8
"""The convergence check compares the chains' variances along this many top eigenvectors
of each class covariance."""

DRIFT_FACTOR = 1.5
"""The ensemble has stopped drifting when its middle-to-last difference is at most this
times the noise of two independent ensembles. The two states are positively correlated, so
in equilibrium their difference is below that noise; a tolerance of 3 passed MNIST chains
whose mean error still rose from 0.43 to 0.55 between 20 and 80 sweeps."""

_BLOCK = 32

_TAIL = -30.0
"""Below this upper bound (after mirroring to the lower tail) a draw uses the exponential
tail law (``truncated_normal_1d``)."""


def truncated_normal_1d(m: np.ndarray, s: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Draws of ``N(m, s^2)`` truncated to [0, 1], elementwise, float64; ``u`` uniform.

    An interval in the upper tail is mirrored to the lower tail (``Phi`` keeps full
    relative precision there), then the inverse CDF ``ndtri(Phi(lo) + u (Phi(hi) -
    Phi(lo)))`` in standard units. Where the whole interval lies beyond ``_TAIL`` = -30
    standard deviations (``Phi`` is ~1e-197 and soon underflows), the standardised draw is
    ``hi + log(1 - (1 - u) (1 - e^{-|hi| (hi - lo)})) / |hi|``: the exponential law that is the
    leading term of the Mills-ratio expansion of the normal tail (quantiles off by
    O(1 / hi^2): 0.2% at hi = -40 against scipy's ``truncnorm.ppf``, on a spread of ~1/40
    sd). ``s = 0`` gives ``clip(m, 0, 1)``.
    """
    m, s, u = (np.asarray(v, np.float64) for v in (m, s, u))
    pos = s > 0
    ss = np.where(pos, s, 1.0)
    a = -m / ss
    b = a + 1.0 / ss
    flip = a > 0
    lo = np.where(flip, -b, a)
    hi = np.where(flip, -a, b)
    pa, pb = ndtr(lo), ndtr(hi)
    z = ndtri(np.clip(pa + u * (pb - pa), 1e-300, 1.0))
    tail = hi < _TAIL
    if tail.any():
        rate = -hi[tail]
        # Quantile u of the tail law (1 - u measured from the wall hi), as in the body.
        e = np.log1p((1.0 - u[tail]) * np.expm1(-rate * (hi[tail] - lo[tail])))
        z[tail] = hi[tail] + e / rate
    z = np.clip(z, lo, hi)
    z = np.where(flip, -z, z)
    return np.clip(np.where(pos, m + ss * z, m), 0.0, 1.0)


def class_precisions(stats: ClassStats, ridge: float = RIDGE):
    """Per class: the precision ``P [K, d, d]`` of the ridged covariance on the support,
    the identity on fixed coordinates; the conditional sd ``[K, d]`` (0 on fixed ones);
    the ridged support covariances' factors ``L [K, d, d]`` (for the Gaussian starts);
    the support sizes ``[K]``; their top ``TOP_DIRECTIONS`` eigenvectors ``[K, d, Q]``
    (largest variance first, zero columns where the support is smaller)."""
    k_all, d = stats.num_classes, stats.dim
    prec = np.zeros((k_all, d, d))
    fac = np.zeros((k_all, d, d))
    sd = np.zeros((k_all, d))
    support = np.zeros(k_all, np.int64)
    top = np.zeros((k_all, d, TOP_DIRECTIONS))
    for k in range(k_all):
        cov = stats.covariance(k)
        var = np.diag(cov)
        s = np.flatnonzero(var > VAR_TOL * max(var.max(), 1e-300))
        support[k] = len(s)
        prec[k][np.diag_indices(d)] = 1.0
        if len(s) == 0:
            continue
        cs = cov[np.ix_(s, s)].copy()
        cs[np.diag_indices(len(s))] += ridge * np.trace(cs) / len(s)
        lam, u = np.linalg.eigh(cs)
        lam = np.maximum(lam, 1e-300)
        prec[k][np.ix_(s, s)] = (u / lam) @ u.T
        fac[k][np.ix_(s, s)] = psd_factor(cs)
        sd[k, s] = 1.0 / np.sqrt(np.diag(prec[k])[s])
        q = min(TOP_DIRECTIONS, len(s))
        top[k][s, :q] = u[:, ::-1][:, :q]
    return prec, sd, fac, support, top


def gibbs_truncated_normal(
    mean_KxD: np.ndarray,
    prec_KxDxD: np.ndarray,
    sd_KxD: np.ndarray,
    x0_KxMxD: np.ndarray,
    sweeps: int,
    rng: np.random.Generator,
    block: int = _BLOCK,
    midpoint: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """``sweeps`` Gibbs sweeps of ``K x M`` chains of ``N(mu_k, P_k^-1)`` on [0, 1]^d.

    ``x0 [K, M, d]`` (inside the box) is the start, ``sd_KxD = 1 / sqrt(diag P)`` the
    conditional sds (0 fixes a coordinate at its mean). Coordinates that are fixed in every
    class are skipped. Returns the final state ``[K, M, d]``, float64, and with
    ``midpoint`` also the state after ``sweeps // 2`` sweeps.

    Layout: coordinate-major (``[d, K, M]``) so that one coordinate of every chain is
    contiguous; ``r = P (x - mu)`` is recomputed at the start of each sweep (no drift of
    the rank-one updates) and updated by one ``[B, d]`` product per block of B coordinates.
    """
    k_all, m_all, _ = x0_KxMxD.shape
    x = np.ascontiguousarray(np.transpose(x0_KxMxD, (2, 0, 1)), np.float64)  # [d, K, M]
    mu = np.ascontiguousarray(mean_KxD.T)[:, :, None]  # [d, K, 1]
    prec_KxDxD = np.asarray(prec_KxDxD, np.float64)
    pjj = np.ascontiguousarray(np.diagonal(prec_KxDxD, axis1=1, axis2=2).T)[:, :, None]
    sd = np.ascontiguousarray(sd_KxD.T)[:, :, None]  # [d, K, 1]
    free = np.flatnonzero((sd_KxD > 0).any(axis=0))
    x_mid = x.copy() if sweeps // 2 == 0 else None
    for t in range(sweeps):
        # r[j, k, m] = sum_i P_k[j, i] (x - mu)[i, k, m]
        r = np.einsum("kji,ikm->jkm", prec_KxDxD, x - mu, optimize=True)
        for b0 in range(0, len(free), block):
            js = free[b0 : b0 + block]
            x_old = x[js].copy()
            r_blk = r[js]  # [B, K, M] (a copy: fancy index)
            p_blk = prec_KxDxD[:, js][:, :, js]  # [K, B, B]
            u = rng.random((len(js), k_all, m_all))
            for i, j in enumerate(js):
                cm = x[j] - r_blk[i] / pjj[j]
                new = truncated_normal_1d(cm, np.broadcast_to(sd[j], cm.shape), u[i])
                delta = new - x[j]
                x[j] = new
                r_blk += p_blk[:, i, :].T[:, :, None] * delta[None]
            r += np.einsum("kbj,bkm->jkm", prec_KxDxD[:, js, :], x[js] - x_old, optimize=True)
        if t + 1 == sweeps // 2:
            x_mid = x.copy()
    out = np.ascontiguousarray(np.transpose(x, (1, 2, 0)))
    return (out, np.ascontiguousarray(np.transpose(x_mid, (1, 2, 0)))) if midpoint else out


def _ensemble_diff(pairs, top_KxDxQ) -> dict:
    """Relative differences between two ensembles per class (``pairs``: ``{k: (a, b)}``,
    rows of class k) in mean, covariance and variances along the class's top eigenvectors
    (the directions in which Gibbs mixes slowest; at d = 784 and a few hundred chains per
    class the Frobenius comparison is noise-dominated, this one is not), with the Monte Carlo
    noise of two independent ensembles of those sizes (Gaussian approximation from the
    pooled moments); count-weighted averages over the classes."""
    vals = {n: [] for n in ("mean", "cov", "top_variance")}
    noise = {n: [] for n in vals}
    w = []
    for k, (a, b) in pairs.items():
        if len(a) < 2 or len(b) < 2:
            continue
        xk = np.concatenate([a, b])
        cov = np.atleast_2d(np.cov(xk.T, bias=True))
        inv = 1 / len(a) + 1 / len(b)
        tr, fro2 = np.trace(cov), np.sum(cov * cov)
        mn, cn = max(np.linalg.norm(xk.mean(0)), 1e-300), max(np.sqrt(fro2), 1e-300)
        ca, cb = (np.atleast_2d(np.cov(z.T, bias=True)) for z in (a, b))
        vals["mean"].append(np.linalg.norm(a.mean(0) - b.mean(0)) / mn)
        vals["cov"].append(np.linalg.norm(ca - cb) / cn)
        noise["mean"].append(np.sqrt(tr * inv) / mn)
        noise["cov"].append(np.sqrt((fro2 + tr**2) * inv) / cn)
        v = top_KxDxQ[k][:, np.linalg.norm(top_KxDxQ[k], axis=0) > 0]
        va, vb = np.var(a @ v, axis=0), np.var(b @ v, axis=0)
        vals["top_variance"].append(
            np.linalg.norm(va - vb) / max(np.linalg.norm(va + vb) / 2, 1e-300)
        )
        noise["top_variance"].append(np.sqrt(2 * inv))  # se of a variance: var sqrt(2 / n)
        w.append(len(xk))
    if not w:
        return {}
    w = np.asarray(w, np.float64) / np.sum(w)
    out = {f"{n}_rel_diff": float(np.dot(vals[n], w)) for n in vals}
    return out | {f"{n}_noise": float(np.dot(noise[n], w)) for n in noise}


def _convergence(x_NxD, x_mid_NxD, y_N, half_N, num_classes, top_KxDxQ):
    """``checks`` and ``extra`` entries of the two convergence diagnostics (module doc):
    the two halves of the chains at the end, and the whole ensemble at the middle sweep
    against the end (correlated states, so its noise, that of independent ensembles, makes
    the drift check lenient; a chain that has stopped moving passes it, which is what the
    halves check catches)."""
    halves = _ensemble_diff(
        {k: (x_NxD[(y_N == k) & half_N], x_NxD[(y_N == k) & ~half_N]) for k in range(num_classes)},
        top_KxDxQ,
    )
    drift = _ensemble_diff(
        {k: (x_mid_NxD[y_N == k], x_NxD[y_N == k]) for k in range(num_classes)}, top_KxDxQ
    )
    checks = {}
    for label, diag, factor, why in (
        (
            "halves",
            halves,
            CONVERGENCE_FACTOR,
            "chains started at the projected Gaussian and at the class mean differ",
        ),
        (
            "drift",
            drift,
            DRIFT_FACTOR,
            "the ensemble still moved from the middle to the last sweep",
        ),
    ):
        for n in ("mean", "cov", "top_variance"):
            if f"{n}_rel_diff" in diag:
                checks[f"converged_{label}_{n}"] = target_check(
                    diag[f"{n}_rel_diff"], factor * diag[f"{n}_noise"], why
                )
    extra = {f"halves_{k}": v for k, v in halves.items()}
    extra |= {f"drift_{k}": v for k, v in drift.items()}
    return checks, extra | {"top_directions": TOP_DIRECTIONS}


@register_maxent_set(
    "truncnorm", version=1, options={"gibbs_sweeps": "sweeps", "truncnorm_ridge": "ridge"}
)
def sample_truncnorm(
    stats: ClassStats,
    n: int,
    seed: int = 0,
    sweeps: int = SWEEPS,
    ridge: float = RIDGE,
    *,
    reference_x=None,
    reference_y=None,
) -> SampledSet:
    """Second order on the box: ``N(mu_y, Sigma_y)`` truncated to [0, 1]^d (module doc).

    ``sweeps`` Gibbs sweeps from the two starts described there; ``ridge`` on the class
    support. Checks: mean and covariance against ``FLOOR_FACTOR`` x the noise floor (the
    truncation moves them, so these miss wherever it matters, and say why), and the
    convergence of the chains. ``reference_x/y`` go to ``moment_report``.
    """
    if sweeps < 1:
        raise ValueError(f"sweeps must be >= 1, got {sweeps}")
    if not ridge >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    rng = np.random.default_rng(seed)
    y = draw_labels(stats, n, rng)
    k_all, d = stats.num_classes, stats.dim
    counts = np.bincount(y, minlength=k_all)
    m_all = int(counts.max())
    prec, sd, fac, support, top = class_precisions(stats, ridge)
    mu = stats.mean_KxD
    # Chain i of class k: the first half start at the projected Gaussian, the rest at mu.
    gauss = mu[:, None, :] + np.matmul(
        rng.standard_normal((k_all, m_all, d)), fac.transpose(0, 2, 1)
    )
    first = np.arange(m_all)[None, :] < ((counts + 1) // 2)[:, None]  # [K, M]
    x0 = np.clip(np.where(first[:, :, None], gauss, mu[:, None, :]), 0.0, 1.0)
    xk, xk_mid = gibbs_truncated_normal(mu, prec, sd, x0, sweeps, rng, midpoint=True)
    x, x_mid = np.empty((n, d)), np.empty((n, d))
    half = np.zeros(n, bool)
    for k in range(k_all):
        idx = np.flatnonzero(y == k)
        x[idx], x_mid[idx] = xk[k, : len(idx)], xk_mid[k, : len(idx)]
        half[idx] = first[k, : len(idx)]
    conv, diag = _convergence(x, x_mid, y, half, k_all, top)
    extra = {
        "sweeps": sweeps,
        "burn_in_sweeps": sweeps,
        "samples_per_chain": 1,
        "ridge": ridge,
        "var_tol": VAR_TOL,
        "support_K": [int(s) for s in support],
        "starts": "half projected Gaussian, half class mean",
        "frac_at_box_wall": float(np.mean((x <= 0.0) | (x >= 1.0))),
        "matches_class_moments": "no: truncation moves mean and covariance",
    } | diag
    rep = _report(x, y, stats, ("mean", "cov"), (reference_x, reference_y), extra)
    why = (
        "truncating the Gaussian to [0, 1]^d moves its moments off the class's; "
        "the set is a truncated normal, not a moment match"
    )
    checks = {n_: c | {"why": why} if not c["met"] else c for n_, c in rep.checks.items()}
    rep = dataclasses.replace(rep, checks=checks | conv)
    return SampledSet(x.astype(np.float32), y, rep)
