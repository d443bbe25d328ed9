"""Contracts of the certified bulk counts (``dsb.jacobian.kpm_counts``), pinned by value.

Each quantity is recomputed from its definition in ``dsb.jacobian.certified``'s module
docstring, independently of the module's helpers:

* the resolution at degree ``N`` is ``sqrt(L) sin(delta / 2)``, ``delta`` the angle beyond
  which the degree-``N`` Jackson kernel's tail mass (both sides) is at most ``eps``
  (integrated numerically here from the kernel's Chebyshev series);
* a count is resolved exactly when its threshold is above the resolution and its bracket
  is at most ``max(rel_width * estimate, abs_width)`` wide;
* every bracket contains the exact count of a dense SVD, including when a deflated
  direction lies below the threshold (the lower filter then moves DOWN, to
  ``sqrt(t^2 - rho_-)``).
"""

from __future__ import annotations

import math
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from dsb.jacobian import JacobianOperator, TopSingular, UnconvergedWarning, kpm_counts
from dsb.jacobian.certified import kpm_counts_from_moments

pytestmark = pytest.mark.usefixtures("float64")


def jackson_delta_by_quadrature(n: int, eps: float) -> float:
    """The angle ``delta`` where the two-sided tail mass of the degree-``n`` Jackson kernel
    falls to ``eps``: the kernel ``(1/2pi) (g_0 + 2 sum_k g_k cos(k x))`` (Jackson factors
    ``g_k`` for ``n + 1`` moments, Weisse et al. 2006 eq. 71) integrated by the trapezoid
    rule on a fine grid, not by the module's closed form."""
    m = n + 2
    k = np.arange(n + 1)
    g = ((m - k) * np.cos(np.pi * k / m) + np.sin(np.pi * k / m) / np.tan(np.pi / m)) / m
    x = np.linspace(0.0, 25.0 / n, 5001)  # delta ~ 17 / n lies inside
    kern = (g[0] + 2.0 * np.cos(np.outer(x, k[1:])) @ g[1:]) / (2 * np.pi)
    inner = 2.0 * np.concatenate([[0.0], np.cumsum(0.5 * (kern[1:] + kern[:-1]) * np.diff(x))])
    tail = 1.0 - inner  # mass outside [-x, x]
    return float(x[np.flatnonzero(tail <= eps)[0]])


def exact_moments(d, lsq, degree):
    """Exact Chebyshev moments ``tr T_j(2 A^T A / L - I)`` of singular values ``d``."""
    theta = np.arccos(np.clip(2 * d**2 / lsq - 1, -1, 1))
    return np.cos(np.outer(np.arange(degree + 1), theta)).sum(1)[None]


def _rotated(rng, d):
    p = len(d)
    qu, qv = (np.linalg.qr(rng.normal(size=(p, p)))[0] for _ in range(2))
    return qu, qv, (qu * d) @ qv.T


def _spectrum(rng):
    return np.sort(np.concatenate([10 ** rng.uniform(-4, -1.5, 400), rng.uniform(0.03, 1, 300)]))


@pytest.mark.parametrize("degree", [100, 400, 1600])
def test_resolution_is_sqrt_l_sin_half_jackson_width(degree):
    d = _spectrum(np.random.default_rng(degree))
    sigma_max, eps = 1.05, 1e-3
    delta = jackson_delta_by_quadrature(degree, eps)
    expected = sigma_max * math.sin(delta / 2)
    # delta ~ 17 / N at eps = 1e-3 (the module docstring's "N ~ 17 sigma_max / t").
    assert 16 / degree < delta < 18 / degree
    counts = kpm_counts_from_moments(
        exact_moments(d, sigma_max**2, degree), sigma_max, (1e-3, 0.1), num_params=len(d), eps=eps
    )
    for c in counts.values():
        assert c.resolution == pytest.approx(expected, rel=2e-3), (degree, c, expected)
    # Its meaning: no threshold below it is ever resolved (however wide a bracket is
    # allowed), any threshold above it is (when any width is allowed).
    below, above = 0.98 * expected, 1.02 * expected
    wide = kpm_counts_from_moments(
        exact_moments(d, sigma_max**2, degree),
        sigma_max,
        (below, above),
        num_params=len(d),
        eps=eps,
        abs_width=2.0 * len(d),
    )
    assert not wide[below].resolved and np.isnan(wide[below].estimate), wide[below]
    assert wide[above].resolved, wide[above]


