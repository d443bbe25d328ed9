"""Fixed evaluation sets: fixed-seed determinism and on-disk cache hits."""

import dataclasses

import numpy as np
import pytest

from dsb.data.digits import digits_arrays
from dsb.registry import Registry
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


def test_concurrent_builders_share_one_build(data, tmp_path):
    # Two builders of one set (threads here: flock locks open file descriptions, so two
    # threads conflict like two jobs do): one builds, the other waits and loads the file.
    import threading
    import time

    from dsb.stats import evalsets

    st, *_ = data
    calls = []
    real = evalsets.MAXENT_SETS.get("gaussian").fn

    def slow_sampler(*a, **kw):
        calls.append(1)
        time.sleep(0.5)  # both threads are inside build_maxent_set by now
        return real(*a, **kw)

    out = [None, None]

    def job(i):
        out[i] = build_maxent_set(st, "gaussian", 300, seed=5, cache_dir=tmp_path)

    # A copy of the registry whose "gaussian" kind is the slow sampler (same version).
    slow = Registry("max-ent set")
    for name, spec in evalsets.MAXENT_SETS.items():
        slow.register(
            name, dataclasses.replace(spec, fn=slow_sampler) if name == "gaussian" else spec
        )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evalsets, "MAXENT_SETS", slow)
        threads = [threading.Thread(target=job, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(calls) == 1
    assert sorted(o.from_cache for o in out) == [False, True]
    np.testing.assert_array_equal(out[0].x_NxD, out[1].x_NxD)
    assert not list(tmp_path.glob("*.tmp"))  # no temporary file left behind
    # Another seed is another set, built anew.
    other = build_maxent_set(st, "gaussian", 300, seed=6, cache_dir=tmp_path)
    assert not other.from_cache and not np.array_equal(other.x_NxD, out[0].x_NxD)


def test_unwritable_cache_warns_and_still_returns_the_set(data, tmp_path, monkeypatch):
    from dsb.stats import evalsets

    st, *_ = data

    def fail(*a, **kw):
        raise PermissionError("read-only")

    monkeypatch.setattr(evalsets, "_save", fail)
    with pytest.warns(UserWarning, match="could not cache"):
        s = build_maxent_set(st, "ics", 50, seed=0, cache_dir=tmp_path)
    assert s.x_NxD.shape == (50, 64) and not s.from_cache
