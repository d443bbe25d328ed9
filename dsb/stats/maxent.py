"""Maximum-entropy evaluation sets: samples that match only low-order class statistics.

Every sampler draws labels ``y ~ Cat(pi)`` (label = generating class), returns flat
``[n, d]`` float32 samples (callers reshape to NHWC) and a ``MomentReport`` of the achieved
moment errors against the fitted targets. Randomness comes from an integer ``seed`` only,
so a fixed seed gives identical arrays.

Samplers, registered as probe-set kinds under the names used in configs
(``dsb.stats.probesets.MAXENT_SETS``, also ``SAMPLERS`` here):
  ics       first order, independent coordinates: inverse CDF of each class marginal.
  box1      first order, box max-ent (Conrad): product of truncated exponentials.
  gaussian  second order: N(mu_y, Sigma_y); ``clip`` to [0, 1] is an option, reported.
  box2      second order on the box: particle method (see ``particle_maxent``).
  box3      third order on the box: particle method that also matches co-skewness along
            thousands of random projections, a minibatch per step; the last
            ``HELDOUT_PROJECTIONS`` are never fitted and give the reported error.

Each report holds a noise floor (``MomentReport.noise_floor``: the errors an independent
real-data sample of the same size would have) and ``checks``: every moment the sampler
claims (ics / box1: marginal means; gaussian, box2: mean and covariance; box3: and
co-skewness) within ``FLOOR_FACTOR`` x that floor. Samplers take optional
``reference_x/reference_y`` (the data the statistics came from) for a bootstrap floor and
fresh held-out projections; without them the floor is a Gaussian approximation.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dsb.stats.moments import ClassStats, marginal_quantile
from dsb.stats.probesets import MAXENT_SETS, register_maxent_set
from dsb.stats.report import HELDOUT_PROJECTIONS, MomentReport, floor_checks, moment_report
from dsb.timing import ProgressLog

__all__ = [
    "SAMPLERS",
    "SampledSet",
    "conrad_mean",
    "conrad_rate",
    "conrad_sample",
    "draw_labels",
    "particle_maxent",
    "psd_factor",
    "sample_box1",
    "sample_box2",
    "sample_box3",
    "sample_gaussian",
    "sample_ics",
]


@dataclasses.dataclass(frozen=True)
class SampledSet:
    """``x_NxD`` float32 samples, ``y_N`` int32 labels, their ``MomentReport``."""

    x_NxD: np.ndarray
    y_N: np.ndarray
    report: MomentReport


def draw_labels(stats: ClassStats, n: int, rng: np.random.Generator) -> np.ndarray:
    """``[n]`` int32 labels drawn i.i.d. from the class priors."""
    return rng.choice(stats.num_classes, size=n, p=stats.priors_K).astype(np.int32)


def _report(x, y, stats, claims, ref, extra=None, skew_cols=None) -> MomentReport:
    """The sampler's ``MomentReport`` with ``checks`` = ``floor_checks`` of its claims."""
    rx, ry = ref
    rep = moment_report(
        x, y, stats, skew_cols=skew_cols, extra=extra, reference_x=rx, reference_y=ry
    )
    return dataclasses.replace(rep, checks=floor_checks(rep, claims))


# ----------------------------------------------------------------------------- ICS


@register_maxent_set("ics")
def sample_ics(
    stats: ClassStats, n: int, seed: int = 0, *, reference_x=None, reference_y=None
) -> SampledSet:
    """Independent coordinates: x_j = Q_{y,j}(u_j), each 1-D marginal exact.

    Claims the marginals; ``checks`` holds their first moment (``mean``, within
    ``FLOOR_FACTOR`` x the noise floor). ``reference_x/y`` go to ``moment_report``.
    """
    rng = np.random.default_rng(seed)
    y = draw_labels(stats, n, rng)
    x = np.empty((n, stats.dim))
    u = rng.random((n, stats.dim))
    for k in range(stats.num_classes):
        m = y == k
        x[m] = marginal_quantile(stats, k, u[m])
    rep = _report(x, y, stats, ("mean",), (reference_x, reference_y))
    return SampledSet(x.astype(np.float32), y, rep)


# ----------------------------------------------------------------------------- box1

_SERIES_B = 1e-2  # below |b| the series beats the cancelling closed form