def test_resolved_exactly_when_the_bracket_fits_the_asked_width():
    # Brackets do not depend on rel_width: only the verdict does. Just above the bracket's
    # own relative width a count is resolved, just below it is not.
    d = _spectrum(np.random.default_rng(5))
    mom = exact_moments(d, 1.05**2, 800)
    kw = dict(num_params=len(d))
    for t in (0.02, 0.1, 0.5):
        ref = kpm_counts_from_moments(mom, 1.05, (t,), rel_width=10.0, **kw)[t]
        assert ref.resolved and t > ref.resolution
        rel = (ref.high - ref.low) / ref.estimate
        assert rel > 0.01, ref  # a real width, so that the boundary below is meaningful
        for factor, resolved in ((1.02, True), (0.98, False), (0.6, False)):
            c = kpm_counts_from_moments(mom, 1.05, (t,), rel_width=factor * rel, **kw)[t]
            assert (c.low, c.high) == (ref.low, ref.high)
            assert c.resolved is resolved, (t, factor, rel, c)
            assert np.isnan(c.estimate) is not resolved
        # abs_width is the other half of the tolerance.
        w = ref.high - ref.low
        assert kpm_counts_from_moments(mom, 1.05, (t,), rel_width=0, abs_width=1.02 * w, **kw)[
            t
        ].resolved
        assert not kpm_counts_from_moments(mom, 1.05, (t,), rel_width=0, abs_width=0.98 * w, **kw)[
            t
        ].resolved


def test_an_inverted_bracket_is_never_resolved():
    # Deflation inputs that contradict interlacing (30 deflated directions below t claimed,
    # one deflated in all) put the lower bound above the upper one; the bracket's width is
    # then negative, which used to pass the width test.
    d = _spectrum(np.random.default_rng(7))
    mom = exact_moments(d, 1.05**2, 800)
    t = 0.1
    c = kpm_counts_from_moments(
        mom, 1.05, (t,), num_params=len(d), extra_below={t: 30}, num_deflated=1, rel_width=1.0
    )[t]
    assert c.low > c.high, c
    assert not c.resolved and np.isnan(c.estimate), c


def test_kpm_counts_resolution_and_resolved_widths():
    # Through kpm_counts: the reported resolution is that of the degree it stopped at, and
    # every count it reports as resolved has a bracket within the asked width.
    rng = np.random.default_rng(1)
    p = 300
    d = np.concatenate([rng.uniform(3, 10, 4), 10 ** rng.uniform(-4, -1.5, 120)])
    d = np.concatenate([d, rng.uniform(0.03, 1.0, p - len(d))])
    _, _, a = _rotated(rng, d)
    aj = jnp.asarray(a)
    op = JacobianOperator(lambda th: aj @ th, jnp.zeros(p))
    s = np.linalg.svd(a, compute_uv=False)
    rel_width = 0.2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnconvergedWarning)
        res = kpm_counts(
            op, (1e-3, 0.02, 0.1, 0.5), deflate=4, num_probes=8, rel_width=rel_width,
            max_products=6000,
        )  # fmt: skip
    delta = jackson_delta_by_quadrature(res.degree, 1e-3)
    expected = res.sigma_max * math.sin(delta / 2)
    assert res.resolution == pytest.approx(expected, rel=2e-3), (res, expected)
    assert all(c.resolution == res.resolution for c in res.counts.values())
    assert not res.counts[1e-3].resolved and 1e-3 < res.resolution
    # The Jackson width constant of the cost model: delta ~ jconst / N, its value at N = 256.
    assert res.jconst == pytest.approx(256 * jackson_delta_by_quadrature(256, 1e-3), rel=1e-3)
    resolved = 0
    for t, c in res.counts.items():
        true = int((s < t).sum())
        assert c.low <= true <= c.high, (t, true, c)
        if c.resolved:
            resolved += 1
            assert t > c.resolution
            assert c.high - c.low <= rel_width * c.estimate, (rel_width, c)
            assert c.low <= c.estimate <= c.high
        else:
            assert np.isnan(c.estimate)
    assert resolved >= 1, res


