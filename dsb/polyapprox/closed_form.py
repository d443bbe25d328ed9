"""Closed-form least-squares linear and quadratic approximants of MLP blocks.

Setting. ``x ~ N(mu, Sigma)`` in R^d (Sigma may be singular); one block
``f(x) = W2 sigma(W1 x + b1) + b2`` with ``W1 [H, d]``, ``W2 [K, H]``. The pre-activation
``h = W1 x + b1`` is Gaussian with mean ``m = W1 mu + b1`` and variances
``s^2 = diag(W1 Sigma W1')``. Write ``P`` for the orthogonal projection onto range(Sigma)
(x - mu lies in it almost surely) and ``r`` for its rank.

Linear (Stein's lemma, ``Cov(x, g(x)) = Sigma E[grad g]``): the least-squares
``f ~ alpha + B x`` has ``B = W2 diag(E[sigma'(h)]) W1 P`` and ``alpha = E[f] - B mu`` with
``E[f] = W2 E[sigma(h)] + b2``. On a singular Sigma, ``B`` is determined only on range(Sigma);
the ``P`` picks the minimum-norm solution (the pseudo-inverse solution), which predicts the
same on every point of the support.

Quadratic (second-order Stein / Hermite projection). Whiten: ``x = mu + L z`` with
``z ~ N(0, I_r)``, ``L L' = Sigma``. The monomials ``1, z_i, z_i z_j (i < j), z_i^2 - 1`` are
orthogonal under N(0, I) with squared norms ``1, 1, 1, 2`` (``Var(z_i z_j)`` is 1 off the
diagonal and 2 on it), so the least-squares coefficients are projections, and
``E[g(a'z + m) (z_i z_j - delta_ij)] = a_i a_j E[g''(h)]``. Back in x, the least-squares
quadratic is::

    f_k(x) ~ E[f_k] + B_k (x - mu) + 1/2 [(x - mu)' M_k (x - mu) - tr(M_k Sigma)]
    M_k = P W1' diag(W2[k] * E[sigma''(h)]) W1 P

(the ``- tr(M_k Sigma)`` keeps the mean right). This is the N(0, I) formula of the public
code, ``gamma_ij = W2 (E[sigma(h) z_i z_j] - E[sigma(h)] E[z_i z_j]) / Var(z_i z_j)``, carried to
N(mu, Sigma) by the whitening; no whitening is needed to compute it.

Expectations of sigma over ``N(m, s^2)``: ReLU and leaky ReLU in closed form
(``E[relu(h)] = m Phi(m/s) + s phi(m/s)``, ``E[relu'] = Phi(m/s)``, ``E[relu''] = phi(m/s)/s``,
``E[relu^2] = (m^2 + s^2) Phi(m/s) + m s phi(m/s)``); smooth activations (GELU both forms,
SiLU, tanh, sigmoid, softplus, ELU, identity) by quadrature (trapezoid rule against the
Gaussian density, ``QUAD_POINTS`` nodes; see there why not Gauss-Hermite) of sigma and its
autodiff derivatives.

Deeper MLPs (``depth > 1`` hidden layers): no closed form exists for the exact least-squares
coefficients (E[Jacobian] of a composition of nonlinearities under a Gaussian is not a
1-D integral). ``mlp_approximants`` then returns PROPAGATED approximants, marked
``exact=False``: the first layer's pre-activation is Gaussian (exact); each later
pre-activation is treated as Gaussian with a moment-matched mean (exact given its Gaussian
input) and covariance ``W (D C D + diag(Var sigma(h) - D^2 diag C)) W'`` (the Stein-linear part
plus independent residuals: an approximation); the layers after the first are replaced by
their Stein gain ``G = W_L diag(D_{L-1}) W_{L-1} ... diag(D_2) W_2``, and the single-block
formulas above are applied with ``W2 := G``. The linear coefficients are the chain of Stein
gains; the quadratic keeps only the first layer's curvature. For one hidden layer
everything is exact. The tests measure the gap of the propagated coefficients to Monte
Carlo least squares.

Everything is pure JAX and runs in the dtype of its inputs (float64 under
``jax.enable_x64``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr

from dsb.models.layers import ACTIVATIONS

__all__ = [
    "QUAD_POINTS",
    "SUPPORTED_ACTIVATIONS",
    "Approximant",
    "GaussianInput",
    "activation_moments",
    "activation_name",
    "block_approximants",
    "gaussian_input",
    "jackknife_se_bias",
    "mlp_approximants",
    "mlp_function",
    "quadratic_eigen",
    "stein_mc_approximants",
    "stein_mc_jackknife",
]

# Quadrature nodes for the smooth activations: the trapezoid rule on z in [-10, 10] against
# the N(0, 1) density. Not Gauss-Hermite: with the public code's 50 Gauss-Hermite nodes,
# E[tanh''(m + s z)] is 4% off at (m, s) = (0.7, 2) and 100% off at s = 5 (sigma'' is sharp
# on the scale 1/s of z, which a fixed polynomial rule does not resolve). The trapezoid rule
# with step 0.005 is exact to ~1e-10 while the activation's features in z (width ~1/s)
# span many steps: s up to ~20 (tested against adaptive quadrature in the tests).
QUAD_POINTS = 4001
QUAD_HALF_WIDTH = 10.0

_LEAKY_SLOPE = 0.01  # jax.nn.leaky_relu's default, what ACTIVATIONS' "leaky_relu" uses
_CLOSED = ("relu", "leaky_relu")
_SMOOTH = (
    "gelu", "gelu_tanh", "gelu_exact", "tanh", "silu", "swish", "sigmoid", "softplus", "elu",
    "identity",
)  # fmt: skip
SUPPORTED_ACTIVATIONS = _CLOSED + _SMOOTH


def activation_name(fn: Callable) -> str:
    """The ``dsb.models.layers.ACTIVATIONS`` name of the function object ``fn`` (the MLP
    keeps the function, not its name; of two names of one function the first in sorted
    order: "gelu", "silu"); ``ValueError`` if it is not one of them."""
    names = [n for n, f in ACTIVATIONS.items() if f is fn]
    if not names:
        raise ValueError(f"activation {fn!r} is not one of dsb.models.layers.ACTIVATIONS")
    return names[0]


def _check_activation(name: str) -> None:
    if name not in SUPPORTED_ACTIVATIONS:
        raise ValueError(
            f"polyapprox: activation {name!r} is not supported; "
            f"choose one of: {', '.join(SUPPORTED_ACTIVATIONS)}"
        )


def _phi(t):
    return jnp.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)


@functools.cache
def _nodes(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Trapezoid nodes on [-QUAD_HALF_WIDTH, QUAD_HALF_WIDTH] and weights times the N(0, 1)
    density (the mass beyond |z| = 10 is 1.5e-23)."""
    z = np.linspace(-QUAD_HALF_WIDTH, QUAD_HALF_WIDTH, n)
    w = np.full(n, z[1] - z[0])
    w[[0, -1]] *= 0.5
    return z, w * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def activation_moments(name: str, m, s, n_points: int = QUAD_POINTS):
    """``(E[sigma(h)], E[sigma'(h)], E[sigma''(h)], E[sigma(h)^2])`` for ``h ~ N(m, s^2)``,
    elementwise over arrays ``m``, ``s`` (``s`` > 0; zeros are clamped to a tiny number).
    ``E[sigma'']`` of a kink is its delta's weight (ReLU: ``phi(m/s)/s``)."""
    _check_activation(name)
    m = jnp.asarray(m)
    s = jnp.maximum(jnp.asarray(s, m.dtype), jnp.finfo(m.dtype).tiny ** 0.25)
    if name in _CLOSED:
        t = m / s
        cdf, pdf = ndtr(t), _phi(t)
        e0, e1, e2 = m * cdf + s * pdf, cdf, pdf / s
        sq = (m * m + s * s) * cdf + m * s * pdf
        if name == "relu":
            return e0, e1, e2, sq
        a = _LEAKY_SLOPE  # leaky(h) = (1 - a) relu(h) + a h
        neg_sq = (m * m + s * s) - sq  # E[min(h, 0)^2]
        return (
            (1 - a) * e0 + a * m,
            (1 - a) * e1 + a,
            (1 - a) * e2,
            sq + a * a * neg_sq,
        )
    return _smooth_moments(name, m, s, n_points)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _smooth_moments(name: str, m, s, n_points: int):
    fn = ACTIVATIONS.get(name)
    d1 = jnp.vectorize(jax.grad(fn))
    d2 = jnp.vectorize(jax.grad(jax.grad(fn)))
    z, w = _nodes(n_points)
    z = jnp.asarray(z, m.dtype)
    w = jnp.asarray(w, m.dtype)
    h = m[..., None] + s[..., None] * z
    f = fn(h)
    return (f @ w, d1(h) @ w, d2(h) @ w, (f * f) @ w)