def conrad_mean(b: np.ndarray) -> np.ndarray:
    """Mean of the truncated exponential ``b e^{-bx} / (1 - e^{-b})`` on [0, 1].

    ``mu(b) = 1/b - 1/(e^b - 1)``, decreasing from 1 (b -> -inf) through 1/2 (b = 0) to 0.
    Near 0 the series ``1/2 - b/12 + b^3/720 - b^5/30240`` (error < 1e-18 for |b| < 1e-2).
    """
    b = np.asarray(b, np.float64)
    ab = np.abs(b)
    safe = np.where(ab < _SERIES_B, 1.0, ab)
    # For b > 0: 1/b - 1/expm1(b); use the symmetry mu(-b) = 1 - mu(b) for b < 0.
    with np.errstate(over="ignore"):
        pos = 1.0 / safe - 1.0 / np.expm1(safe)
    sb = np.minimum(ab, _SERIES_B)
    series = 0.5 - sb / 12 + sb**3 / 720 - sb**5 / 30240
    m = np.where(ab < _SERIES_B, series, pos)
    return np.where(b >= 0, m, 1.0 - m)


def conrad_rate(mu: np.ndarray, iters: int = 200) -> np.ndarray:
    """Solve ``conrad_mean(b) = mu`` for every entry of ``mu`` in (0, 1), float64.

    Vectorised bisection on b > 0 for ``m = min(mu, 1 - mu)`` (then ``b -> -b`` above 1/2):
    ``mu(b) < 1/b`` brackets the root in ``[0, 1/m]``, and 200 halvings reach the float64
    floor for any m >= 1e-300. mu = 1/2 gives b = 0 exactly. ``mu`` at or beyond the bounds
    returns +-inf (a point mass, which ``conrad_sample`` handles).
    """
    mu = np.asarray(mu, np.float64)
    m = np.minimum(mu, 1.0 - mu)
    mm = np.clip(m, 1e-300, 0.5)
    lo = np.zeros_like(mm)
    hi = 1.0 / mm
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        too_big = conrad_mean(mid) < mm  # mean decreasing in b: root lies below mid
        hi = np.where(too_big, mid, hi)
        lo = np.where(too_big, lo, mid)
    b = 0.5 * (lo + hi)
    b = np.where(m == 0.5, 0.0, b)
    b = np.where(m <= 0, np.inf, b)
    return np.where(mu > 0.5, -b, b)


