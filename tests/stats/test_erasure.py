"""LEACE equalises class means (linear probe at chance); QLEACE equalises covariances."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from dsb.stats import erasure
from dsb.stats.moments import ClassStats, fit_class_stats

pytestmark = pytest.mark.usefixtures("one_blas_thread")


def test_leace_equalises_class_means_and_kills_linear_probe(digits_train_test_flat):
    x, y, xt, yt = digits_train_test_flat
    st = fit_class_stats([(x, y)], 10)
    eraser = erasure.fit_leace(st)
    assert eraser.left_DxR.shape[1] <= 9
    xe = eraser(x, y)
    means = np.stack([xe[y == k].mean(0) for k in range(10)])
    np.testing.assert_allclose(means, np.broadcast_to(xe.mean(0), means.shape), atol=1e-10)
    before = LogisticRegression(max_iter=1000).fit(x, y).score(x, y)
    after = LogisticRegression(max_iter=300, tol=1e-3).fit(xe, y).score(xe, y)
    chance = np.bincount(y).max() / len(y)
    assert before > 0.95
    assert after < chance + 0.03, (after, chance)
    # Applies to another split; shape and dtype are kept.
    out = eraser(xt, yt)
    assert out.shape == xt.shape and out.dtype == xt.dtype


def test_leace_least_change_on_a_known_case():
    # Two classes differing only along e_0 with isotropic noise: LEACE removes exactly the
    # e_0 coordinate's deviation from its mean and leaves the others untouched.
    rng = np.random.default_rng(0)
    n, d = 4000, 5
    y = rng.integers(0, 2, n)
    x = rng.standard_normal((n, d)) * 0.1 + 0.5
    x[:, 0] += 0.2 * y
    st = fit_class_stats([(x, y)], 2, num_bins=0, num_projections=0)
    xe = erasure.fit_leace(st)(x, y)
    np.testing.assert_allclose(xe[y == 0].mean(0), xe[y == 1].mean(0), atol=1e-12)
    # Off the class direction (after whitening) nothing moves much.
    np.testing.assert_allclose(xe[:, 2:], x[:, 2:], atol=0.05)


def _gaussian_classes(rng, k, d, n):
    xs, ys = [], []
    for c in range(k):
        a = rng.standard_normal((d, d)) * 0.05
        xs.append(rng.multivariate_normal(rng.uniform(0.3, 0.7, d), a @ a.T + 1e-3 * np.eye(d), n))
        ys.append(np.full(n, c))
    return np.concatenate(xs), np.concatenate(ys)


@pytest.mark.parametrize("k", [2, 3])
def test_qleace_equalises_means_and_covariances(k):
    rng = np.random.default_rng(k)
    x, y = _gaussian_classes(rng, k, 6, 500)
    st = fit_class_stats([(x, y)], k, num_bins=0)
    eraser = erasure.fit_qleace(st)
    assert eraser.info["closed_form"] is (k == 2)
    xq = eraser(x, y)
    covs = [np.cov(xq[y == c].T, bias=True) for c in range(k)]
    means = [xq[y == c].mean(0) for c in range(k)]
    for c in range(k):
        np.testing.assert_allclose(covs[c], eraser.barycenter_DxD, atol=1e-10)
        np.testing.assert_allclose(means[c], eraser.mean_D, atol=1e-12)
    # Barycenter (Agueh-Carlier): the maps from the barycenter to the classes, i.e. the
    # inverses of the erasing maps, average to the identity under the priors.
    inv = np.stack([np.linalg.inv(a) for a in eraser.maps_KxDxD])
    avg = np.einsum("k,kij->ij", st.priors_K, inv)
    np.testing.assert_allclose(avg, np.eye(6), atol=1e-8)


def test_barycenter_closed_form_equals_fixed_point():
    rng = np.random.default_rng(7)
    d = 5
    covs = []
    for _ in range(2):
        a = rng.standard_normal((d, d))
        covs.append(a @ a.T / d + 0.2 * np.eye(d))
    w = np.array([0.3, 0.7])
    closed, info = erasure.wasserstein_barycenter_cov(np.stack(covs), w)
    assert info["closed_form"]
    # Fixed point on three Gaussians, the third with zero weight.
    three = np.stack([*covs, np.eye(d)])
    fixed, info3 = erasure.wasserstein_barycenter_cov(three, np.array([0.3, 0.7, 0.0]))
    assert not info3["closed_form"] and info3["rel_change"] < 1e-10
    np.testing.assert_allclose(fixed, closed, atol=1e-9)


def test_barycenter_agrees_with_ott():
    import jax
    import jax.numpy as jnp
    from ott.geometry import costs

    rng = np.random.default_rng(8)
    d, k = 4, 3
    covs = []
    for _ in range(k):
        a = rng.standard_normal((d, d))
        covs.append(a @ a.T / d + 0.3 * np.eye(d))
    covs = np.stack(covs)
    w = np.array([0.2, 0.5, 0.3])
    ours, _ = erasure.wasserstein_barycenter_cov(covs, w)
    with jax.enable_x64(True):
        xs = jnp.concatenate([jnp.zeros((k, d)), jnp.asarray(covs).reshape(k, -1)], axis=1)
        bary, _ = costs.Bures(d).barycenter(jnp.asarray(w), xs, tolerance=1e-14, max_iterations=500)
        theirs = np.asarray(bary[d:]).reshape(d, d)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_qleace_on_digits_with_shrinkage(digits_train_test_flat):
    x, y, xt, yt = digits_train_test_flat
    st = fit_class_stats([(x, y)], 10, shrinkage=(1.0, 0.05))
    eraser = erasure.fit_eraser("qleace", st)
    # Exact for the (shrunk) Gaussian model the maps were built for.
    for c in (0, 5):
        a = eraser.maps_KxDxD[c]
        np.testing.assert_allclose(a @ st.covariance(c) @ a, eraser.barycenter_DxD, atol=1e-8)
    xq = eraser(x, y)
    means = np.stack([xq[y == c].mean(0) for c in range(10)])
    assert np.abs(means - means.mean(0)).max() < 1e-5
    assert eraser(xt, yt).shape == xt.shape  # fitted on train, applied to test
    with pytest.raises(ValueError):
        erasure.fit_eraser("nope", st)


def test_total_covariance_is_pooled_covariance(digits_train_test_flat):
    x, y, *_ = digits_train_test_flat
    st = fit_class_stats([(x, y)], 10)
    np.testing.assert_allclose(erasure.total_covariance(st), np.cov(x.T, bias=True), atol=1e-12)
    assert isinstance(st, ClassStats)
