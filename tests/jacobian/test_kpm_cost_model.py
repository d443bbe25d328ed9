"""The cost model behind ``kpm_counts(deflate=None)``, pinned by value.

Each quantity is recomputed here from the definitions in ``dsb.jacobian.certified``:

* moments for threshold ``t`` at deflated top ``s``: ``n * 4 jconst / phi_t`` Jacobian
  products, ``phi_t = 2 arcsin(min(t / s, 1))``;
* the depth minimises ``6 k + moments(margin * ritz[k])`` (``ritz[k]`` estimates
  ``sigma_{k+1}``, what deflating ``k`` leaves);
* the products that would resolve an unresolved count: its systematic width shrinks like
  ``1 / N`` and its statistical width like ``1 / sqrt(n)``, or the cost model's degree
  where ``t`` is below the resolution;
* the time rule: a move whose predicted seconds (measured seconds per product times its
  products) would overrun ``max_seconds`` is not made.
"""

from __future__ import annotations

import math
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from dsb.jacobian import JacobianOperator, UnconvergedWarning, kpm_counts
from dsb.jacobian.certified import (
    _next_move,
    cost_optimal_depth,
    jackson_delta,
    predicted_moment_products,
    products_to_resolve,
)
from dsb.jacobian.estimates import CountEstimate

pytestmark = pytest.mark.usefixtures("float64")

JCONST = jackson_delta(256, 1e-3) * 256


def test_predicted_moment_products_by_value():
    for s, t, n in [(1.1, 0.1, 8), (14.5, 0.01, 4), (0.05, 0.1, 8)]:
        phi = 2 * math.asin(min(t / s, 1.0))
        want = n * 4 * JCONST / phi
        assert predicted_moment_products(s, t, num_probes=n, jconst=JCONST) == pytest.approx(
            want, rel=1e-12
        )
    # ~ n * 2 jconst s / t for t << s: 34 s / t per probe at eps = 1e-3.
    assert predicted_moment_products(1.0, 1e-3, num_probes=1, jconst=JCONST) == pytest.approx(
        2 * JCONST / 1e-3, rel=1e-6
    )


def brute_force_depth(ritz, t, k_max, n, margin, per_direction=6.0):
    costs = []
    for k in range(k_max + 1):
        s = margin * ritz[k]
        costs.append(per_direction * k + n * 4 * JCONST / (2 * math.asin(min(t / s, 1.0))))
    return int(np.argmin(costs)), costs


@pytest.mark.parametrize("t", [0.1, 1e-2])
def test_cost_optimal_depth_is_the_brute_force_argmin(t):
    # A reference-like top: a steep fall from 15 to ~1 over 600 values, then flat.
    rng = np.random.default_rng(0)
    ritz = np.sort(np.concatenate([15 ** rng.uniform(0.02, 1, 600), rng.uniform(0.9, 1.0, 600)]))
    ritz = ritz[::-1]
    k_max = 800
    k = cost_optimal_depth(ritz, t, k_max=k_max, num_probes=8, jconst=JCONST, margin=1.05)
    want, costs = brute_force_depth(ritz, t, k_max, 8, 1.05)
    assert k == want, (k, want)
    # Deepening to it pays and one more (or one fewer) direction does not.
    assert costs[k] <= costs[min(k + 1, k_max)] and costs[k] <= costs[max(k - 1, 0)]
    assert 500 <= k <= 640, k  # inside the fall's tail: the flat part does not pay
    # A flat spectrum is not worth deflating; k_max caps the depth.
    flat = np.full(100, 1.0)
    assert cost_optimal_depth(flat, t, k_max=50, num_probes=8, jconst=JCONST, margin=1.05) == 0
    assert cost_optimal_depth(ritz, t, k_max=100, num_probes=8, jconst=JCONST, margin=1.05) == 100


def _count(t, low, high, stat, resolution=1e-3, resolved=False):
    est = 0.5 * (low + high) if resolved else float("nan")
    return CountEstimate(t, est, low, high, resolved, resolution, 1.0, stat)


