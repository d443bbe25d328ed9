"""OT edits: Gaussian/Bures map against closed forms and ott-jax, CQN exact, mean shift."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsb.data.digits import digits_arrays
from dsb.stats import ot
from dsb.stats.moments import ClassStats, fit_class_stats

pytestmark = pytest.mark.usefixtures("one_blas_thread")


def _spd(rng, d, scale=1.0):
    a = rng.standard_normal((d, d))
    return scale * (a @ a.T / d + 0.1 * np.eye(d))


def _stats(means, covs):
    k = len(means)
    return ClassStats(np.full(k, 10), np.full(k, 1 / k), np.asarray(means), np.asarray(covs))


def test_map_pushes_covariance_and_is_symmetric_psd():
    rng = np.random.default_rng(0)
    d = 7
    s, t = _spd(rng, d), _spd(rng, d, 3.0)
    a = ot.gaussian_ot_map(_stats(np.zeros((2, d)), [s, t]), 0, 1)
    np.testing.assert_allclose(a @ s @ a.T, t, atol=1e-10)
    np.testing.assert_allclose(a, a.T, atol=1e-12)
    assert np.linalg.eigvalsh(a).min() > 0


def test_map_closed_form_for_commuting_covariances():
    rng = np.random.default_rng(1)
    d = 6
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    ls, lt = rng.uniform(0.1, 2, d), rng.uniform(0.1, 2, d)
    st = _stats(np.zeros((2, d)), [(q * ls) @ q.T, (q * lt) @ q.T])
    np.testing.assert_allclose(
        ot.gaussian_ot_map(st, 0, 1), (q * np.sqrt(lt / ls)) @ q.T, atol=1e-12
    )


def test_map_agrees_with_ott():
    from ott.tools.gaussian_mixture.gaussian import Gaussian

    rng = np.random.default_rng(2)
    d = 5
    mus = rng.uniform(0.2, 0.8, (2, d))
    covs = [_spd(rng, d, 0.05), _spd(rng, d, 0.02)]
    st = _stats(mus, covs)
    pts = rng.uniform(0, 1, (50, d))
    ours = ot.gaussian_ot_edit(st, pts, np.zeros(50, int), np.ones(50, int)).x_NxD
    with jax.enable_x64(True):
        g0 = Gaussian.from_mean_and_cov(jnp.asarray(mus[0]), jnp.asarray(covs[0]))
        g1 = Gaussian.from_mean_and_cov(jnp.asarray(mus[1]), jnp.asarray(covs[1]))
        theirs = np.asarray(g0.transport(g1, jnp.asarray(pts)))
    np.testing.assert_allclose(ours, theirs, atol=1e-5)  # ott's Newton-Schulz sqrtm: ~1e-6


def test_edit_maps_fitted_class_exactly_onto_target_moments():
    # The map is affine, so editing the very samples the stats were fitted on gives
    # empirical target moments up to round-off.
    rng = np.random.default_rng(3)
    d, n = 6, 400
    x = np.concatenate(
        [rng.multivariate_normal(rng.uniform(0, 1, d), _spd(rng, d, 0.01), n) for _ in range(3)]
    )
    y = np.repeat(np.arange(3), n)
    st = fit_class_stats([(x, y)], 3, num_bins=0)
    tgt = ot.draw_targets(y, 3, seed=0)
    e = ot.gaussian_ot_edit(st, x, y, tgt)
    # A random (s, t) subgroup's moments are not the class moments; edit whole classes.
    for s in range(3):
        t = (s + 1) % 3
        xs = x[y == s]
        out = ot.gaussian_ot_edit(st, xs, np.full(n, s), np.full(n, t)).x_NxD.astype(np.float64)
        np.testing.assert_allclose(out.mean(0), st.mean_KxD[t], atol=1e-6)
        np.testing.assert_allclose(np.cov(out.T, bias=True), st.cov_KxDxD[t], atol=1e-6)
    assert e.report.extra["pairs"] == 6
    np.testing.assert_array_equal(e.src_N, y)
    assert np.all(e.y_N != e.src_N)


def test_draw_targets_fixed_and_valid():
    src = np.repeat(np.arange(10), 100)
    a = ot.draw_targets(src, 10, seed=5)
    np.testing.assert_array_equal(a, ot.draw_targets(src, 10, seed=5))
    assert np.all(a != src) and set(np.unique(a)) == set(range(10))


def test_cqn_exact_in_1d():
    # Source uniform on {k/255 : k < 128}, target on {2k/255}: the monotone map is x -> 2x,
    # and with atom splitting every source atom lands on exactly its target atom.
    k = np.arange(128)
    x = np.concatenate([np.repeat(k, 3), np.repeat(2 * k, 3)])[:, None] / 255.0
    y = np.repeat([0, 1], 384)
    st = fit_class_stats([(x, y)], 2)
    src = x[y == 0]
    e = ot.cqn_edit(st, src, np.zeros(384, int), np.ones(384, int), seed=0)
    np.testing.assert_allclose(e.x_NxD[:, 0], 2 * src[:, 0], atol=1e-6)


def test_cqn_matches_target_marginals_on_digits():
    x, y = digits_arrays()["train"]
    x = x.reshape(len(x), -1).astype(np.float64)
    st = fit_class_stats([(x, y)], 10)
    xs = x[y == 3]
    e = ot.cqn_edit(st, xs, np.full(len(xs), 3), np.full(len(xs), 8), seed=0)
    # Per pixel the coupling is monotone: a strictly larger source value never gets a
    # smaller edited value (ties in the source are split at random, as OT between atoms
    # requires). Means follow class 8 up to the sampling error of |class 3| uniforms.
    for j in range(64):
        order = np.lexsort((e.x_NxD[:, j], xs[:, j]))
        assert np.all(np.diff(e.x_NxD[order, j]) >= 0)
        assert set(np.unique(e.x_NxD[:, j])) <= set(np.unique(x[y == 8][:, j]).astype(np.float32))
    np.testing.assert_allclose(e.x_NxD.mean(0), st.mean_KxD[8], atol=0.1)
    assert e.report.mean_rel_err < 0.05


def test_mean_shift_hits_target_mean():
    x, y = digits_arrays()["test"]
    x = x.reshape(len(x), -1)
    st = fit_class_stats([(x, y)], 10)
    tgt = ot.draw_targets(y, 10, seed=0)
    e = ot.mean_shift_edit(st, x, y, tgt)
    assert np.all((e.x_NxD >= 0) & (e.x_NxD <= 1))
    for t in np.unique(tgt):
        np.testing.assert_allclose(e.x_NxD[tgt == t].mean(0), st.mean_KxD[t], atol=2e-6)
    assert e.report.extra["max_abs_mean_gap"] < 1e-6


@pytest.mark.parametrize("clip", [False, True])
def test_gaussian_edit_clip_option_reported(clip):
    x, y = digits_arrays()["test"]
    x = x.reshape(len(x), -1)
    st = fit_class_stats([(x, y)], 10, shrinkage=(1.0, 0.01))
    e = ot.gaussian_ot_edit(st, x, y, ot.draw_targets(y, 10), clip=clip)
    assert e.report.extra["clip"] is clip
    assert 0 <= e.report.extra["frac_outside_box"] <= 1
    if clip:
        assert np.all((e.x_NxD >= 0) & (e.x_NxD <= 1))


def test_edit_factors_float32_agree_with_float64_map():
    # gaussian_ot_edit stores the source eigenvectors in float32 by default (the
    # decompositions themselves are float64). Against the explicit float64 map, on
    # image-like covariances (low rank plus a small ridge, spectrum over ~4 decades):
    rng = np.random.default_rng(4)
    d, k = 96, 3
    covs, means = [], rng.uniform(0.3, 0.7, (k, d))
    for _ in range(k):
        b = rng.standard_normal((d, 24)) * (0.1 / np.sqrt(24))
        covs.append(b @ b.T + 1e-5 * np.eye(d))
    st = _stats(means, covs)
    x = np.clip(rng.multivariate_normal(means[0], covs[0], 40), 0, 1)
    src, tgt = np.zeros(40, int), np.repeat([1, 2], 20)
    want = np.empty_like(x)
    for t in (1, 2):
        m = tgt == t
        want[m] = means[t] + (x[m] - means[0]) @ ot.gaussian_ot_map(st, 0, t).T
    e64 = ot.gaussian_ot_edit(st, x, src, tgt, factor_dtype=np.float64).x_NxD
    e32 = ot.gaussian_ot_edit(st, x, src, tgt).x_NxD
    np.testing.assert_allclose(e64, want, atol=1e-6)  # float32 output rounding only
    np.testing.assert_allclose(e32, want, atol=1e-5)  # measured ~1e-7; 1/255 is 4e-3
    evr = ot.gaussian_ot_edit(st, x, src, tgt, pair_driver="evr").x_NxD
    np.testing.assert_allclose(evr, want, atol=1e-5)