def _mixed_top(d, qu, qv, n_exact, small, big, sin2):
    """A ``TopSingular`` whose first ``n_exact`` triplets are exact and whose last right
    vector mixes the singular direction ``small`` (weight ``1 - sin2``) with ``big``: a
    deflated direction with Rayleigh quotient ``(1 - sin2) d_small^2 + sin2 d_big^2``,
    coupled to the rest of the space. A last, exact triplet (``big``, not deflated) gives
    ``kpm_counts`` the bound on the deflated spectrum (the next Ritz value)."""
    order = [*np.argsort(d)[::-1][:n_exact], small, big]
    vt = qv[:, order].T.copy()
    vt[-2] = math.sqrt(1 - sin2) * qv[:, small] + math.sqrt(sin2) * qv[:, big]
    s = d[order]
    zeros = np.zeros(len(order))
    return TopSingular(qu[:, order], s, vt, zeros, zeros, 1e-3, len(order), 0, 0.0, "given")


@pytest.mark.parametrize("sin2", [5e-3, 2e-5])
def test_brackets_contain_the_dense_count_with_a_deflated_direction_below_threshold(sin2):
    # 64 singular values below t = 0.1, 200 just above it (0.11 .. 0.3), the rest spread,
    # 4 large. The deflation takes the 4 large exactly plus one direction that is mostly a
    # singular vector below t (sigma = 0.02) with a little of one at sigma = 1: its Rayleigh
    # quotient is below t^2, so the certificate's rho_- > 0 and the lower filter must move
    # down to sqrt(t^2 - rho_-) (with sin2 = 5e-3, rho_- > t^2: no lower filter at all; with
    # sin2 = 2e-5, rho_- ~ 2e-3 < t^2: a lower filter moved down by ~10%). Moving it up
    # instead counts the cluster above t as below it.
    rng = np.random.default_rng(11)
    p = 400
    d = np.concatenate(
        [
            [0.02],
            rng.uniform(0.01, 0.08, 63),
            rng.uniform(0.11, 0.3, 200),
            [1.0],
            rng.uniform(0.4, 0.9, p - 269),
            rng.uniform(3, 10, 4),
        ]
    )
    assert len(d) == p
    qu, qv, a = _rotated(rng, d)
    aj = jnp.asarray(a)
    op = JacobianOperator(lambda th: aj @ th, jnp.zeros(p))
    top = _mixed_top(d, qu, qv, 4, small=0, big=264, sin2=sin2)
    s = np.linalg.svd(a, compute_uv=False)
    thresholds = (5e-3, 0.05, 0.1, 0.2, 0.6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnconvergedWarning)
        res = kpm_counts(
            op, thresholds, deflate=5, top=top, num_probes=8, rel_width=0.2, max_products=8000
        )
    assert res.deflated == 5
    defl = res.deflation
    rayleigh = (1 - sin2) * 0.02**2 + sin2 * 1.0**2
    branches = set()
    for t, c in res.counts.items():
        true = int((s < t).sum())
        below, _, rho_lo = defl.certificate(5, t)
        # The branch each threshold takes: below the mixed direction's Rayleigh quotient
        # the usual one (rho_- = 0), above it the corrected lower filter (rho_- > 0).
        assert below == int(t * t > rayleigh), (t, below)
        assert (rho_lo > 0) == (t * t > rayleigh), (t, rho_lo)
        branches.add(below)
        assert c.low <= true <= c.high, (t, true, c, rho_lo)
        if c.resolved:
            assert abs(c.estimate - true) <= c.high - c.low, (t, true, c)
            assert c.high - c.low <= 0.2 * c.estimate, (t, c)
    assert int((s < 0.1).sum()) == 64 and branches == {0, 1}
    # The counts are those of its moments with the certificate's terms where the module
    # docstring puts them: the count below t^2 added, rho_+ moving the upper filter to
    # sqrt(t^2 + rho_+), rho_- the lower one to sqrt(t^2 - rho_-).
    cert = {t: defl.certificate(5, t) for t in thresholds}
    again = kpm_counts_from_moments(
        res.moments, res.sigma_max, thresholds, num_params=p, eps=1e-3, z_score=3.0,
        rel_width=0.2, extra_below={t: c[0] for t, c in cert.items()},
        shift_above={t: c[1] for t, c in cert.items()},
        shift_below={t: c[2] for t, c in cert.items()}, num_deflated=5,
    )  # fmt: skip
    for t in thresholds:
        assert (again[t].low, again[t].high) == (res.counts[t].low, res.counts[t].high), t
    assert any(c[1] != c[2] for c in cert.values())
    if sin2 == 2e-5:
        _, _, rho_lo = defl.certificate(5, 0.1)
        assert 0 < rho_lo < 0.1**2  # the lower filter exists and is moved, not dropped


