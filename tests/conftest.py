"""Fixtures shared by every test folder (helpers live in ``dsb_testing``).

This is the only conftest. One fixture is autouse: ``user_cache`` keeps every test's
caches out of the real ``~/.cache``. ``pytest_configure`` gives the session one persistent
JAX compilation cache (below). Any other fixture that one folder needs is requested
by name in its files (``pytestmark = pytest.mark.usefixtures(...)``), so each file says
what it relies on.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))  # makes ``dsb_testing`` importable

from dsb_testing import CONF_DIR, ROOT, TINY, compose, run_python, tiny_config

__all__ = ["CONF_DIR", "ROOT", "TINY", "compose", "run_python", "tiny_config"]


_JAX_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"


def pytest_configure(config):
    """One persistent JAX compilation cache for the whole session, empty at its start.

    Many tests compile the same programs (the tiny training step, the replay of a small
    run, the evaluators), in the xdist workers and in the child interpreters of the
    multi-device and CLI tests. With the cache, a program compiled once is loaded by
    every later test: about 40% less CPU on the training tests. A cached executable is
    the one XLA compiled for the same program, so no result changes. Set on the controller
    before the workers start (they and every child interpreter inherit the variables);
    removed at the end. A cache directory the user set is left alone."""
    if hasattr(config, "workerinput") or os.environ.get(_JAX_CACHE_ENV):
        return
    d = tempfile.mkdtemp(prefix="dsb-test-jax-cache-")
    config._dsb_jax_cache = d
    os.environ[_JAX_CACHE_ENV] = d
    # Cache every program, however fast it compiled: the tiny ones are most of them.
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    jax.config.update("jax_compilation_cache_dir", d)  # this process imported jax already
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def pytest_unconfigure(config):
    d = getattr(config, "_dsb_jax_cache", None)
    if d:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def _session_user_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("user_cache")


def _point_caches_at(d: Path, monkeypatch) -> Path:
    monkeypatch.setenv("DSB_PROBE_CACHE", str(d / "probe_sets"))
    monkeypatch.setenv("DSB_DATA_CACHE", str(d / "decoded"))
    monkeypatch.setenv("DSB_ERASURE_CACHE", str(d / "erased"))
    return d


@pytest.fixture(autouse=True)
def user_cache(_session_user_cache, monkeypatch):
    """Every test's dsb caches (``dsb.cache``: probe sets, decoded datasets, erased
    splits) live in one temporary directory per test session (per xdist worker), never the
    real ``~/.cache``; child interpreters inherit them. Shared across tests as a user's
    cache is shared across runs: the digits probe sets (~20 s on 2 cores) are built once
    per worker instead of once per training test. The cache is keyed by statistics,
    options and sampler version and safe under concurrent writers (``dsb.cache``), so
    sharing it cannot change a result. A test that must see a cold cache asks for
    ``fresh_user_cache``. (The variables, not ``XDG_CACHE_HOME``, which would also move
    matplotlib's font cache and make every child interpreter rebuild it.)"""
    return _point_caches_at(_session_user_cache, monkeypatch)


@pytest.fixture
def fresh_user_cache(user_cache, tmp_path_factory, monkeypatch):
    """Empty dsb caches for this test alone (for tests of what a cold cache builds)."""
    return _point_caches_at(tmp_path_factory.mktemp("fresh_user_cache"), monkeypatch)


@pytest.fixture
def tfds_dir(tmp_path_factory, monkeypatch):
    """A TFDS data_dir shared by the session (the digits build takes ~1 s)."""
    d = tmp_path_factory.getbasetemp() / "tfds"
    monkeypatch.setenv("TFDS_DATA_DIR", str(d))
    return str(d)


@pytest.fixture
def float64():
    """jax x64 for one test, for comparisons against float64 ground truth (a session-wide
    switch would leak float64 into every other test)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def one_blas_thread():
    """One BLAS thread for a whole module: on small matrices on a shared 2-core box,
    threaded OpenBLAS spins and runs ~100x slower."""
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def digits_train_flat():
    """The digits train split as ``(x [1600, 64] float64, y [1600])``."""
    from dsb.data.digits import digits_arrays

    x, y = digits_arrays()["train"]
    return x.reshape(len(x), -1).astype(np.float64), y


@pytest.fixture(scope="module")
def digits_train_test_flat():
    """Both digits splits, flattened: ``(x float64, y, x_test float32, y_test)``."""
    from dsb.data.digits import digits_arrays

    d = digits_arrays()
    (x, y), (xt, yt) = d["train"], d["test"]
    return x.reshape(len(x), -1).astype(np.float64), y, xt.reshape(len(xt), -1), yt
