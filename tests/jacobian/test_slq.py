"""Stochastic Lanczos quadrature against diagonal operators with known spectra.

With Rademacher probes every probe sees the same spectral measure, ``(1/P) sum_i delta``,
so the Chebyshev-Markov-Stieltjes bracket of ``SLQResult.count_bounds`` must contain the
exact count for *every* probe, not just on average.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from dsb.jacobian import JacobianOperator, SLQResult, slq_spectrum

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