def test_interlacing_intersects_the_shifted_bracket_with_the_unshifted_one():
    # Docstring: with num_deflated = k the bracket is also intersected with interlacing's
    # [count(C < t), count(C < t) + k], both around the UNSHIFTED threshold. Exact moments
    # (one row, no standard error): a lower filter moved down by shift_below gives a lower
    # bound below the unshifted one, and the intersection takes the unshifted one back.
    d = _spectrum(np.random.default_rng(3))
    mom = exact_moments(d, 1.05**2, 800)
    t, kw = 0.1, dict(num_params=len(d))
    shifted = kpm_counts_from_moments(mom, 1.05, (t,), shift_below={t: 0.5 * t * t}, **kw)[t]
    plain = kpm_counts_from_moments(mom, 1.05, (t,), **kw)[t]
    both = kpm_counts_from_moments(
        mom, 1.05, (t,), shift_below={t: 0.5 * t * t}, num_deflated=1, **kw
    )[t]
    assert shifted.low < plain.low  # the shift is real
    assert both.low == max(shifted.low, plain.low) == plain.low
    assert both.high == min(shifted.high, plain.high + 1)


def test_exact_moments_have_no_statistical_width_and_z_scales_it():
    # stat_width = z_score x (standard errors of the two filters over the probes): 0 for
    # one exact row; with two rows it is linear in z_score.
    d = _spectrum(np.random.default_rng(4))
    mom = exact_moments(d, 1.05**2, 400)
    c = kpm_counts_from_moments(mom, 1.05, (0.1,), num_params=len(d))[0.1]
    assert c.stat_width == 0.0
    two = np.concatenate([mom, exact_moments(d[::-1] * 0.9, 1.05**2, 400)])
    w3, w6 = (
        kpm_counts_from_moments(two, 1.05, (0.1,), num_params=len(d), z_score=z)[0.1].stat_width
        for z in (3.0, 6.0)
    )
    assert w3 > 0 and w6 == pytest.approx(2 * w3, rel=1e-12)


def test_from_moments_defaults_are_kpm_counts_defaults():
    import inspect

    ours = inspect.signature(kpm_counts_from_moments).parameters
    theirs = inspect.signature(kpm_counts).parameters
    for name in ("rel_width", "z_score", "eps"):
        assert ours[name].default == theirs[name].default, name


