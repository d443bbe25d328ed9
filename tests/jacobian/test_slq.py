"""Stochastic Lanczos quadrature against diagonal operators with known spectra.

With Rademacher probes every probe sees the same spectral measure, ``(1/P) sum_i delta``,
so the Chebyshev-Markov-Stieltjes bracket of ``SLQResult.count_bounds`` must contain the
exact count for *every* probe, not just on average.
"""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from dsb.jacobian import (
    JacobianOperator,
    SLQResult,
    TopSingular,
    UnconvergedWarning,
    golub_kahan_svd,
    kpm_counts,
    randomized_svd,
    slq_spectrum,
    top_singular_triplets,
)
from dsb.jacobian.certified import deflation_subspace, kpm_counts_from_moments

# Compared against float64 ground truth: x64 for each test of this file.
pytestmark = pytest.mark.usefixtures("float64")


def diagonal_operator(d: np.ndarray, dtype=jnp.float64, shift: float = 0.0) -> JacobianOperator:
    diag = jnp.asarray(d, dtype)
    return JacobianOperator(lambda th: diag * th, jnp.zeros(len(d), dtype), shift=shift)


def clustered_spectrum(rng, p=300):
    # A bulk cluster at 0 (the near-null space of D), a spread middle, a few large values.
    parts = [
        np.zeros(p // 3),
        10.0 ** rng.uniform(-4, -1, p // 6),
        rng.uniform(0.05, 2.0, p - p // 3 - p // 6 - 5),
        rng.uniform(5, 30, 5),
    ]
    return rng.permutation(np.concatenate(parts))


def test_count_bounds_hold_on_a_counterexample_to_the_plain_staircase():
    # Half the singular values at 0, half at 1. With one Krylov step the only node sits at
    # sqrt(1/2) with weight 1, below a threshold of 0.8: the staircase says P, the truth is
    # P/2. The rigorous bracket must widen to [0, P].
    d = np.repeat([0.0, 1.0], 100)
    slq = slq_spectrum(diagonal_operator(d), num_matvecs=1, num_probes=3)
    np.testing.assert_allclose(slq.sigma, np.sqrt(0.5), rtol=1e-12)
    lo, hi = slq.count_bounds(0.8)
    assert (lo <= 100).all() and (hi >= 100).all(), (lo, hi)
    assert slq.count_below(0.8)[0] == pytest.approx(200)  # the staircase, not a bound


@pytest.mark.parametrize("method", ["bidiag", "lanczos"])
@pytest.mark.parametrize("num_matvecs", [4, 12, 40])
def test_count_bounds_contain_the_exact_count_for_every_probe(method, num_matvecs):
    rng = np.random.default_rng(num_matvecs)
    d = clustered_spectrum(rng)
    slq = slq_spectrum(diagonal_operator(d), num_matvecs=num_matvecs, num_probes=6, method=method)
    np.testing.assert_allclose(slq.weights.sum(1), 1.0, rtol=1e-10)
    for thr in (1e-3, 1e-2, 0.1, 0.5, 1.0, 3.0, 10.0):
        true = int((np.abs(d) < thr).sum())
        lo, hi = slq.count_bounds(thr)
        assert (lo <= true + 1e-6).all() and (hi >= true - 1e-6).all(), (thr, true, lo, hi)
        est, _ = slq.count_below(thr)
        assert lo.mean() - 1e-9 <= est <= hi.mean() + 1e-9


def test_converged_quadrature_counts_exactly():
    # With as many steps as distinct singular values, Gauss quadrature is exact: the
    # estimate equals the true count whatever the threshold between nodes.
    rng = np.random.default_rng(1)
    values = np.array([0.0, 1e-3, 0.02, 0.3, 0.9, 4.0])
    d = rng.permutation(np.repeat(values, [50, 20, 30, 40, 10, 5]))
    slq = slq_spectrum(diagonal_operator(d), num_matvecs=6, num_probes=2)
    for thr in (5e-4, 1e-2, 0.1, 0.5, 2.0, 10.0):
        true = int((d < thr).sum())
        assert slq.count_below(thr)[0] == pytest.approx(true, abs=1e-6)
        lo, hi = slq.count_bounds(thr)
        # The bracket is at most the weights of the two straddling nodes wide.
        assert (hi - lo <= 110 + 1e-6).all()


def test_shift_gives_the_quadrature_of_j_minus_identity():
    rng = np.random.default_rng(2)
    d = 1.0 + np.concatenate([np.zeros(60), rng.uniform(0.2, 3, 40), -rng.uniform(0.2, 0.9, 20)])
    shifted = slq_spectrum(diagonal_operator(d, shift=1.0), num_matvecs=20, num_probes=2)
    direct = slq_spectrum(diagonal_operator(d - 1.0), num_matvecs=20, num_probes=2)
    np.testing.assert_allclose(shifted.sigma, direct.sigma, atol=1e-10)
    np.testing.assert_allclose(shifted.weights, direct.weights, atol=1e-10)
    for thr in (1e-3, 0.1, 1.0):
        lo, hi = shifted.count_bounds(thr)
        true = int((np.abs(d - 1) < thr).sum())
        assert (lo <= true).all() and (hi >= true).all(), (thr, lo, hi, true)


def test_bidiag_resolves_what_lanczos_on_the_square_cannot_in_float32():
    # A = Q diag(d) Q^T with sigma_1 = 1e4: in float32, rounding in the rotations spreads
    # ~6e-8 * 1e4 = 6e-4 of error over every component of a product. Golub-Kahan on A sees
    # singular values down to ~1e-3; Lanczos on A^T A only down to sqrt(6e-8) * 1e4 ~ 2.4.
    # Five distinct values and 8 steps: in float64 the quadrature is exact for each probe
    # (the same probes: same key), which is the ground truth here.
    rng = np.random.default_rng(3)
    d = np.concatenate([np.full(40, 0.05), np.full(40, 1.0), [1e4, 5e3, 2e3]])
    q64 = np.linalg.qr(rng.normal(size=(len(d), len(d))))[0]

    def op(dtype):
        q, diag = jnp.asarray(q64, dtype), jnp.asarray(d, dtype)
        return JacobianOperator(lambda th: q @ (diag * (q.T @ th)), jnp.zeros(len(d), dtype))

    def count(dtype, method):
        slq = slq_spectrum(op(dtype), num_matvecs=8, num_probes=4, method=method)
        return slq.count_below(0.2)[0]

    truth = count(jnp.float64, "bidiag")
    assert count(jnp.float64, "lanczos") == pytest.approx(truth, abs=1e-6)
    assert 20 < truth < 60  # 40 in expectation over probes
    assert count(jnp.float32, "bidiag") == pytest.approx(truth, abs=0.5)
    assert abs(count(jnp.float32, "lanczos") - truth) > 5


def test_slq_result_rejects_bad_arguments():
    op = diagonal_operator(np.ones(4))
    with pytest.raises(ValueError, match="method"):
        slq_spectrum(op, method="arnoldi")
    with pytest.raises(ValueError, match="num_probes"):
        slq_spectrum(op, num_probes=0)
    r = SLQResult(np.array([[0.1, 2.0]]), np.array([[0.25, 0.75]]), 8, 0.0)
    np.testing.assert_allclose(r.nodes, [[0.01, 4.0]])
    assert r.count_bounds(1.0) == (pytest.approx([0.0]), pytest.approx([8.0]))
    assert r.count_bounds(5.0) == (pytest.approx([2.0]), pytest.approx([8.0]))
    assert r.count_bounds(0.05) == (pytest.approx([0.0]), pytest.approx([2.0]))


# --------------------------------------------------------------------------------------
# Certified counts and top-k (dsb.jacobian.certified). Synthetic D = Qu diag(d) Qv^T with a
# known spectrum: a few large "chaotic" values, a cluster near 0 log-uniform over
# [1e-4, 3e-2] (the bulk, of realistic width: it straddles 1e-2) and a spread middle, so
# neither Gauss quadrature nor a polynomial filter is exact. Rotated, so Hutchinson's
# probes see a genuinely random quadratic form (a diagonal D would make them exact).


def rotated_operator(rng, p=800, cluster=0.45):
    d = np.concatenate(
        [
            rng.uniform(3, 10, 5),
            10 ** rng.uniform(-4, np.log10(3e-2), int(cluster * p)),
        ]
    )
    d = np.concatenate([d, rng.uniform(0.03, 1.0, p - len(d))])
    qu = np.linalg.qr(rng.normal(size=(p, p)))[0]
    qv = np.linalg.qr(rng.normal(size=(p, p)))[0]
    a = jnp.asarray((qu * d) @ qv.T)
    return JacobianOperator(lambda th: a @ th, jnp.zeros(p)), d


def exact_moments(d, lsq, degree):
    """Exact Chebyshev moments ``tr T_j(2 D^T D / L - I)`` of a known spectrum."""
    theta = np.arccos(np.clip(2 * d**2 / lsq - 1, -1, 1))
    return np.cos(np.outer(np.arange(degree + 1), theta)).sum(1)[None]


@pytest.mark.parametrize("degree", [200, 800, 3000])
def test_kpm_brackets_contain_the_exact_count_with_exact_moments(degree):
    # With exact traces the only error is the filters': the bracket is rigorous, so it must
    # contain the truth at every threshold, and shrink as the degree grows.
    rng = np.random.default_rng(degree)
    d = np.sort(np.concatenate([10 ** rng.uniform(-4, -1.5, 900), rng.uniform(0.03, 1, 600)]))
    lsq = 1.05**2
    counts = kpm_counts_from_moments(
        exact_moments(d, lsq, degree), 1.05, (1e-3, 1e-2, 0.05, 0.1, 0.5), num_params=len(d)
    )
    widths = []
    for t, c in counts.items():
        true = int((d < t).sum())
        assert c.low <= true <= c.high, (degree, t, true, c)
        if c.resolved:
            assert abs(c.estimate - true) <= 0.05 * true, (degree, t, true, c)
        else:
            assert np.isnan(c.estimate)
        widths.append(c.high - c.low)
    # The resolution is the smallest threshold the degree brackets at all: ~ 17 sqrt(L) / N.
    assert 5 / degree < counts[0.1].resolution < 40 / degree
    if degree == 3000:
        assert counts[0.1].resolved and counts[0.05].resolved
        assert not counts[1e-3].resolved and counts[1e-3].low == 0.0


@pytest.mark.parametrize("degree", [800, 3000])
def test_kpm_brackets_hold_with_clumps_hugging_the_threshold(degree):
    # The adversarial case for a smoothed step: 300 values just above t and 300 just below.
    # The smoothed count at t itself is off by about half of each clump; only filters
    # shifted by the kernel's width (one each side) bound the count.
    t = 0.05
    rng = np.random.default_rng(degree)
    d = np.concatenate(
        [t * (1 + rng.uniform(0, 0.05, 300)), t * (1 - rng.uniform(0, 0.05, 300)), [0.9]]
    )
    counts = kpm_counts_from_moments(exact_moments(d, 1.0, degree), 1.0, (t,), num_params=601)
    assert counts[t].low <= 300 <= counts[t].high, counts[t]


def test_kpm_counts_resolve_the_bulk_at_0_1_within_2_percent():
    # rel_width 0.15: at P = 800 and 8 probes Hutchinson's 3-sigma band alone is ~10%.
    op, d = rotated_operator(np.random.default_rng(0))
    res = kpm_counts(op, (0.1,), deflate=5, num_probes=8, rel_width=0.15, max_products=20000)
    c = res.counts[0.1]
    true = int((d < 0.1).sum())
    assert res.stop_reason == "resolved" and c.resolved, res
    assert abs(c.estimate - true) <= 0.02 * true, (c, true)
    assert 0 < c.low <= true <= c.high, (c, true)
    # Deflation took out the 5 large values: the Chebyshev interval is the bulk's.
    assert res.deflated == 5 and 1.0 <= res.sigma_max < 1.2
    assert res.products <= 20000


def test_kpm_counts_at_1e_2_are_resolved_within_5_percent_or_explicitly_unresolved():
    op, d = rotated_operator(np.random.default_rng(1))
    true = int((d < 1e-2).sum())
    for budget in (3000, 12000):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnconvergedWarning)
            res = kpm_counts(op, (1e-2,), deflate=5, num_probes=8, max_products=budget)
        c = res.counts[1e-2]
        assert c.low <= true <= c.high, (budget, c, true)
        assert res.products <= budget
        if c.resolved:
            assert abs(c.estimate - true) <= 0.05 * true, (budget, c, true)
        else:
            assert np.isnan(c.estimate) and res.stop_reason.startswith("max_"), res
            assert c.resolution > 0


def test_kpm_count_below_resolution_is_nan_with_a_warning_never_zero():
    op, d = rotated_operator(np.random.default_rng(2), p=300)
    with pytest.warns(UnconvergedWarning, match="unresolved"):
        res = kpm_counts(op, (1e-4, 0.1), deflate=5, num_probes=4, max_products=1500)
    c = res.counts[1e-4]
    assert np.isnan(c.estimate) and not c.resolved
    assert c.resolution > 1e-4 and c.low == 0.0 and c.high >= (d < 1e-4).sum()


def test_top_singular_triplets_certify_their_accuracy():
    op, d = rotated_operator(np.random.default_rng(3), p=400)
    s_true = np.sort(d)[::-1]
    top = top_singular_triplets(op, 5, rtol=1e-6)
    assert top.all_converged and top.stop_reason == "converged"
    np.testing.assert_allclose(top.s, s_true[:5], rtol=1e-6)
    # The residuals are real products, not the recurrence's bookkeeping.
    a = np.asarray(op.matmat(jnp.eye(op.num_params)))
    r_right = np.linalg.norm(a.T @ top.U - top.Vt.T * top.s, axis=0)
    np.testing.assert_allclose(top.residual_right, r_right, rtol=1e-6, atol=1e-12)
    # A budget too small to converge: flagged, warned, and the residual says how far.
    with pytest.warns(UnconvergedWarning, match="not converged"):
        small = top_singular_triplets(op, 5, rtol=1e-12, num_krylov=6, max_products=30)
    assert not small.all_converged and small.stop_reason == "max_products"
    # Each Ritz value has a true singular value within its residual (not necessarily the
    # i-th: an unconverged Krylov space can miss one).
    err = np.abs(small.s[:, None] - s_true[None]).min(1) / small.s
    assert (err <= small.rel_residual * (1 + 1e-9)).all(), (err, small.rel_residual)


def test_golub_kahan_and_randomized_svd_warn_when_unconverged():
    op, _ = rotated_operator(np.random.default_rng(4), p=300)
    with pytest.warns(UnconvergedWarning, match="golub_kahan_svd"):
        golub_kahan_svd(op, 5, num_matvecs=6)
    with pytest.warns(UnconvergedWarning, match="randomized_svd"):
        randomized_svd(op, 5, oversample=0, power_iters=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnconvergedWarning)
        golub_kahan_svd(op, 5)  # adaptive default: converges, no warning


def test_slq_counts_are_nan_below_the_smallest_ritz_node():
    # The failure this guards against: the Gauss staircase says 0 below the smallest node,
    # and a bare staircase would report that 0 as a count.
    op, d = rotated_operator(np.random.default_rng(5), p=400)
    slq = slq_spectrum(op, num_matvecs=20, num_probes=6)
    assert slq.count_below(1e-3)[0] == 0.0  # the bare staircase
    counts = slq.counts((1e-3, 1e-2, 0.1))
    for t, c in counts.items():
        true = int((d < t).sum())
        assert c.low <= true <= c.high, (t, c, true)
        if c.resolved:
            assert abs(c.estimate - true) <= 0.1 * true
        else:
            assert np.isnan(c.estimate)
    assert not counts[1e-3].resolved and counts[1e-3].resolution > 1e-3


# --------------------------------------------------------------------------------------
# Deep deflation and its certificate for inexactness (dsb.jacobian.certified.Deflation).


def reference_like_operator(rng, p=2000, n_top=200):
    """Shaped like the reference run's D: ``n_top`` large singular values log-uniform in
    [1.2, 1.2e3], 37% of them log-uniform in [1e-5, 1e-2], 25% in [1e-2, 0.1] and the rest
    in [0.1, 1.2] (the reference: 37.5% below 1e-2, 63% below 0.1, sigma_501 = 1.2).
    ``D = Qu diag(d) Qv^T`` with Kronecker-product rotations ``Q = Qa (x) Qb`` (dense, random,
    applied in ``O(P sqrt(P))``); returns the operator, ``d`` and the explicit ``Qu, Qv``."""
    n0, n1 = int(0.37 * p), int(0.25 * p)
    d = np.concatenate(
        [
            1.2 * 10 ** rng.uniform(0, 3, n_top),
            10 ** rng.uniform(-5, -2, n0),
            10 ** rng.uniform(-2, -1, n1),
        ]
    )
    d = np.concatenate([d, 10 ** rng.uniform(-1, np.log10(1.2), p - len(d))])
    na = next(n for n in range(int(np.sqrt(p)), 0, -1) if p % n == 0)
    rot = [np.linalg.qr(rng.normal(size=(n, n)))[0] for n in (na, p // na, na, p // na)]
    ua, ub, va, vb = (jnp.asarray(r) for r in rot)
    dj = jnp.asarray(d)

    def apply(th):  # kron(A, B) x = (A X B^T).ravel() for X = x.reshape(a, b)
        y = dj * (va.T @ th.reshape(va.shape[0], -1) @ vb).ravel()
        return (ua @ y.reshape(ua.shape[0], -1) @ ub.T).ravel()

    qu, qv = np.kron(rot[0], rot[1]), np.kron(rot[2], rot[3])
    return JacobianOperator(apply, jnp.zeros(p)), d, qu, qv


def perturbed_top(d, qu, qv, k, num_mixed, target):
    """A ``TopSingular`` whose last ``num_mixed`` of ``k`` right vectors (the deflation's
    edge, where Krylov converges last) are the true ones mixed with bulk directions
    (sigma < 1e-2) at angle ``s_i = target / sigma_i``: the rest of the space then holds
    those bulk directions rotated up to sigma ~ ``target``."""
    order = np.argsort(d)[::-1][: k + 1]
    bulk = np.flatnonzero(d < 1e-2)[:num_mixed]
    vt = qv[:, order].T.copy()
    mixed = order[k - num_mixed : k]
    s_mix = target / d[mixed]
    vt[k - num_mixed : k] = (qv[:, mixed] * np.sqrt(1 - s_mix**2) + qv[:, bulk] * s_mix).T
    zeros = np.zeros(k + 1)
    return TopSingular(qu[:, order], d[order], vt, zeros, zeros, 1e-3, k + 1, 0, 0.0, "given")


def test_deflation_certificate_brackets_the_exact_count():
    # The inequality chain of the module docstring, checked densely: with V perturbed,
    # count(H < tau) + count(C < tau - rho_-) <= count(M < tau) <= ... + count(C < tau + rho_+).
    rng = np.random.default_rng(7)
    op, d, qu, qv = reference_like_operator(rng, p=300, n_top=30)
    top = perturbed_top(d, qu, qv, 30, 20, 0.05)
    defl = deflation_subspace(op, 30, top=top)
    assert defl.products == 60 and np.allclose(defl.Vt @ defl.Vt.T, np.eye(30), atol=1e-12)
    m_eig = np.sort(d) ** 2
    q_basis = np.linalg.svd(np.eye(300) - defl.Vt.T @ defl.Vt)[0][:, :270]
    a = np.asarray(op.matmat(jnp.eye(300)))
    c_eig = np.linalg.eigvalsh(q_basis.T @ a.T @ a @ q_basis)
    used = 0
    for t in (3e-3, 0.02, 0.05, 0.1, 0.3, 2.0, 40.0):
        tau = t * t
        below, rho_hi, rho_lo = defl.certificate(30, t)
        true = int((m_eig < tau).sum())
        low = below + int((c_eig < tau - rho_lo).sum())
        high = below + int((c_eig < tau + rho_hi).sum())
        assert low <= true <= high, (t, low, true, high, rho_hi, rho_lo)
        # The shift is what holds the upper end: the compression alone undercounts.
        used += below + int((c_eig < tau).sum()) < true
    assert used >= 2  # the perturbation moved bulk values above t = 0.02, 0.05 (to ~0.05)
    # An exact invariant subspace has no coupling.
    exact = deflation_subspace(op, 30, top=perturbed_top(d, qu, qv, 30, 0, 0.0))
    assert exact.certificate(30, 0.1)[1] < 1e-20


def test_kpm_counts_deep_deflation_resolves_0_1_within_2_percent():
    # The reference's shape at P = 2000: sigma_1 = 1.2e3, 200 values above 1.2. Deflating
    # 20 leaves sigma_21 ~ 500 and needs degree ~ 1.7e5 at t = 0.1; the default depth
    # choice deflates past the 200 (the certificate says the Ritz vectors are converged).
    # 16 probes: at P = 2000 the 3-sigma Hutchinson band of 8 alone is ~8% of the count.
    op, d, _, _ = reference_like_operator(np.random.default_rng(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnconvergedWarning)
        res = kpm_counts(op, (0.1, 1e-2), num_probes=16, max_products=16000)
    assert res.deflated >= 200 and res.sigma_max < 1.3, res
    assert res.products == res.deflation_products + res.moment_products <= 16000
    c = res.counts[0.1]
    true = int((d < 0.1).sum())
    assert c.resolved and abs(c.estimate - true) <= 0.02 * true, (c, true)
    assert 0 < c.low <= true <= c.high, (c, true)
    assert c.deflation_shift <= 0.05 * 0.1**2
    c = res.counts[1e-2]
    true = int((d < 1e-2).sum())
    assert c.low <= true <= c.high, (c, true)
    if c.resolved:
        assert abs(c.estimate - true) <= 0.05 * true, (c, true)
    else:
        assert np.isnan(c.estimate) and res.stop_reason.startswith("max_"), res


def test_kpm_counts_bracket_holds_with_an_inexact_deflation():
    # The last 80 of the 150 deflated directions are mixed with bulk directions below 1e-2, so the
    # projected space has 80 bulk values moved up to ~0.3: the compression's own count at
    # t = 0.1 is ~80 short. The certificate's shift (rho_+ ~ 0.3^2) must cover them.
    op, d, qu, qv = reference_like_operator(np.random.default_rng(1), p=1200, n_top=150)
    top = perturbed_top(d, qu, qv, 150, 80, 0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnconvergedWarning)
        res = kpm_counts(op, (0.1,), deflate=150, top=top, num_probes=8, max_products=6000)
    c = res.counts[0.1]
    true = int((d < 0.1).sum())
    assert 0 < c.low <= true <= c.high, (c, true)
    assert res.deflated == 150 and c.deflation_shift > 0.01, c
    # The same moments without the certificate (inexact V treated as exact) miss.
    naive = kpm_counts_from_moments(res.moments, res.sigma_max, (0.1,), num_params=1200)[0.1]
    assert naive.high < true, (naive, true)
    # Left to choose (deflate=None), the depth stops before the inexact edge: only the
    # first 70 directions are exact, and beyond them rho_+ ~ 0.09 > 0.05 t^2.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnconvergedWarning)
        auto = kpm_counts(op, (0.1,), top=top, num_probes=4, max_products=3000)
    c = auto.counts[0.1]
    assert 0 < auto.deflated <= 70 and c.deflation_shift <= 0.05 * 0.1**2, (auto, c)
    assert c.low <= true <= c.high, (c, true)


# --------------------------------------------------------------------------------------
# The reference run (digits MLP 64-GELU-10, P = 4810, T = 625, float32) against its dense
# Jacobian. Dense J takes minutes: set DSB_REFERENCE_J=/path/J.npy to reuse a saved one
# (it is written there when absent).


@pytest.fixture(scope="module")
def reference():
    import os

    from dsb.jacobian import jacobian_forward_cached, reference_run

    run, theta0 = reference_run()
    jd = jacobian_forward_cached(run, theta0, os.environ.get("DSB_REFERENCE_J"))
    jd = jd.astype(np.float64)
    s_j = np.linalg.svd(jd, compute_uv=False)
    s_d = np.linalg.svd(jd - np.eye(len(jd)), compute_uv=False)
    return JacobianOperator(run, theta0), s_j, s_d


@pytest.mark.slow
def test_reference_top20_within_1e_3_by_default(reference):
    op, s_j, _ = reference
    top = top_singular_triplets(op, 20)
    assert top.all_converged, (top.rel_residual, top.stop_reason)
    rel = np.abs(top.s - s_j[:20]) / s_j[:20]
    assert rel.max() <= 1e-3, rel
    _, s, _ = golub_kahan_svd(op, 20)  # the adaptive default
    assert (np.abs(s - s_j[:20]) / s_j[:20]).max() <= 1e-3


@pytest.mark.slow
def test_reference_slq_at_1e_2_is_unresolved_not_zero(reference):
    # The failure this guards: 40 steps x 4 probes, the staircase said 0 where the truth is
    # ~1800.
    op, _, s_d = reference
    slq = slq_spectrum(op.with_shift(1.0), num_matvecs=40, num_probes=4)
    c = slq.counts((1e-2,))[1e-2]
    true = int((s_d < 1e-2).sum())
    assert np.isnan(c.estimate) and not c.resolved and c.resolution > 1e-2
    assert c.low <= true <= c.high


@pytest.mark.reference
def test_reference_kpm_counts_against_dense(reference):
    # Deep deflation (benchmarks/jacobian_kpm_reference.py): Golub-Kahan with 1200 steps,
    # the depth picked by the certificate (all 600 candidates: rho_+ ~ 7e-11), so the
    # Chebyshev interval is sigma_601(D) = 1.07 instead of sigma_21 = 11.3. Measured (2
    # loaded CPU cores, 14 min, 15952 products of which 3600 deflation): 0.1 resolved at
    # 3025 (truth 3030), bracket [2967, 3087]; 1e-2 unresolved at degree 1544, bracket
    # [1310, 2080] holding the truth 1804.
    op, _, s_d = reference
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnconvergedWarning)
        res = kpm_counts(
            op.with_shift(1.0), (0.1, 1e-2), num_probes=8, max_products=20000, num_krylov=1200
        )
    assert res.deflated >= 500 and res.products <= 20000, res
    assert res.products == res.deflation_products + res.moment_products
    for t, c in res.counts.items():
        true = int((s_d < t).sum())
        assert c.low <= true <= c.high, (t, c, true)
        if c.resolved:
            assert abs(c.estimate - true) <= (0.02 if t == 0.1 else 0.05) * true, (t, c, true)
        else:
            assert np.isnan(c.estimate)
    c = res.counts[0.1]
    assert c.resolved and c.low > 0, c