def test_products_to_resolve_by_value():
    kw = dict(degree=1000, num_probes=8, sigma_max=1.1, rel_width=0.1, jconst=JCONST)
    # Mostly systematic: bracket [1300, 2100], stat 60; allowed w = 0.1 * 1700 = 170:
    # N' = 1000 * (800 - 60) / (170 - 60), probes stay.
    c = _count(0.01, 1300.0, 2100.0, 60.0)
    want = 500 + 8 * 1000 * (800 - 60) / (170 - 60)
    assert products_to_resolve(c, deflation_products=500, **kw) == pytest.approx(want)
    # Mostly statistical: stat 120 > w / 2 = 85: n' = 8 (240 / 170)^2, N' = N * 80 / 85
    # raised to N (the degree is never lowered).
    c = _count(0.01, 1600.0, 1800.0, 120.0)
    n_new = 8 * (2 * 120 / 170) ** 2
    assert products_to_resolve(c, **kw) == pytest.approx(n_new * 1000)
    # Both: stat 100 > 85 and w_sys = 300: n' as above with 100, N' = N * 300 / 85.
    c = _count(0.01, 1500.0, 1900.0, 100.0)
    want = 8 * (200 / 170) ** 2 * 1000 * 300 / 85
    assert products_to_resolve(c, **kw) == pytest.approx(want)
    # Below the resolution: the cost model's degree 4 jconst / phi_t, same probes.
    c = _count(1e-3, 0.0, 2000.0, 10.0, resolution=6e-3)
    phi = 2 * math.asin(1e-3 / 1.1)
    assert products_to_resolve(c, deflation_products=7, **kw) == pytest.approx(
        7 + 8 * 4 * JCONST / phi
    )
    # Resolved: nothing more.
    assert products_to_resolve(_count(0.1, 2950, 3100, 50, resolved=True), **kw) == 0.0


def test_next_move_stops_when_the_measured_rate_says_the_move_overruns():
    c = {0.01: _count(0.01, 1300.0, 2100.0, 60.0)}  # systematic: the move is "degree"
    kw = dict(deg=1000, num_probes=8, products=10_000, max_products=10**6, max_degree=10**6)
    # The move costs 1001 * 8 products: at 0.05 s each, 400.4 s.
    assert _next_move(c, elapsed=1000.0, max_seconds=1401.0, seconds_per_product=0.05, **kw) == (
        "degree"
    )
    assert _next_move(c, elapsed=1000.0, max_seconds=1400.0, seconds_per_product=0.05, **kw) == (
        "max_seconds"
    )
    # Without a rate, the old rule: the move takes 1.2 x what was spent.
    assert _next_move(c, elapsed=1000.0, max_seconds=2199.0, **kw) == "max_seconds"
    assert _next_move(c, elapsed=1000.0, max_seconds=2201.0, **kw) == "degree"


def _random_operator(p, num_large, *, decades):
    """A dense [p, p] map with ``num_large`` singular values 3 to ``3 * 10^decades`` over a
    bulk between 1e-3 and 1, in random bases (seed 3); returns ``(op, singular values)``."""
    rng = np.random.default_rng(3)
    d = np.concatenate(
        [3 * 10 ** rng.uniform(0, decades, num_large), 10 ** rng.uniform(-3, 0, p - num_large)]
    )
    qu, qv = (np.linalg.qr(rng.normal(size=(p, p)))[0] for _ in range(2))
    aj = jnp.asarray((qu * d) @ qv.T)
    return JacobianOperator(lambda th: aj @ th, jnp.zeros(p)), d


