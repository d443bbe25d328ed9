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
    assert eraser.info["barycenter"]["closed_form"] is (k == 2)
    assert eraser.info["barycenter"]["converged"] and eraser.info["dim_complement"] == 0
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
    assert not info3["closed_form"] and info3["converged"] and info3["residual"] <= 1e-10
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


# ------------------------------------------------ QLEACE exact on rank-deficient digits
@pytest.fixture(scope="module")
def digits_qleace(digits_train_test_flat):
    x, y, *_ = digits_train_test_flat
    st = fit_class_stats([(x, y)], 10, num_bins=0)
    return x, y, st, erasure.fit_qleace(st)


def test_qleace_is_exact_on_digits_support_and_full_space(digits_qleace):
    x, y, st, eraser = digits_qleace
    info = eraser.info
    # Reference numbers: class ranks 48-54 of 64, union of the null spaces of dimension 21.
    assert info["class_ranks"] == [int(np.linalg.matrix_rank(c)) for c in st.cov_KxDxD]
    assert (info["dim_support"], info["dim_complement"]) == (43, 21)
    assert 0 < info["complement_variance_removed_fraction"] <= info["complement_variance_fraction"]
    xq = eraser(x, y)  # float64
    res = erasure.erasure_residuals(xq, y, support_DxM=eraser.support_DxM)
    assert res["class_mean_spread"] < 1e-12 and res["class_mean_spread_support"] < 1e-12
    assert res["class_cov_max_rel_diff_support"] < 1e-10
    assert res["class_cov_max_rel_diff"] < 1e-10, res  # full space: the V-perp treatment
    # The float32 output the trainer uses stays within the 1e-6 target.
    res32 = erasure.erasure_residuals(xq.astype(np.float32), y)
    assert max(res32.values()) < 1e-6, res32
    for c in (0, 6):  # every class lands on the stated common covariance
        cov = np.cov(xq[y == c].T, bias=True)
        np.testing.assert_allclose(cov, eraser.barycenter_DxD, atol=1e-12)
    assert erasure.erasure_residuals(x, y)["class_cov_max_rel_diff"] > 1.0  # before


def test_qleace_barycenter_on_digits_converges_and_is_the_barycenter(digits_qleace):
    *_, st, eraser = digits_qleace
    bary = eraser.info["barycenter"]
    assert bary["converged"] and bary["residual"] <= bary["tol"] == 1e-10
    assert 1 < bary["iterations"] < 100 and not bary["closed_form"]
    b = eraser.support_DxM
    covs_v = np.einsum("dm,kde,en->kmn", b, st.cov_KxDxD, b)
    bar_v = b.T @ eraser.barycenter_DxD @ b
    # The stated residual is that of the matrix returned, checked independently...
    assert erasure.barycenter_residual(covs_v, st.priors_K, bar_v) <= 1e-10
    # ...and Agueh-Carlier on V: the maps barycenter -> class average to the identity.
    inv = np.stack([np.linalg.inv(b.T @ m @ b) for m in eraser.maps_KxDxD])
    avg = np.einsum("k,kij->ij", st.priors_K, inv)
    np.testing.assert_allclose(avg, np.eye(b.shape[1]), atol=1e-6)


def test_qleace_complement_regress_changes_less_than_mean(digits_qleace):
    x, y, st, eraser = digits_qleace
    assert eraser.info["complement"] == "regress"
    mean_fill = erasure.fit_qleace(st, complement="mean")
    xr, xm = eraser(x, y), mean_fill(x, y)
    for xe in (xr, xm):
        assert erasure.erasure_residuals(xe, y)["class_cov_max_rel_diff"] < 1e-10
    # Same V part; V-perp: the constant global mean for "mean".
    b = eraser.support_DxM
    np.testing.assert_allclose(xr @ b, xm @ b, atol=1e-10)
    perp = xm - (xm @ b) @ b.T
    np.testing.assert_allclose(perp, np.broadcast_to(perp[0], perp.shape), atol=1e-12)
    change_r, change_m = np.mean((xr - x) ** 2), np.mean((xm - x) ** 2)
    assert change_r < change_m * 0.995, (change_r, change_m)
    with pytest.raises(ValueError, match="complement"):
        erasure.fit_qleace(st, complement="zero")