def conrad_sample(b: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse CDF ``x = -log(1 - u (1 - e^{-b})) / b`` (u uniform), stable for every b.

    Negative b uses ``x(b, u) = 1 - x(-b, 1 - u)``; |b| < 1e-12 gives ``x = u``; b = +-inf
    gives the point masses 0 and 1.
    """
    b = np.asarray(b, np.float64)
    u = np.asarray(u, np.float64)
    ab = np.abs(b)
    uu = np.where(b >= 0, u, 1.0 - u)
    small = ab < 1e-12
    safe = np.where(small | ~np.isfinite(ab), 1.0, ab)
    xp = -np.log1p(uu * np.expm1(-safe)) / safe
    xp = np.where(small, uu, xp)
    xp = np.where(np.isinf(ab), 0.0, xp)
    xp = np.clip(xp, 0.0, 1.0)
    return np.where(b >= 0, xp, 1.0 - xp)


@register_maxent_set("box1")
def sample_box1(
    stats: ClassStats, n: int, seed: int = 0, *, reference_x=None, reference_y=None
) -> SampledSet:
    """First-order box max-ent: per class a product of truncated exponentials.

    Claims the marginal means (``checks["mean"]`` within ``FLOOR_FACTOR`` x the floor).
    """
    rng = np.random.default_rng(seed)
    y = draw_labels(stats, n, rng)
    rates_KxD = conrad_rate(stats.mean_KxD)
    u = rng.random((n, stats.dim))
    x = conrad_sample(rates_KxD[y], u)
    rep = _report(x, y, stats, ("mean",), (reference_x, reference_y))
    return SampledSet(x.astype(np.float32), y, rep)


# ----------------------------------------------------------------------------- gaussian


def psd_factor(cov_DxD: np.ndarray) -> np.ndarray:
    """``L [d, d]`` with ``L L' = cov`` for a PSD (possibly singular) matrix, via eigh."""
    lam, u = np.linalg.eigh(cov_DxD)
    return u * np.sqrt(np.clip(lam, 0.0, None))


@register_maxent_set("gaussian", options={"clip": "clip"})
def sample_gaussian(
    stats: ClassStats,
    n: int,
    seed: int = 0,
    clip: bool = False,
    *,
    reference_x=None,
    reference_y=None,
) -> SampledSet:
    """Second order: x ~ N(mu_y, Sigma_y); ``clip`` clamps to [0, 1] (recorded in report).

    Claims mean and covariance (``checks`` within ``FLOOR_FACTOR`` x the noise floor; an
    exact Gaussian sample sits at the Gaussian floor, clipping can push it past).
    """
    rng = np.random.default_rng(seed)
    y = draw_labels(stats, n, rng)
    z = rng.standard_normal((n, stats.dim))
    x = np.empty((n, stats.dim))
    for k in range(stats.num_classes):
        m = y == k
        if m.any():
            x[m] = stats.mean_KxD[k] + z[m] @ psd_factor(stats.covariance(k)).T
    outside = float(np.mean((x < 0) | (x > 1)))
    if clip:
        x = np.clip(x, 0.0, 1.0)
    extra = {"clip": clip, "frac_outside_box": outside}
    rep = _report(x, y, stats, ("mean", "cov"), (reference_x, reference_y), extra)
    return SampledSet(x.astype(np.float32), y, rep)


# ----------------------------------------------------------------------------- particles


ENTROPY_WEIGHT = 1e-2 / 64
_HI = jax.lax.Precision.HIGHEST  # full float32 matmuls on GPUs too (no TF32 rounding)


def _scales(mean_D, cov_DxD, skew_R):
    # Mean errors in units of the spread (tr Sigma), not of |mu|: a shift is judged
    # against the noise it hides in, which weights the mean as much as the covariance.
    return (
        jnp.trace(cov_DxD) + 1e-12,
        jnp.sum(cov_DxD**2) + 1e-12,
        jnp.sum(skew_R**2) + 1e-12,
    )


def _nn_entropy(x_NxD):
    """Kozachenko-Leonenko entropy of the rows of ``x`` up to an additive constant.

    ``H = d * mean_i log rho_i + log(n - 1) + log V_d + gamma``, with ``rho_i`` the distance
    of row i to its nearest neighbour and ``V_d`` the unit-ball volume; the constants do
    not depend on the points and are dropped. The ``d`` factor matters: scaling all points
    by c changes H by ``d log c``, which is what makes it an entropy (a test checks it).
    """
    n, d = x_NxD.shape
    sq = jnp.sum(x_NxD**2, 1)
    d2 = sq[:, None] + sq[None, :] - 2 * jnp.matmul(x_NxD, x_NxD.T, precision=_HI)
    d2 += jnp.diag(jnp.full(n, jnp.inf))
    return 0.5 * d * jnp.mean(jnp.log(jnp.maximum(jnp.min(d2, axis=1), 0.0) + 1e-10))


def _particle_loss(z_NxD, mean_D, cov_DxD, proj_DxR, skew_R, w_ent, use_skew):
    """The particle objective: relative moment errors minus ``w_ent`` x entropy estimate.

    The reference definition: ``_particle_grad`` computes its gradient by hand (tests
    compare the two), and only the gradient is used by the optimiser.
    """
    n = z_NxD.shape[0]
    mean_scale, cov_scale, skew_scale = _scales(mean_D, cov_DxD, skew_R)
    x = jax.nn.sigmoid(z_NxD)
    m = x.mean(0)
    xc = x - m
    loss = jnp.sum((m - mean_D) ** 2) / mean_scale
    loss += jnp.sum((jnp.matmul(xc.T, xc, precision=_HI) / n - cov_DxD) ** 2) / cov_scale
    if use_skew:
        s = jnp.mean(jnp.matmul(xc, proj_DxR, precision=_HI) ** 3, axis=0)
        loss += jnp.sum((s - skew_R) ** 2) / skew_scale
    ent = _nn_entropy(x)
    return loss - w_ent * ent


def _particle_grad(z_NxD, mean_D, cov_DxD, proj_DxR, skew_R, w_ent, use_skew):
    """Gradient of ``_particle_loss`` in z, written out to save the d x d work.

    Autodiff of the covariance term costs ~6 n d^2 flops per step (forward ``xc' xc``,
    then one product per operand in the backward pass) and the entropy term ~6 n^2 d.
    Here the covariance gradient ``(4 / n cs) xc (C - Sigma)`` is formed as
    ``(4 / n cs) ((xc xc') xc / n - xc Sigma)`` when n <= d (2 n d^2 + 4 n^2 d; otherwise
    ``xc (xc' xc / n - Sigma)``, 4 n d^2), and the entropy gradient reuses the same Gram
    matrix (pairwise distances are shift invariant) and touches only each particle's
    nearest neighbour (O(n d)). Mean and co-skewness terms (O(n d R)) use autodiff.
    """
    n, d = z_NxD.shape
    mean_scale, cov_scale, skew_scale = _scales(mean_D, cov_DxD, skew_R)
    x = jax.nn.sigmoid(z_NxD)

    def small_terms(x):
        m = x.mean(0)
        out = jnp.sum((m - mean_D) ** 2) / mean_scale
        if use_skew:
            xc = x - m
            s = jnp.mean(jnp.matmul(xc, proj_DxR, precision=_HI) ** 3, axis=0)
            out += jnp.sum((s - skew_R) ** 2) / skew_scale
        return out

    g = jax.grad(small_terms)(x)
    xc = x - x.mean(0)
    gram = jnp.matmul(xc, xc.T, precision=_HI)  # [n, n]
    if n <= d:
        r = jnp.matmul(gram, xc, precision=_HI) / n - jnp.matmul(xc, cov_DxD, precision=_HI)
    else:
        c = jnp.matmul(xc.T, xc, precision=_HI) / n - cov_DxD
        r = jnp.matmul(xc, c, precision=_HI)
    g += (4.0 / (n * cov_scale)) * r
    # d ent / d x: ent = (0.5 d / n) sum_i log(max(d2_i,j(i), 0) + 1e-10), j(i) the nearest
    # neighbour; d d2_ij / d x_i = 2 (x_i - x_j) = -d d2_ij / d x_j.
    sq = jnp.diagonal(gram)
    d2 = sq[:, None] + sq[None, :] - 2 * gram + jnp.diag(jnp.full(n, jnp.inf))
    j = jnp.argmin(d2, axis=1)
    dmin = jnp.take_along_axis(d2, j[:, None], axis=1)[:, 0]
    coef = jnp.where(dmin > 0, (0.5 * d / n) / (jnp.maximum(dmin, 0.0) + 1e-10), 0.0)
    pull = 2.0 * coef[:, None] * (x - x[j])
    g_ent = pull - jnp.zeros_like(x).at[j].add(pull)
    g -= w_ent * g_ent
    return g * x * (1.0 - x)  # chain rule through x = sigmoid(z)


# Particle steps per compiled call: between calls the host reports progress (a set at
# CIFAR size takes minutes per class). The steps, and so the samples, are the same for
# any chunk size (tests/stats/test_maxent.py checks them bit for bit against one call).
PARTICLE_CHUNK_STEPS = 100


@functools.partial(jax.jit, static_argnames=("steps", "length", "use_skew", "batch"))
def _particle_chunk(
    z_NxD, opt_state, start, mean_D, cov_DxD, proj_DxR, skew_R, entropy_weight, lr,
    steps, length, use_skew, batch,
):  # fmt: skip
    """Adam steps ``start .. start + length - 1`` of the ``steps`` of ``_optimise_particles``
    on ``(z, opt_state)``."""
    # Cosine-decayed step; entropy bonus annealed linearly to 0 (spread first, match last).
    # Co-skewness: step i matches the i-th block of ``batch`` projections, cycling through
    # all R columns (the caller shuffles them), so a step costs O(n d batch) for any R.
    opt = _particle_optimizer(lr, steps)
    nblocks = proj_DxR.shape[1] // batch

    def step(carry, i):
        z, state = carry
        w = entropy_weight * (1.0 - i / steps)
        start = (i % nblocks) * batch
        proj = jax.lax.dynamic_slice_in_dim(proj_DxR, start, batch, axis=1)
        skew = jax.lax.dynamic_slice_in_dim(skew_R, start, batch)
        g = _particle_grad(z, mean_D, cov_DxD, proj, skew, w, use_skew)
        upd, state = opt.update(g, state, z)
        return (optax.apply_updates(z, upd), state), None

    (z, state), _ = jax.lax.scan(step, (z_NxD, opt_state), start + jnp.arange(length))
    return z, state


def _particle_optimizer(lr, steps):
    return optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.01))