def test_default_depth_on_a_small_model_is_the_cost_optimum_within_the_cap():
    # P = 300 with 30 large singular values (3 to 300) over a bulk below 1: the automatic
    # depth is the cost model's optimum over the Golub-Kahan Ritz values it got, the
    # deflation stays within a quarter of the budget and never reaches P.
    p = 300
    op, d = _random_operator(p, 30, decades=2)
    budget = 4000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnconvergedWarning)
        res = kpm_counts(op, (0.1, 1e-2), num_probes=8, max_products=budget)
    defl = res.deflation
    assert res.deflation_products <= 0.25 * budget, res
    assert 0 < res.deflated < p
    # The depth: the optimum at the smallest threshold whose predicted cost fits what
    # the Golub-Kahan runs left of the budget (the certificate accepts exact directions).
    spent_gk = res.deflation_products - 2 * res.deflated
    k_max = min(defl.num_krylov // 2, p - 1)
    for t in (1e-2, 0.1):
        k, costs = brute_force_depth(defl.ritz, t, k_max, 8, 1.05)
        if 2 * k + costs[k] - 6 * k <= budget - spent_gk or t == 0.1:
            break
    assert res.deflated == k, (res.deflated, k)
    assert res.deflated >= 30  # the 30 large values are all worth deflating
    # The Chebyshev interval is the next Ritz value with the margin.
    assert res.sigma_max == pytest.approx(1.05 * defl.ritz[res.deflated], rel=1e-12)
    s = np.sort(d)[::-1]
    for t, c in res.counts.items():
        true = int((s < t).sum())
        assert c.low <= true <= c.high, (t, c, true)


def test_ghost_rows_are_dropped_and_prefixes_follow_the_rayleigh_quotients():
    # A diagonal D (singular values d, right vectors e_i). Candidate rows: e_0, a ghost
    # copy of e_0 (1e-6 off: a float32 Krylov basis' duplicate), e_5, e_1 (out of order,
    # with a wrong Ritz value for e_5, as after a breakdown). The ghost is dropped; the
    # rest is rotated so that the prefixes follow the Rayleigh quotients d_0, d_1, d_5,
    # and every prefix's certificate is exact (rho = 0 to rounding).
    import time

    from dsb.jacobian.certified import _certified_deflation

    p = 40
    d = np.linspace(10.0, 0.05, p)
    op = JacobianOperator(lambda th: jnp.asarray(d) * th, jnp.zeros(p))
    eye = np.eye(p)
    rng = np.random.default_rng(0)
    ghost = eye[0] + 1e-6 * rng.normal(size=p)
    vt = np.stack([eye[0], ghost / np.linalg.norm(ghost), eye[5], eye[1]])
    ritz = np.array([10.0, 10.0, 9.9, 9.7, 9.5, 9.0])  # wrong for e_5 (d_5 = 8.73)
    defl = _certified_deflation(op, vt, ritz, 0, 8, 64, time.perf_counter(), rotate=True)
    assert defl.size == 3 and defl.products == 6
    np.testing.assert_allclose(defl.ritz[:3], d[[0, 1, 5]], rtol=1e-12)
    np.testing.assert_allclose(defl.ritz[3:], ritz[4:])  # the tail after the k rows
    for j in (1, 2, 3):
        below, rho_hi, rho_lo = defl.certificate(j, 0.1)
        assert below == 0 and rho_hi < 1e-20 and rho_lo == 0.0, (j, rho_hi)
    np.testing.assert_allclose(np.abs(defl.Vt), eye[[0, 1, 5]], atol=1e-12)


def test_progress_is_logged_with_the_results_own_numbers(caplog):
    # kpm_counts logs each Golub-Kahan run, the deflation it chose and every move with
    # its brackets; the lines carry the numbers of the result it returns.
    op, _ = _random_operator(120, 10, decades=1)
    caplog.set_level("INFO", logger="dsb.jacobian.certified")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnconvergedWarning)
        res = kpm_counts(op, (0.1,), max_products=1500)
    assert res.deflated > 0
    c = res.counts[0.1]
    msgs = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("kpm_counts: Golub-Kahan with 40 steps") for m in msgs), msgs
    want = f"deflated {res.deflated} directions ({res.deflation_products} products"
    assert any(want in m for m in msgs), msgs
    last = [m for m in msgs if m.startswith("kpm_counts: degree")][-1]
    assert last.startswith(
        f"kpm_counts: degree {res.degree}, {res.num_probes} probes, {res.products} of 1500"
    ), (last, res)
    assert f"[{c.low:.0f}, {c.high:.0f}]" in last