def test_schur_shifts_follow_the_certificate_definition():
    # rho_+- = lambda_max(D Y D) over the eigenvalues of H above (below) tau, with
    # D = |ev - tau|^-1/2 and Y the Gram of X in H's eigenbasis; count = #(ev < tau).
    from dsb.jacobian.certified import _schur_shifts

    rng = np.random.default_rng(6)
    ev = np.array([0.2, 0.5, 1.5, 3.0])
    q = np.linalg.qr(rng.standard_normal((4, 4)))[0]
    h = (q * ev) @ q.T
    x = rng.standard_normal((4, 6))
    xtx = x @ x.T
    tau = 1.0
    y = q.T @ xtx @ q
    gap = ev - tau

    def rho(mask):
        dd = 1 / np.sqrt(np.abs(gap[mask]))
        return np.linalg.eigvalsh(dd[:, None] * y[np.ix_(mask, mask)] * dd[None, :])[-1]

    below, rho_hi, rho_lo = _schur_shifts(h, xtx, tau)
    assert below == 2
    assert rho_hi == pytest.approx(rho(gap > 0), rel=1e-10)
    assert rho_lo == pytest.approx(rho(gap < 0), rel=1e-10)


def test_extra_below_shifts_the_bracket_and_the_estimate_by_that_count():
    # extra_below[t] (the deflated block's count below t) is added to low, high and the
    # estimate alike.
    d = _spectrum(np.random.default_rng(8))
    mom = exact_moments(d, 1.05**2, 800)
    kw = dict(num_params=len(d) + 10, rel_width=10.0)
    plain = kpm_counts_from_moments(mom, 1.05, (0.1,), **kw)[0.1]
    more = kpm_counts_from_moments(mom, 1.05, (0.1,), extra_below={0.1: 5}, **kw)[0.1]
    assert plain.resolved and more.resolved
    assert (more.low, more.high) == pytest.approx((plain.low + 5, plain.high + 5), abs=1e-9)
    assert more.estimate == pytest.approx(plain.estimate + 5, abs=1e-9)


def test_schur_shifts_at_an_eigenvalue_and_an_empty_deflation():
    # tau exactly an eigenvalue of H: the count is #(ev < tau) and rho is infinite; no
    # deflated direction: nothing below, no coupling.
    from dsb.jacobian.certified import Deflation, _schur_shifts

    h = np.diag([0.2, 0.5, 1.5, 3.0])
    assert _schur_shifts(h, np.eye(4), 1.5) == (2, math.inf, math.inf)
    assert _schur_shifts(h, np.eye(4), 0.5) == (1, math.inf, math.inf)
    empty = Deflation(np.zeros((0, 5)), np.zeros((0, 5)), np.ones(2), 0, 0)
    assert empty.certificate(0, 0.3) == (0, 0.0, 0.0)


def test_deflation_from_given_triplets_by_value():
    # deflation_subspace(top=...): the rows top.Vt[:k] re-orthonormalised (same prefixes),
    # M v = A^T A v by 2k explicit products, and the Chebyshev interval bounds
    # ritz = s + max(residual_left, residual_right) (the next Ritz value plus its residual).
    from dsb.jacobian.certified import deflation_subspace

    rng = np.random.default_rng(7)
    p = 12
    a = rng.normal(size=(p, p)) / 4
    aj = jnp.asarray(a)
    op = JacobianOperator(lambda th: aj @ th, jnp.zeros(p))
    _, s, vt = np.linalg.svd(a)
    vt3 = vt[:3] + 1e-3 * rng.normal(size=(3, p))  # inexact, not orthonormal
    left, right = np.array([0.1, 0.2, 0.05]), np.array([0.3, 0.0, 0.1])
    top = TopSingular(np.eye(p)[:, :3], s[:3], vt3, left, right, 1e-3, 17, 0, 0.0, "given")
    defl = deflation_subspace(op, 2, top=top)
    np.testing.assert_allclose(defl.ritz, s[:3] + np.maximum(left, right), rtol=1e-12)
    assert (defl.products, defl.num_krylov, defl.size) == (4, 17, 2)
    np.testing.assert_allclose(defl.Vt @ defl.Vt.T, np.eye(2), atol=1e-12)
    q = np.linalg.qr(vt3[:2].T)[0]
    np.testing.assert_allclose(np.abs(defl.Vt @ q), np.eye(2), atol=1e-12)  # same prefixes
    np.testing.assert_allclose(defl.MVt, defl.Vt @ a.T @ a, atol=1e-12)
    with pytest.raises(ValueError, match="k=4 > 3 triplets in top"):
        deflation_subspace(op, 4, top=top)
    with pytest.raises(ValueError, match=r"k must be in \[0, P=12\), got 12"):
        deflation_subspace(op, 12)


