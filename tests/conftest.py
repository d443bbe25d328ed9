"""Fixtures shared by every test folder (helpers live in ``dsb_testing``).

This is the only conftest. One fixture is autouse: ``user_cache`` keeps every test's
caches out of the real ``~/.cache``. Any other fixture that one folder needs is requested
by name in its files (``pytestmark = pytest.mark.usefixtures(...)``), so each file says
what it relies on.
"""

import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))  # makes ``dsb_testing`` importable

from dsb_testing import CONF_DIR, ROOT, TINY, compose, run_python, tiny_config

__all__ = ["CONF_DIR", "ROOT", "TINY", "compose", "run_python", "tiny_config"]


@pytest.fixture(autouse=True)
def user_cache(tmp_path_factory, monkeypatch):
    """Every test's dsb caches (``dsb.cache``: probe sets, decoded datasets) are fresh
    temporary directories, never the real ``~/.cache``; child interpreters inherit them.
    (The variables, not ``XDG_CACHE_HOME``, which would also move matplotlib's font cache
    and make every child interpreter rebuild it.)"""
    d = tmp_path_factory.mktemp("user_cache")
    monkeypatch.setenv("DSB_PROBE_CACHE", str(d / "probe_sets"))
    monkeypatch.setenv("DSB_DATA_CACHE", str(d / "decoded"))
    return d


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