def _optimise_particles(
    z0_NxD, mean_D, cov_DxD, proj_DxR, skew_R, entropy_weight, lr, steps, use_skew, batch,
    chunk_steps=PARTICLE_CHUNK_STEPS, progress=None,
):  # fmt: skip
    """``sigmoid(z)`` after ``steps`` Adam steps from ``z0``, run ``chunk_steps`` at a time;
    ``progress(k)`` is called after each chunk with the steps done so far."""
    args = (mean_D, cov_DxD, proj_DxR, skew_R, entropy_weight, lr)
    z, state = z0_NxD, _particle_optimizer(lr, steps).init(z0_NxD)
    for start in range(0, steps, chunk_steps):
        length = min(chunk_steps, steps - start)
        z, state = _particle_chunk(
            z, state, jnp.int32(start), *args,
            steps=steps, length=length, use_skew=use_skew, batch=batch,
        )  # fmt: skip
        if progress is not None:
            jax.block_until_ready(z)
            progress(start + length)
    return _sigmoid(z)


_sigmoid = jax.jit(jax.nn.sigmoid)


def particle_maxent(
    stats: ClassStats,
    n: int,
    seed: int = 0,
    *,
    order: int = 2,
    steps: int = 1000,
    lr: float = 0.05,
    entropy_weight: float = ENTROPY_WEIGHT,
    eps: float = 1e-3,
    heldout_projections: int = HELDOUT_PROJECTIONS,
    projection_batch: int = 256,
    reference_x: np.ndarray | None = None,
    reference_y: np.ndarray | None = None,
    chunk_steps: int = PARTICLE_CHUNK_STEPS,
) -> SampledSet:
    """Box-constrained max-ent by particles ``x = sigmoid(z)`` optimised with Adam.

    Per class, ``n_y`` particles start from ``N(mu_y, Sigma_y)`` clipped to
    ``[eps, 1 - eps]`` and minimise the squared relative errors of the mean, the
    covariance and (order 3) the projected co-skewness, minus ``entropy_weight`` times the
    Kozachenko-Leonenko entropy ``_nn_entropy`` (``d`` x mean log nearest-neighbour
    distance), whose weight is annealed linearly to 0 so the final steps match moments
    only. The sigmoid keeps every particle inside the box. Optimised in float32; the
    report is float64.

    Order 3 fits every projection of ``stats`` but the last ``heldout_projections``: step
    i matches block ``i mod (R_fit / projection_batch)`` of a per-class shuffle of them, so
    a step costs O(n d projection_batch) however many are fitted. It needs R_fit >> d: a
    third-moment tensor has ``d (d+1) (d+2) / 6`` free entries, and matching a few hundred
    projections matches only those (at d = 64, 128 fitted projections left the held-out
    error where box2's is, 0.55 at n = 2000). On digits (d = 64, n = 2000, 1000 steps) the
    default 4096 projections of ``fit_class_stats`` give a held-out co-skewness error of
    ~0.14 against box2's ~0.59 and the real-data floor 0.39, with mean / covariance errors
    ~0.013 / 0.028 (box2: 0.002 / 0.007). At d = 3072 this was not measured: the tensor
    has 4.8e9 entries and 4096 directions may not pin it down; the ``coskew`` check
    (held-out error against the noise floor) then reports the miss.

    ``entropy_weight`` multiplies the entropy in nats. The default ``1e-2 / 64`` is the
    weight the old estimator (which left out the factor ``d``) had at d = 64 in effect,
    where it was tuned: on digits it keeps the particles' spread and moment errors as they
    were; 1e-3 spreads them twice as far in mean log NN distance but doubles the
    covariance error of box2. At larger d the same weight is a stronger bonus than before
    (the old one shrank as 1 / d).

    The steps run ``chunk_steps`` per compiled call, with a progress line (class, step,
    ETA; ``dsb.timing.ProgressLog``) between calls at most every 10 s; the samples do not
    depend on ``chunk_steps``.

    ``checks`` (``report.floor_checks``): mean and covariance, and for order 3 held-out
    co-skewness, each within ``FLOOR_FACTOR`` (1.5) x the noise floor of an independent
    real-data sample of the same size. ``reference_x/y`` (the data ``stats`` came from)
    make that floor a bootstrap and measure co-skewness on fresh projections.
    """
    if order not in (2, 3):
        raise ValueError("order must be 2 or 3")
    r = 0 if stats.proj_DxR is None else stats.proj_DxR.shape[1]
    if order == 3 and r <= heldout_projections:
        raise ValueError(
            f"third order needs ClassStats fitted with num_projections > heldout_projections "
            f"({heldout_projections}); got {r}"
        )
    if projection_batch < 1:
        raise ValueError(f"projection_batch must be >= 1, got {projection_batch}")
    rng = np.random.default_rng(seed)
    y = draw_labels(stats, n, rng)
    x = np.empty((n, stats.dim))
    r_fit = max(r - heldout_projections, 0)
    fit_cols, held_cols = slice(0, r_fit), slice(r_fit, r)
    use_skew = order == 3
    proj = stats.proj_DxR[:, fit_cols] if use_skew else np.zeros((stats.dim, 1))
    batch = min(projection_batch, proj.shape[1])
    nblk = proj.shape[1] // batch  # whole blocks only; a shuffle per class rotates the rest in
    present = [k for k in range(stats.num_classes) if np.any(y == k)]
    progress = ProgressLog(f"box{order} particles", steps * len(present), "steps")
    for c, k in enumerate(present):
        m = y == k
        nk = int(m.sum())
        if nk == 0:
            continue
        cov = stats.covariance(k)
        x0 = stats.mean_KxD[k] + rng.standard_normal((nk, stats.dim)) @ psd_factor(cov).T
        x0 = np.clip(x0, eps, 1 - eps)
        skew = stats.proj_skew_KxR[k, fit_cols] if use_skew else np.zeros(1)
        perm = rng.permutation(proj.shape[1])[: nblk * batch]
        xk = _optimise_particles(
            jnp.asarray(np.log(x0) - np.log1p(-x0), jnp.float32),
            jnp.asarray(stats.mean_KxD[k], jnp.float32),
            jnp.asarray(cov, jnp.float32),
            jnp.asarray(proj[:, perm], jnp.float32),
            jnp.asarray(skew[perm], jnp.float32),
            jnp.float32(entropy_weight),
            jnp.float32(lr),
            steps=steps,
            use_skew=use_skew,
            batch=batch,
            chunk_steps=chunk_steps,
            progress=lambda i, c=c, k=k: progress.update(
                c * steps + i, f"class {k}, {c + 1} of {len(present)}"
            ),
        )
        x[m] = np.asarray(xk, np.float64)
    extra = {"order": order, "steps": steps, "entropy_weight": entropy_weight}
    claims = ("mean", "cov")
    if order == 3:
        claims += ("coskew",)
        extra |= {"fitted_projections": r_fit, "projection_batch": batch}
        # Co-skewness on the matched projections too (the headline number is held out).
        extra["coskew_rel_err_matched"] = moment_report(
            x, y, stats, skew_cols=fit_cols
        ).coskew_rel_err
    rep = _report(x, y, stats, claims, (reference_x, reference_y), extra, held_cols)
    return SampledSet(x.astype(np.float32), y, rep)


# Cache versions of the particle samplers: the hand-written gradient moved their samples at
# rounding level (2); the entropy factor d, minibatched projections and the noise-floor
# checks in the report (3).
@register_maxent_set("box2", version=3, options={"particle_steps": "steps"})
def sample_box2(stats: ClassStats, n: int, seed: int = 0, **kw) -> SampledSet:
    """Second-order box max-ent (particle method, see ``particle_maxent``)."""
    return particle_maxent(stats, n, seed, order=2, **kw)


@register_maxent_set("box3", version=3, options={"particle_steps": "steps"})
def sample_box3(stats: ClassStats, n: int, seed: int = 0, **kw) -> SampledSet:
    """Third-order box max-ent: mean, covariance and projected co-skewness matched."""
    return particle_maxent(stats, n, seed, order=3, **kw)


# The registry of max-ent probe-set kinds (``ProbeSetKind`` entries), by its older name.
SAMPLERS = MAXENT_SETS