@dataclasses.dataclass(frozen=True)
class GaussianInput:
    """``N(mu, Sigma)`` with its eigendecomposition restricted to the support.

    ``basis [d, r]``: orthonormal eigenvectors with eigenvalues ``evals [r]`` above
    ``d * eps(dtype) * max eigenvalue`` (numpy's matrix_rank rule); ``proj = basis basis'``.
    """

    mu: jax.Array
    cov: jax.Array
    basis: jax.Array
    evals: jax.Array

    @property
    def rank(self) -> int:
        return int(self.evals.shape[0])

    @property
    def proj(self) -> jax.Array:
        return self.basis @ self.basis.T

    def astype(self, dtype) -> GaussianInput:
        """The same Gaussian and THE SAME SUPPORT in ``dtype``. Rebuilding it with
        ``gaussian_input`` in float32 instead would cut the support with float32's eps (on
        digits: rank 58, not 61, dropping eigenvalues 1.8e-6..5.4e-6 of a 0.71 maximum)."""
        return GaussianInput(
            *(jnp.asarray(a, dtype) for a in (self.mu, self.cov, self.basis, self.evals))
        )

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """``n`` draws ``mu + basis diag(sqrt(evals)) z``, z ~ N(0, I_r)."""
        z = jax.random.normal(key, (n, self.rank), self.mu.dtype)
        return self.mu + (z * jnp.sqrt(self.evals)) @ self.basis.T


