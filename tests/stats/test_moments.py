"""Streaming fit equals one-shot fit; tables are the exact empirical marginals; hashing."""

import numpy as np
import pytest

from dsb.stats.moments import (
    fit_class_stats,
    marginal_quantile,
    projected_third_moments,
)

pytestmark = pytest.mark.usefixtures("one_blas_thread")


def test_streaming_equals_one_shot(digits_train_flat):
    x, y = digits_train_flat
    one = fit_class_stats([(x, y)], 10)
    for bs in (1, 37, 500):
        st = fit_class_stats(((x[i : i + bs], y[i : i + bs]) for i in range(0, len(y), bs)), 10)
        np.testing.assert_array_equal(st.counts_K, one.counts_K)
        np.testing.assert_allclose(st.mean_KxD, one.mean_KxD, atol=1e-13)
        np.testing.assert_allclose(st.cov_KxDxD, one.cov_KxDxD, atol=1e-13)
        np.testing.assert_array_equal(st.bin_cdf_KxDxB, one.bin_cdf_KxDxB)
        np.testing.assert_allclose(st.bin_values_KxDxB, one.bin_values_KxDxB, atol=1e-13)
        np.testing.assert_allclose(st.proj_skew_KxR, one.proj_skew_KxR, atol=1e-10)


def test_moments_match_numpy(digits_train_flat):
    x, y = digits_train_flat
    st = fit_class_stats([(x, y)], 10)
    np.testing.assert_allclose(st.priors_K, np.bincount(y) / len(y))
    for k in range(10):
        xk = x[y == k]
        np.testing.assert_allclose(st.mean_KxD[k], xk.mean(0), atol=1e-14)
        np.testing.assert_allclose(st.cov_KxDxD[k], np.cov(xk.T, bias=True), atol=1e-14)
        np.testing.assert_allclose(
            st.proj_skew_KxR[k], projected_third_moments(xk, st.proj_DxR), atol=1e-10
        )


def test_marginal_tables_are_the_empirical_marginals(digits_train_flat):
    # Digits take values k/16: each of the 256 bins holds at most one value, so the
    # inverse CDF at the mid-ranks (i + 1/2)/n must return the sorted data exactly.
    x, y = digits_train_flat
    st = fit_class_stats([(x, y)], 10)
    for k in (0, 7):
        xk = x[y == k]
        n = len(xk)
        u = np.repeat(((np.arange(n) + 0.5) / n)[:, None], x.shape[1], axis=1)
        np.testing.assert_allclose(marginal_quantile(st, k, u), np.sort(xk, axis=0), atol=1e-12)


def test_shrinkage_recorded_and_applied(digits_train_flat):
    x, y = digits_train_flat
    st = fit_class_stats([(x, y)], 10, shrinkage=(0.9, 0.1))
    assert st.shrinkage == (0.9, 0.1)
    s = st.cov_KxDxD[3]
    want = 0.9 * s + 0.1 * np.trace(s) / s.shape[0] * np.eye(s.shape[0])
    np.testing.assert_allclose(st.covariance(3), want)
    assert st.with_shrinkage(None).content_hash != st.content_hash


def test_content_hash_stable(digits_train_flat):
    x, y = digits_train_flat
    a = fit_class_stats([(x, y)], 10)
    b = fit_class_stats([(x[:800], y[:800]), (x[800:], y[800:])], 10)
    c = fit_class_stats([(x[:-1], y[:-1])], 10)
    assert a.content_hash == fit_class_stats([(x, y)], 10).content_hash
    assert c.content_hash != a.content_hash
    # Chan merges differ from one-shot in the last bits; the hash is of exact bytes, so
    # equal data fed the same way is what gives equal hashes.
    assert isinstance(b.content_hash, str) and len(b.content_hash) == 64


def test_accumulator_is_spent_after_finalize(digits_train_flat):
    from dsb.stats.moments import StatsAccumulator

    x, y = digits_train_flat
    acc = StatsAccumulator(10, 64)
    acc.update(x, y)
    acc.finalize()
    with pytest.raises(RuntimeError):
        acc.update(x, y)
    with pytest.raises(RuntimeError):
        acc.finalize()


def test_cached_class_stats_equal_the_fit_and_are_keyed_by_data_and_options(
    digits_train_flat, tmp_path, caplog
):
    from dsb.stats.moments import cached_class_stats

    x, y = digits_train_flat
    x = x.astype(np.float32)
    batches = [(x[i : i + 512], y[i : i + 512]) for i in range(0, len(y), 512)]
    fresh = fit_class_stats(batches, 10, num_projections=128)
    got, loaded = cached_class_stats(x, y, 10, tmp_path, batch_size=512, num_projections=128)
    assert not loaded and got.content_hash == fresh.content_hash
    assert len(list(tmp_path.glob("classstats-*.npz"))) == 1
    # A second fit of the same data loads the file: the same bytes, so the same hash (the
    # probe sets' key), and the shrinkage is recorded on the loaded raw statistics.
    again, loaded = cached_class_stats(
        x, y, 10, tmp_path, batch_size=512, num_projections=128, shrinkage=(0.9, 0.1)
    )
    assert loaded
    assert again.content_hash == fresh.with_shrinkage((0.9, 0.1)).content_hash
    for name in ("mean_KxD", "cov_KxDxD", "bin_cdf_KxDxB", "proj_DxR", "proj_skew_KxR"):
        np.testing.assert_array_equal(getattr(again, name), getattr(fresh, name))
    # Other data (labels permuted, one pixel changed) or another option is another file,
    # fitted afresh: never the statistics of something else.
    perm = np.random.default_rng(0).permutation(len(y))
    other = [
        (x, y[perm], {}),
        (np.where(np.arange(x.size).reshape(x.shape) == 7, 0.5, x).astype(np.float32), y, {}),
        (x, y, {"num_projections": 64}),
        (x, y, {"num_bins": 16}),
        (x, y, {"projection_seed": 1}),
        (x, y, {"batch_size": 256}),
    ]
    for xo, yo, kw in other:
        kw = {"batch_size": 512, "num_projections": 128} | kw
        st, loaded = cached_class_stats(xo, yo, 10, tmp_path, **kw)
        assert not loaded, kw
        want = fit_class_stats(
            [(xo[i : i + kw["batch_size"]], yo[i : i + kw["batch_size"]])
             for i in range(0, len(yo), kw["batch_size"])],
            10,
            num_projections=kw["num_projections"],
            num_bins=kw.get("num_bins", 256),
            projection_seed=kw.get("projection_seed", 0),
        )  # fmt: skip
        assert st.content_hash == want.content_hash, kw
    assert len(list(tmp_path.glob("classstats-*.npz"))) == 1 + len(other)
    # No cache: a plain fit, nothing written.
    st, loaded = cached_class_stats(x, y, 10, None, batch_size=512, num_projections=128)
    assert not loaded and st.content_hash == fresh.content_hash
