"""LEACE's offset (``dsb.stats.erasure.fit_leace``), pinned by value with unequal classes.

The eraser is ``x' = x - W^+ Q Q' W (x - mu)`` with ``mu`` the DATA mean, i.e. the
prior-weighted mean of the class means (Belrose et al. 2023; concept-erasure's
``LeaceEraser``). With equal classes the unweighted mean of the class means is the same
point, so only unequal priors tell the two centres apart: here the classes have 1200, 300
and 60 examples and far-apart means.
"""

from __future__ import annotations

import numpy as np
import pytest

from dsb.stats import erasure
from dsb.stats.moments import fit_class_stats

pytestmark = pytest.mark.usefixtures("one_blas_thread")


def _unequal_classes(rng, d=6):
    sizes = (1200, 300, 60)
    xs, ys = [], []
    for k, n in enumerate(sizes):
        a = rng.standard_normal((d, d)) * 0.3
        mean = rng.uniform(-2, 2, d) * (k + 1)
        xs.append(rng.multivariate_normal(mean, a @ a.T + 0.1 * np.eye(d), n))
        ys.append(np.full(n, k))
    return np.concatenate(xs), np.concatenate(ys), len(sizes)


def _leace_closed_form(x, y, k):
    """The LEACE eraser computed directly from the sample (ML moments)."""
    n = len(x)
    mu = x.mean(0)
    xc = x - mu
    z = np.eye(k)[y]
    sigma = xc.T @ xc / n
    sigma_xz = xc.T @ (z - z.mean(0)) / n
    lam, u = np.linalg.eigh(sigma)
    w = (u / np.sqrt(lam)) @ u.T
    w_inv = (u * np.sqrt(lam)) @ u.T
    q, sv, _ = np.linalg.svd(w @ sigma_xz, full_matrices=False)
    q = q[:, sv > 1e-10 * sv.max()]
    return lambda v: v - (v - mu) @ (w @ q @ q.T @ w_inv)


def test_leace_is_centred_on_the_prior_weighted_data_mean():
    rng = np.random.default_rng(0)
    x, y, k = _unequal_classes(rng)
    st = fit_class_stats([(x, y)], k, num_bins=0, num_projections=0)
    eraser = erasure.fit_leace(st)
    class_means = np.stack([x[y == c].mean(0) for c in range(k)])
    # The two candidate centres differ by a lot here.
    assert np.abs(class_means.mean(0) - x.mean(0)).max() > 0.5
    xe = eraser(x, y)
    # Erased class means coincide, at the data mean (erasure moves no mean along the
    # directions it keeps, and the data mean is a fixed point of the eraser).
    for c in range(k):
        np.testing.assert_allclose(xe[y == c].mean(0), x.mean(0), atol=1e-9)
    np.testing.assert_allclose(xe.mean(0), x.mean(0), atol=1e-10)
    np.testing.assert_allclose(eraser(x.mean(0)[None]), x.mean(0)[None], atol=1e-10)
    # And the whole map is the closed form, point by point, on data and off it.
    ref = _leace_closed_form(x, y, k)
    np.testing.assert_allclose(xe, ref(x), atol=1e-9)
    off = rng.standard_normal((50, x.shape[1])) * 5
    np.testing.assert_allclose(eraser(off), ref(off), atol=1e-9)
    np.testing.assert_allclose(eraser.mean_D, x.mean(0), atol=1e-10)