def gaussian_input(mu, cov) -> GaussianInput:
    """``GaussianInput`` of mean ``mu [d]`` and covariance ``cov [d, d]`` (symmetric PSD,
    possibly singular: the support is the span of the retained eigenvectors). The support
    is cut in the dtype of ``cov``: pass float64 statistics and use ``astype`` for a
    float32 copy."""
    mu = jnp.asarray(mu)
    cov = jnp.asarray(cov, mu.dtype)
    d = mu.shape[0]
    if mu.ndim != 1 or cov.shape != (d, d):
        raise ValueError(
            f"gaussian_input: mu must be [d] and cov [d, d], got {mu.shape}, {cov.shape}"
        )
    cov = 0.5 * (cov + cov.T)
    lam, vec = np.linalg.eigh(np.asarray(cov))
    keep = lam > d * np.finfo(np.asarray(cov).dtype).eps * max(lam.max(), 0.0)
    if not keep.any():
        raise ValueError("gaussian_input: cov is zero (no support)")
    return GaussianInput(
        mu, cov, jnp.asarray(vec[:, keep], mu.dtype), jnp.asarray(lam[keep], mu.dtype)
    )


@dataclasses.dataclass(frozen=True)
class Approximant:
    """``f_hat_k(x) = offset_k + B_k (x - mu) + 1/2 (x - mu)' M_k (x - mu)`` (``M`` is None
    for a linear approximant). ``mean`` is E[f] under the Gaussian (= E[f_hat]);
    ``offset = mean - tr(M_k Sigma) / 2``. ``exact``: the coefficients are the least-squares
    ones under N(mu, Sigma) (False: propagated through a deep net, see the module doc)."""

    mu: jax.Array
    mean: jax.Array
    offset: jax.Array
    B: jax.Array
    M: jax.Array | None
    exact: bool

    @property
    def order(self) -> int:
        return 1 if self.M is None else 2

    @property
    def intercept(self) -> jax.Array:
        """alpha of ``f_hat = alpha + B x (+ quadratic)``: the linear part about 0."""
        return self.offset - self.B @ self.mu

    def __call__(self, x_NxD, rows: int = 1024) -> jax.Array:
        """``f_hat`` of ``x [N, d]`` -> ``[N, K]``; the quadratic term ``rows`` samples at a
        time (its intermediate ``dx M_k`` is ``[rows, K, d]``: 0.6 GB for all 10000 MNIST
        test images in float64)."""
        dx = jnp.asarray(x_NxD, self.B.dtype) - self.mu
        out = self.offset + dx @ self.B.T
        if self.M is not None:
            quad = [
                jnp.einsum("ni,kij,nj->nk", dx[i : i + rows], self.M, dx[i : i + rows])
                for i in range(0, dx.shape[0], rows)
            ]
            out = out + 0.5 * jnp.concatenate(quad)
        return out