def test_barycenter_non_convergence_raises_or_warns(digits_qleace, caplog):
    *_, st, _ = digits_qleace
    with pytest.raises(RuntimeError, match="not converged"):
        erasure.fit_qleace(st, max_iters=2)
    with caplog.at_level("WARNING", logger="dsb"):
        eraser = erasure.fit_qleace(st, max_iters=2, on_fail="warn")
    bary = eraser.info["barycenter"]
    assert not bary["converged"] and bary["iterations"] == 2 and bary["residual"] > 1e-10
    assert "not converged" in caplog.text
    with pytest.raises(ValueError, match="on_fail"):
        erasure.wasserstein_barycenter_cov(st.cov_KxDxD[:3], st.priors_K[:3], on_fail="x")


def test_leace_residual_on_digits(digits_train_test_flat):
    x, y, *_ = digits_train_test_flat
    xe = erasure.fit_leace(fit_class_stats([(x, y)], 10, num_bins=0))(x, y)
    res = erasure.erasure_residuals(xe, y)
    assert res["class_mean_spread"] < 1e-12
    assert erasure.erasure_residuals(x, y)["class_mean_spread"] > 0.3


def _concept_erasure_default_leace(x, y, k):
    """concept-erasure's LeaceFitter defaults, written out in numpy from its formulas:
    RMT-shrunk total covariance (1/n), cross-covariance with 1/(n - 1), singular values
    of W Sigma_XZ under 0.01 dropped. Returns the eraser matrix and two flags: whether the
    svd_tol cut or the trace constraint would have acted."""
    n, d = x.shape
    xc = x - x.mean(0)
    z = np.eye(k)[y]
    s = xc.T @ xc / n
    t = np.trace(s)
    alpha = 1 - t**2 / (n * (np.sum(s**2) - t**2 / d))
    sig = alpha * s + (1 - alpha) * t / d * np.eye(d)
    lam, u = np.linalg.eigh(sig)
    w, w_inv = (u / np.sqrt(lam)) @ u.T, (u * np.sqrt(lam)) @ u.T
    q, sv, _ = np.linalg.svd(w @ (xc.T @ (z - z.mean(0)) / (n - 1)), full_matrices=False)
    keep = sv > 0.01
    p = np.eye(d) - w_inv @ q[:, keep] @ q[:, keep].T @ w
    return p, bool((~keep[: k - 1]).any()), bool(np.trace(p @ sig @ p.T) > np.trace(sig))


def test_concept_erasure_shrinkage_reproduces_its_default_leace(digits_train_test_flat):
    x, y, *_ = digits_train_test_flat
    x, y = x[:300], y[:300]  # a small sample, where the two defaults differ most
    p_ce, svd_cut_acted, trace_constraint_acted = _concept_erasure_default_leace(x, y, 10)
    assert not svd_cut_acted and not trace_constraint_acted  # as the module docstring says
    st = fit_class_stats([(x, y)], 10, num_bins=0)
    a, b = erasure.concept_erasure_shrinkage(st)
    assert a == 1.0 and b > 0
    ours = erasure.fit_leace(st.with_shrinkage((a, b)))
    p = np.eye(64) - ours.left_DxR @ ours.right_DxR.T
    np.testing.assert_allclose(p, p_ce, atol=1e-9)
    plain = erasure.fit_leace(st)
    diff = np.abs(plain(x, y) - ours(x, y)).mean()
    assert diff > 1e-2, diff  # dsb's default (no shrinkage) is a different eraser