def test_deflation_krylov_start_and_depth(monkeypatch):
    # Without top: Golub-Kahan from v0 = normal(key, (P,)) (key(0) by default) for
    # m = min(max(num_krylov or max(2k + 10, 40), k + 1), P) steps, read off the call (a
    # stand-in that stops there: no compile).
    import jax

    import dsb.jacobian.certified as certified
    from dsb.jacobian.krylov import work_dtype

    class Stop(Exception):
        pass

    def stand_in(f, v0, m, **kw):
        raise Stop(np.asarray(v0), m)

    monkeypatch.setattr(certified, "golub_kahan", stand_in)
    p = 60
    op = JacobianOperator(lambda th: th, jnp.zeros(p))

    def start_and_depth(k, num_krylov=None, key=None):
        with pytest.raises(Stop) as e:
            certified.deflation_subspace(op, k, num_krylov=num_krylov, key=key)
        return e.value.args

    def normal(seed):
        return np.asarray(jax.random.normal(jax.random.key(seed), (p,), work_dtype()))

    v0, m = start_and_depth(2)
    np.testing.assert_array_equal(v0, normal(0))
    assert m == 40
    v0, _ = start_and_depth(2, key=jax.random.key(5))
    np.testing.assert_array_equal(v0, normal(5))
    assert [start_and_depth(20)[1], start_and_depth(30)[1]] == [50, p]
    assert [start_and_depth(3, 2)[1], start_and_depth(3, 7)[1]] == [4, 7]
    with pytest.raises(TypeError):  # the options are keyword-only
        certified.deflation_subspace(op, 2, 10)


def test_deflation_counts_two_products_per_krylov_step_and_per_direction(monkeypatch):
    # 2 m Golub-Kahan products (a J v and a J^T u per step) plus 2 k for M v; the
    # Golub-Kahan run itself replaced by a stand-in returning m orthonormal rows.
    import dsb.jacobian.certified as certified

    p, m, k = 10, 7, 3
    rows = np.linalg.qr(np.random.default_rng(9).normal(size=(p, m)))[0].T

    def stand_in(f, v0, m_, **kw):
        return None, np.linspace(2.0, 1.0, m_), rows[:m_]

    monkeypatch.setattr(certified, "golub_kahan", stand_in)
    op = JacobianOperator(lambda th: 2.0 * th, jnp.zeros(p))
    defl = certified.deflation_subspace(op, k, num_krylov=m)
    assert (defl.products, defl.num_krylov, defl.size) == (2 * m + 2 * k, m, k)
    np.testing.assert_allclose(defl.MVt, 4.0 * defl.Vt, atol=1e-12)  # A^T A = 4 I


def test_kpm_counts_accepts_no_deflation_and_refuses_depths_outside_0_p(monkeypatch):
    import dsb.jacobian.certified as certified

    class Stop(Exception):
        pass

    def stand_in(op, thresholds, **kw):
        raise Stop(kw["deflate"])

    monkeypatch.setattr(certified, "_deflate", stand_in)
    op = JacobianOperator(lambda th: th, jnp.zeros(5))
    with pytest.raises(Stop) as e:  # deflate=0 passes the checks
        certified.kpm_counts(op, (0.1,), deflate=0)
    assert e.value.args == (0,)
    for bad in (-1, 5):
        with pytest.raises(ValueError, match=rf"deflate must be in \[0, P=5\), got {bad}"):
            certified.kpm_counts(op, (0.1,), deflate=bad)