def block_approximants(
    W1, b1, W2, b2, gauss: GaussianInput, activation: str, n_points: int = QUAD_POINTS
):
    """Exact least-squares ``(linear, quadratic)`` approximants of one block
    ``W2 sigma(W1 x + b1) + b2`` under ``gauss`` (``W1 [H, d]``, ``W2 [K, H]``)."""
    return mlp_approximants([(W1, b1), (W2, b2)], gauss, activation, n_points)


def mlp_approximants(
    layers: Sequence[tuple], gauss: GaussianInput, activation: str, n_points: int = QUAD_POINTS
) -> tuple[Approximant, Approximant]:
    """``(linear, quadratic)`` approximants of ``x -> W_L sigma(... sigma(W_1 x + b_1) ...) + b_L``
    for ``layers = [(W_1 [H1, d], b_1), ..., (W_L [K, H_{L-1}], b_L)]`` (``L >= 2``).

    Exact for ``L == 2`` (one hidden layer); propagated (``exact=False``) otherwise, as the
    module docstring describes.
    """
    _check_activation(activation)
    if len(layers) < 2:
        raise ValueError(
            "mlp_approximants: need at least one hidden layer (a linear map is its own approximant)"
        )
    dt = gauss.mu.dtype
    Ws = [jnp.asarray(W, dt) for W, _ in layers]
    bs = [
        jnp.zeros(W.shape[0], dt) if b is None else jnp.asarray(b, dt)
        for (_, b), W in zip(layers, Ws)
    ]
    if Ws[0].shape[1] != gauss.mu.shape[0]:
        raise ValueError(
            f"mlp_approximants: W_1 is {Ws[0].shape}, inputs have d = {gauss.mu.shape[0]}"
        )
    for i in range(1, len(Ws)):
        if Ws[i].shape[1] != Ws[i - 1].shape[0]:
            raise ValueError(
                f"mlp_approximants: layer {i + 1} is {Ws[i].shape} after {Ws[i - 1].shape}"
            )
    m = Ws[0] @ gauss.mu + bs[0]
    C = Ws[0] @ gauss.cov @ Ws[0].T
    e0, e1, e2, sq = activation_moments(activation, m, jnp.sqrt(jnp.clip(jnp.diag(C), 0)), n_points)
    first_gain, first_curv = e1, e2
    gains = []
    for W, b in zip(Ws[1:-1], bs[1:-1]):
        lin = e1[:, None] * C * e1[None, :]
        resid = jnp.clip(sq - e0 * e0 - jnp.diag(lin), 0)
        cov_u = lin + jnp.diag(resid)
        m = W @ e0 + b
        C = W @ cov_u @ W.T
        e0, e1, e2, sq = activation_moments(
            activation, m, jnp.sqrt(jnp.clip(jnp.diag(C), 0)), n_points
        )
        gains.append((W, e1))
    # Downstream Stein gain G [K, H1]: W_L diag(D_{L-1}) W_{L-1} ... diag(D_2) W_2.
    G = Ws[-1]
    for W, d in reversed(gains):
        G = (G * d) @ W
    mean = Ws[-1] @ e0 + bs[-1]
    P = gauss.proj
    W1P = Ws[0] @ P
    B = (G * first_gain) @ W1P
    M = jnp.einsum("hi,kh,hj->kij", W1P, G * first_curv, W1P)
    offset = mean - 0.5 * jnp.einsum("kij,ji->k", M, gauss.cov)
    exact = len(layers) == 2
    lin = Approximant(gauss.mu, mean, mean, B, None, exact)
    quad = Approximant(gauss.mu, mean, offset, B, M, exact)
    return lin, quad


