"""Fixed evaluation sets: fixed-seed determinism and on-disk cache hits."""

import numpy as np
import pytest

from dsb.data.digits import digits_arrays
from dsb.stats.evalsets import build_maxent_set, build_ot_set
from dsb.stats.moments import fit_class_stats

pytestmark = pytest.mark.usefixtures("one_blas_thread")


@pytest.fixture(scope="module")
def data():
    d = digits_arrays()
    (x, y), (xt, yt) = d["train"], d["test"]
    return fit_class_stats([(x.reshape(len(x), -1), y)], 10), xt.reshape(len(xt), -1), yt


def test_maxent_cache_hit_returns_identical_arrays(data, tmp_path):
    st, *_ = data
    a = build_maxent_set(st, "gaussian", 300, seed=1, cache_dir=tmp_path, clip=True)
    b = build_maxent_set(st, "gaussian", 300, seed=1, cache_dir=tmp_path, clip=True)
    assert not a.from_cache and b.from_cache
    np.testing.assert_array_equal(a.x_NxD, b.x_NxD)
    np.testing.assert_array_equal(a.y_N, b.y_N)
    assert a.report == b.report and a.report["extra"]["clip"] is True
    # Another option, seed or statistics is another file.
    c = build_maxent_set(st, "gaussian", 300, seed=1, cache_dir=tmp_path, clip=False)
    d = build_maxent_set(st, "gaussian", 300, seed=2, cache_dir=tmp_path, clip=True)
    e = build_maxent_set(
        st.with_shrinkage((1.0, 0.1)), "gaussian", 300, 1, cache_dir=tmp_path, clip=True
    )
    assert not (c.from_cache or d.from_cache or e.from_cache)
    assert len(list(tmp_path.glob("*.npz"))) == 4


def test_uncached_builds_are_deterministic(data):
    st, *_ = data
    for kind in ("ics", "box1"):
        a = build_maxent_set(st, kind, 200, seed=0)
        b = build_maxent_set(st, kind, 200, seed=0)
        np.testing.assert_array_equal(a.x_NxD, b.x_NxD)
        assert a.key == b.key


def test_ot_sets_cached_with_both_labels(data, tmp_path):
    st, xt, yt = data
    for kind in ("cqn", "mean_shift", "gaussian"):
        a = build_ot_set(st, kind, xt, yt, seed=0, cache_dir=tmp_path)
        b = build_ot_set(st, kind, xt, yt, seed=0, cache_dir=tmp_path)
        assert b.from_cache
        np.testing.assert_array_equal(a.x_NxD, b.x_NxD)
        np.testing.assert_array_equal(b.src_N, yt)
        assert np.all(b.y_N != b.src_N)
    # Other source images give another key.
    c = build_ot_set(st, "cqn", xt[:-1], yt[:-1], seed=0, cache_dir=tmp_path)
    assert not c.from_cache


def test_unknown_kind_rejected(data):
    st, xt, yt = data
    with pytest.raises(ValueError):
        build_maxent_set(st, "nope", 10)
    with pytest.raises(ValueError):
        build_ot_set(st, "nope", xt, yt)
