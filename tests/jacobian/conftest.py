"""The Jacobian tests compare against float64 ground truth: enable x64 for each test in
this folder only (a session-wide switch would leak float64 into every other test)."""

import jax
import pytest


@pytest.fixture(autouse=True)
def _float64():
    with jax.enable_x64(True):
        yield