def quadratic_eigen(M, top: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Eigendecomposition of each output's quadratic form ``M [K, d, d]``: eigenvalues
    ``[K, top]`` and eigenvectors ``[K, top, d]`` (unit norm), sorted by ``|eigenvalue|``
    descending (a negative one is a direction the output curves down along).

    When ``top`` is under 1/16 of ``d`` (MNIST: 4 of 712), only the ``top`` lowest and
    ``top`` highest eigenpairs of each form are computed (LAPACK's subset driver; the
    ``top`` largest ``|eigenvalue|`` are among them): a full decomposition of ten
    712 x 712 forms took ~19 s per checkpoint on 2 loaded cores. Same pairs up to rounding
    and the eigenvectors' signs."""
    d = M.shape[-1]
    if top is not None and 16 * top < d:
        return _quadratic_eigen_ends(M, top)
    lam, vec = jnp.linalg.eigh(0.5 * (M + jnp.swapaxes(M, -1, -2)))
    order = jnp.argsort(-jnp.abs(lam), axis=-1)[..., : top or lam.shape[-1]]
    lam = jnp.take_along_axis(lam, order, -1)
    vec = jnp.take_along_axis(jnp.swapaxes(vec, -1, -2), order[..., None], -2)
    return lam, vec


def _quadratic_eigen_ends(M, top: int) -> tuple[jax.Array, jax.Array]:
    import scipy.linalg

    S = np.asarray(M)
    S = 0.5 * (S + np.swapaxes(S, -1, -2))
    d = S.shape[-1]
    lam_out, vec_out = [], []
    for S_k in S.reshape(-1, d, d):
        ends = [
            scipy.linalg.eigh(S_k, subset_by_index=idx, driver="evr")
            for idx in ([0, top - 1], [d - top, d - 1])
        ]
        lam = np.concatenate([e[0] for e in ends])
        vec = np.concatenate([e[1] for e in ends], axis=1)
        order = np.argsort(-np.abs(lam), kind="stable")[:top]
        lam_out.append(lam[order])
        vec_out.append(vec[:, order].T)
    shape = S.shape[:-2]
    return (
        jnp.asarray(np.reshape(lam_out, (*shape, top)), M.dtype),
        jnp.asarray(np.reshape(vec_out, (*shape, top, d)), M.dtype),
    )


def stein_mc_approximants(
    fn: Callable[[jax.Array], jax.Array],
    gauss: GaussianInput,
    key: jax.Array,
    n: int,
    chunk: int | None = None,
) -> tuple[Approximant, Approximant]:
    """Monte Carlo estimates of the EXACT least-squares ``(linear, quadratic)`` approximants
    of any Lipschitz ``fn: [d] -> [K]`` under ``gauss`` (both ``exact=False``: they carry
    Monte Carlo error), from ``n`` draws and first derivatives only.

    By Stein's lemma on whitened ``z`` (``x = mu + L z``): ``E[f z_i] = E[d_i f]`` and
    ``E[f (z_i z_j - delta_ij)] = E[d_i f z_j]`` (only ``f`` need be Lipschitz: a ReLU net,
    whose second derivatives are deltas, qualifies). In x: ``B = E[J(x)] P`` and
    ``M_k = sym(Sigma^+ E[(x - mu) (J_k(x) - B_k)] P)`` (subtracting ``B_k`` is a control
    variate: it leaves the expectation unchanged, as ``E[x - mu] = 0``, and removes the
    linear part's noise); ``E[f]`` is the sample mean. Standard error of each coefficient
    ~ (its per-sample spread) / sqrt(n); ``stein_mc_jackknife`` gives the error of what
    the estimates are used for. ``chunk``: as in ``stein_mc_jackknife``.
    """
    return stein_mc_jackknife(fn, gauss, key, n, groups=1, chunk=chunk)[0]


def stein_mc_jackknife(
    fn: Callable[[jax.Array], jax.Array],
    gauss: GaussianInput,
    key: jax.Array,
    n: int,
    groups: int,
    chunk: int | None = None,
) -> tuple[tuple[Approximant, Approximant], list[tuple[Approximant, Approximant]]]:
    """``stein_mc_approximants`` from the same ``n`` draws, and its ``groups``
    delete-a-group jackknife replicates: the estimates without draws ``g, g + groups,
    g + 2 groups, ...`` for each ``g`` (none for ``groups = 1``). For a statistic ``T`` of
    the approximants (an R^2), with ``T_g`` its replicates and ``T_bar`` their mean: the
    jackknife standard error is ``sqrt((G - 1) / G * sum (T_g - T_bar)^2)`` and the
    jackknife estimate of the Monte Carlo bias ``(G - 1) (T_bar - T)``, unbiased for a
    statistic quadratic in the sample means (the FVU of an approximant is quadratic in its
    coefficients; ``B`` and ``E[f]`` are means, ``M`` is a mean up to the control variate's
    product of means). One pass of Jacobians: every replicate comes from per-group sums.

    ``chunk``: draws whose Jacobians are held at once (rounded down to a multiple of
    ``groups``; None: all ``n``). The Jacobians of all draws are ``n K d`` numbers (MNIST,
    n = 32768: 1 GB in float32); in chunks only ``chunk K d`` are, plus the per-group sums
    (``groups K d^2``). The draws and their groups do not depend on ``chunk``; the sums
    agree up to rounding."""
    if groups < 1 or n % groups or n // groups < 2:
        raise ValueError(f"stein_mc_jackknife: n={n} must be a multiple >= 2x of groups={groups}")
    x = gauss.sample(key, n)
    step = n if chunk is None else max(groups, chunk - chunk % groups)
    # Per-group sums (group g: draws g, g + G, ...): of J, f, dx and dx_a J_kj. A chunk
    # starts at a multiple of G, so its draw i is in group i % G.
    sums = None
    for start in range(0, n, step):
        part = _stein_group_sums(fn, x[start : start + step], gauss.mu, groups)
        sums = part if sums is None else tuple(a + b for a, b in zip(sums, part))
    s_J, s_f, s_dx, s_dxJ = sums

    def estimate(sJ, sf, sdx, sdxJ, m):
        P = gauss.proj
        B = sJ / m @ P
        pinv = (gauss.basis / gauss.evals) @ gauss.basis.T
        # sum_n dx_n (J_n - B) = sum dx_a J_kj - (sum dx_a) B_kj.
        A = jnp.einsum("ai,kaj->kij", pinv, (sdxJ - sdx[None, :, None] * B[:, None, :]) / m) @ P
        M = 0.5 * (A + jnp.swapaxes(A, 1, 2))
        mean = sf / m
        offset = mean - 0.5 * jnp.einsum("kij,ji->k", M, gauss.cov)
        return (
            Approximant(gauss.mu, mean, mean, B, None, False),
            Approximant(gauss.mu, mean, offset, B, M, False),
        )

    tot = [a.sum(0) for a in (s_J, s_f, s_dx, s_dxJ)]
    full = estimate(*tot, n)
    if groups == 1:
        return full, []
    rest = n - n // groups
    reps = [
        estimate(*(t - a[g] for t, a in zip(tot, (s_J, s_f, s_dx, s_dxJ))), rest)
        for g in range(groups)
    ]
    return full, reps


def _stein_group_sums(fn, x_NxD, mu, groups: int):
    """Per-group sums ``(J [G, K, d], f [G, K], dx [G, d], dx_a J_kj [G, K, d, d])`` of the
    draws ``x`` (``N`` a multiple of ``groups``; draw ``i`` in group ``i % groups``)."""
    m = x_NxD.shape[0] // groups
    J = jax.vmap(jax.jacrev(fn))(x_NxD)  # [N, K, d]
    f = jax.vmap(fn)(x_NxD)  # [N, K]
    dx = (x_NxD - mu).reshape(m, groups, -1)
    K, d = J.shape[1:]
    J = J.reshape(m, groups, K, d)
    return (
        J.sum(0),
        f.reshape(m, groups, K).sum(0),
        dx.sum(0),
        jnp.einsum("mga,mgkj->gkaj", dx, J),
    )


def jackknife_se_bias(value: float, replicates) -> tuple[float, float]:
    """Delete-a-group jackknife ``(standard error, bias)`` of a statistic with full-sample
    ``value`` and ``G`` leave-one-group-out ``replicates``: ``sqrt((G - 1) / G *
    sum (T_g - T_bar)^2)`` and ``(G - 1) (T_bar - value)``."""
    r = np.asarray(replicates, np.float64)
    G = len(r)
    if G < 2:
        raise ValueError("jackknife_se_bias: need at least 2 replicates")
    bar = r.mean()
    return float(np.sqrt((G - 1) / G * ((r - bar) ** 2).sum())), float((G - 1) * (bar - value))


def mlp_function(layers: Sequence[tuple], activation: str) -> Callable[[jax.Array], jax.Array]:
    """``x [d] -> logits [K]`` of ``layers = [(W [out, in], b or None), ...]`` (the layout of
    ``mlp_approximants``), in the dtype of ``x``."""
    act = ACTIVATIONS.get(activation)

    def fn(x):
        for W, b in layers[:-1]:
            x = act(W @ x + (0 if b is None else b))
        W, b = layers[-1]
        return W @ x + (0 if b is None else b)

    return fn
