"""Class-conditional statistics of flat image data, fitted in one streaming pass in float64.

Everything downstream (max-ent samplers, OT edits, erasers) reads a frozen ``ClassStats``:
priors, means, covariances (ML normalisation, 1/n), per-pixel marginal tables and third
moments along random projections. Inputs are images flattened to ``[n, d]`` in [0, 1].

The marginal tables are histograms with ``num_bins`` equal bins on [0, 1] that also keep
the mean value of the data in each bin. For 8-bit images (values k/255) and the digits set
(values k/16) every bin holds at most one distinct value with 256 bins, so the table *is*
the empirical marginal, exactly, while costing O(K d B) memory however large the data.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from scipy.linalg.blas import dgemm as _dgemm

from dsb.cache import hash_array

__all__ = [
    "ClassStats",
    "StatsAccumulator",
    "cached_class_stats",
    "fit_class_stats",
    "marginal_quantile",
    "projected_third_moments",
]

log = logging.getLogger(__name__)

_HASH_VERSION = "classstats-v1"
_ARRAYS = (
    "counts_K",
    "priors_K",
    "mean_KxD",
    "cov_KxDxD",
    "bin_values_KxDxB",
    "bin_cdf_KxDxB",
    "proj_DxR",
    "proj_skew_KxR",
)


@dataclasses.dataclass(frozen=True, eq=False)
class ClassStats:
    """Class-conditional moments of a labelled data set (all float64).

    Attributes:
      counts_K: [K] examples per class.
      priors_K: [K] class frequencies pi_y.
      mean_KxD: [K, d] class means mu_y.
      cov_KxDxD: [K, d, d] raw ML class covariances S_y (no shrinkage applied).
      shrinkage: ``None`` or ``(a, b)``: the covariance the samplers and maps use is
        ``Sigma_hat = a * S + b * (tr S / d) * I`` (see ``covariance``).
      bin_values_KxDxB: [K, d, B] mean data value inside each histogram bin (bin centre
        where the bin is empty); ``None`` when fitted with ``num_bins=0``.
      bin_cdf_KxDxB: [K, d, B] cumulative class-conditional probability up to each bin.
      proj_DxR: [d, R] unit random directions (fixed seed) for third moments.
      proj_skew_KxR: [K, R] central third moment of ``w'x`` per class and direction.
    """

    counts_K: np.ndarray
    priors_K: np.ndarray
    mean_KxD: np.ndarray
    cov_KxDxD: np.ndarray
    shrinkage: tuple[float, float] | None = None
    bin_values_KxDxB: np.ndarray | None = None
    bin_cdf_KxDxB: np.ndarray | None = None
    proj_DxR: np.ndarray | None = None
    proj_skew_KxR: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return int(self.mean_KxD.shape[0])

    @property
    def dim(self) -> int:
        return int(self.mean_KxD.shape[1])

    def covariance(self, k: int) -> np.ndarray:
        """``[d, d]`` covariance of class ``k`` with the recorded shrinkage applied."""
        s = self.cov_KxDxD[k]
        if self.shrinkage is None:
            return s
        a, b = self.shrinkage
        d = s.shape[0]
        out = a * s  # one d x d array; no identity or sum temporaries
        out.flat[:: d + 1] += b * np.trace(s) / d
        return out

    def with_shrinkage(self, shrinkage: tuple[float, float] | None) -> ClassStats:
        """The same statistics with another shrinkage recorded (arrays are shared)."""
        sh = None if shrinkage is None else (float(shrinkage[0]), float(shrinkage[1]))
        return dataclasses.replace(self, shrinkage=sh)

    @functools.cached_property
    def content_hash(self) -> str:
        """Stable sha256 of every array and option; keys the on-disk eval-set cache."""
        h = hashlib.sha256(_HASH_VERSION.encode())
        h.update(json.dumps({"shrinkage": self.shrinkage}).encode())
        for name in _ARRAYS:
            arr = getattr(self, name)
            if arr is None:
                h.update(f"{name}none".encode())
            else:
                hash_array(h, arr, name)
        return h.hexdigest()


class StatsAccumulator:
    """One pass over ``(x [n, d], y [n])`` batches; ``finalize()`` gives ``ClassStats``.

    Means and covariances use Chan et al.'s pairwise merge of (count, mean, centred
    scatter), which stays accurate in float64 where raw outer-product sums would cancel.
    Third moments along projections are kept as raw power sums of ``z = w'x`` (z is O(1)
    per unit direction), converted to central moments at the end.
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        *,
        num_bins: int = 256,
        num_projections: int = 4096,
        projection_seed: int = 0,
    ):
        self.k, self.d, self.num_bins = num_classes, dim, num_bins
        self.n_K = np.zeros(num_classes, np.int64)
        self.mean_KxD = np.zeros((num_classes, dim))
        self.m2_KxDxD = np.zeros((num_classes, dim, dim))
        if num_bins:
            self.bin_count_KxDB = np.zeros((num_classes, dim * num_bins), np.int64)
            self.bin_sum_KxDB = np.zeros((num_classes, dim * num_bins))
        self.proj_DxR = None
        if num_projections:
            w = np.random.default_rng(projection_seed).standard_normal((dim, num_projections))
            self.proj_DxR = w / np.linalg.norm(w, axis=0, keepdims=True)
            self.zpow_Kx3xR = np.zeros((num_classes, 3, num_projections))

    def update(self, x_NxD: np.ndarray, y_N: np.ndarray) -> None:
        if self.m2_KxDxD is None:
            raise RuntimeError("update() after finalize()")
        x_NxD = np.asarray(x_NxD, np.float64).reshape(len(y_N), -1)
        y_N = np.asarray(y_N)
        if x_NxD.shape[1] != self.d:
            raise ValueError(f"expected dimension {self.d}, got {x_NxD.shape[1]}")
        for c in np.unique(y_N):
            xc = x_NxD[y_N == c]
            nb = len(xc)
            mb = xc.mean(0)
            na = self.n_K[c]
            n = na + nb
            delta = mb - self.mean_KxD[c]
            # m2 += cen'cen + (na nb / n) delta delta', as one in-place GEMM (beta = 1)
            # on [cen; sqrt(na nb / n) delta]: no d x d temporaries (each is 75 MB at
            # d = 3072). The transposed view is Fortran-ordered, so BLAS writes into
            # m2 itself; the update is symmetric, so transposing changes nothing.
            aug = np.empty((nb + 1, self.d))
            np.subtract(xc, mb, out=aug[:nb])
            np.multiply(delta, np.sqrt(na * nb / n), out=aug[nb])
            m2t = self.m2_KxDxD[c].T
            res = _dgemm(1.0, aug, aug, beta=1.0, c=m2t, trans_a=True, overwrite_c=True)
            if not np.shares_memory(res, m2t):
                m2t[...] = res
            del aug, res
            self.mean_KxD[c] += delta * (nb / n)
            self.n_K[c] = n
            if self.num_bins:
                b = np.clip(np.floor(xc * self.num_bins), 0, self.num_bins - 1).astype(np.int64)
                flat = (b + np.arange(self.d) * self.num_bins).ravel()
                size = self.d * self.num_bins
                self.bin_count_KxDB[c] += np.bincount(flat, minlength=size)
                self.bin_sum_KxDB[c] += np.bincount(flat, weights=xc.ravel(), minlength=size)
            if self.proj_DxR is not None:
                z = xc @ self.proj_DxR
                self.zpow_Kx3xR[c] += np.stack([z.sum(0), (z**2).sum(0), (z**3).sum(0)])

    def finalize(self, shrinkage: tuple[float, float] | None = None) -> ClassStats:
        """The fitted ``ClassStats``; the accumulator is spent afterwards.

        The scatter matrices become the covariances in place (K d^2 float64 is the largest
        array here: 0.75 GB at 32x32x3, 12 GB at 64x64x3), so no second copy is made.
        """
        if self.m2_KxDxD is None:
            raise RuntimeError("finalize() was already called on this accumulator")
        if np.any(self.n_K == 0):
            raise ValueError(f"classes without examples: {np.flatnonzero(self.n_K == 0)}")
        n_K = self.n_K.astype(np.float64)
        values = cdf = None
        if self.num_bins:
            k, d, nb = self.k, self.d, self.num_bins
            counts = self.bin_count_KxDB.reshape(k, d, nb)
            centres = (np.arange(nb) + 0.5) / nb
            values = np.where(
                counts > 0, self.bin_sum_KxDB.reshape(k, d, nb) / np.maximum(counts, 1), centres
            )
            cdf = np.cumsum(counts, axis=-1) / n_K[:, None, None]
            cdf[..., -1] = 1.0
        skew = None
        if self.proj_DxR is not None:
            e1, e2, e3 = np.moveaxis(self.zpow_Kx3xR / n_K[:, None, None], 1, 0)
            skew = e3 - 3 * e1 * e2 + 2 * e1**3
        cov = self.m2_KxDxD
        cov /= n_K[:, None, None]
        self.m2_KxDxD = None
        stats = ClassStats(
            counts_K=self.n_K.copy(),
            priors_K=n_K / n_K.sum(),
            mean_KxD=self.mean_KxD.copy(),
            cov_KxDxD=cov,
            bin_values_KxDxB=values,
            bin_cdf_KxDxB=cdf,
            proj_DxR=self.proj_DxR,
            proj_skew_KxR=skew,
        )
        return stats.with_shrinkage(shrinkage)


def fit_class_stats(
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    *,
    shrinkage: tuple[float, float] | None = None,
    num_bins: int = 256,
    num_projections: int = 4096,
    projection_seed: int = 0,
) -> ClassStats:
    """Fit ``ClassStats`` from an iterable of ``(x [b, ...], y [b])`` batches in one pass.

    Images of any shape are flattened to ``[b, d]``. ``shrinkage=(a, b)`` is recorded and
    applied by ``ClassStats.covariance``; raw covariances are kept. ``num_projections``
    random unit directions get their class third moments: the box3 sampler fits all but
    the last ``report.HELDOUT_PROJECTIONS`` and needs many more than d of them (4096 by
    default; ``d x R`` float64 and ``O(n d R)`` work, 100 MB and ~1e12 flops at d = 3072).
    """
    acc = None
    for x, y in batches:
        x = np.asarray(x).reshape(len(y), -1)
        if acc is None:
            acc = StatsAccumulator(
                num_classes,
                x.shape[1],
                num_bins=num_bins,
                num_projections=num_projections,
                projection_seed=projection_seed,
            )
        acc.update(x, y)
    if acc is None:
        raise ValueError("no batches")
    return acc.finalize(shrinkage)


def _flat_search(cdf_DxB: np.ndarray, u_NxD: np.ndarray) -> np.ndarray:
    """Per column j, the first bin with ``cdf > u`` (one global searchsorted)."""
    d, nb = cdf_DxB.shape
    offs = 2.0 * np.arange(d)
    flat = (cdf_DxB + offs[:, None]).ravel()
    idx = np.searchsorted(flat, u_NxD + offs, side="right") - np.arange(d) * nb
    return np.clip(idx, 0, nb - 1)


def marginal_quantile(stats: ClassStats, k: int, u_NxD: np.ndarray) -> np.ndarray:
    """Inverse marginal CDF of class ``k`` per coordinate: ``[n, d]`` uniforms to values."""
    if stats.bin_cdf_KxDxB is None:
        raise ValueError("these ClassStats were fitted without marginal tables (num_bins=0)")
    idx = _flat_search(stats.bin_cdf_KxDxB[k], np.asarray(u_NxD, np.float64))
    return np.take_along_axis(stats.bin_values_KxDxB[k].T, idx, axis=0)


def projected_third_moments(x_NxD: np.ndarray, proj_DxR: np.ndarray) -> np.ndarray:
    """``[R]`` central third moments of ``w_r'x`` over the rows of ``x`` (float64)."""
    z = np.asarray(x_NxD, np.float64) @ proj_DxR
    z = z - z.mean(0)
    return (z**3).mean(0)


_CACHE_VERSION = "classstats-cache-v1"


def _data_key(x_NxD: np.ndarray, y_N: np.ndarray, options: dict) -> str:
    """sha256 of the data (bytes, dtype, shape) and every option the fit depends on."""
    h = hashlib.sha256(f"{_CACHE_VERSION}/{_HASH_VERSION}".encode())
    h.update(json.dumps(options, sort_keys=True).encode())
    for arr in (x_NxD, y_N):
        hash_array(h, arr)
    return h.hexdigest()


def cached_class_stats(
    x_NxD: np.ndarray,
    y_N: np.ndarray,
    num_classes: int,
    cache_dir: str | Path | None,
    *,
    batch_size: int = 4096,
    shrinkage: tuple[float, float] | None = None,
    num_bins: int = 256,
    num_projections: int = 4096,
    projection_seed: int = 0,
) -> tuple[ClassStats, bool]:
    """``fit_class_stats`` of ``x [n, d]``, ``y [n]`` in batches of ``batch_size``, kept in
    ``cache_dir`` (None: no cache); returns ``(stats, loaded_from_cache)``.

    The file (``classstats-<key>.npz``) is keyed by the data's bytes, dtype and shape and
    every fit option, and holds the raw statistics: ``shrinkage`` is recorded on the loaded
    ones, so a sweep over shrinkage shares one file. Loaded statistics are the arrays the
    fit wrote, so their ``content_hash`` (the probe sets' key) is the fresh fit's. Built
    under ``build_lock`` and written atomically (``dsb.cache``), like the probe sets. Every
    job of a sweep over the same data skips the fit (~40-50 s at d = 784 on 2 CPU cores,
    minutes at d = 3072); the file is ``K d^2`` float64 and more (~100 MB at d = 784,
    ~1 GB at d = 3072).
    """
    from dsb.cache import load_or_build, write_atomically

    x_NxD = np.asarray(x_NxD).reshape(len(y_N), -1)
    y_N = np.asarray(y_N)

    def fit() -> ClassStats:
        batches = (
            (x_NxD[i : i + batch_size], y_N[i : i + batch_size])
            for i in range(0, len(y_N), batch_size)
        )
        return fit_class_stats(
            batches,
            num_classes,
            num_bins=num_bins,
            num_projections=num_projections,
            projection_seed=projection_seed,
        )

    sh = None if shrinkage is None else (float(shrinkage[0]), float(shrinkage[1]))
    if cache_dir is None:
        return fit().with_shrinkage(sh), False
    options = {
        "num_classes": int(num_classes),
        "batch_size": int(batch_size),
        "num_bins": int(num_bins),
        "num_projections": int(num_projections),
        "projection_seed": int(projection_seed),
    }
    key = _data_key(x_NxD, y_N, options)
    path = Path(cache_dir) / f"classstats-{key[:20]}.npz"

    def save(stats: ClassStats) -> None:
        arrays = {n: getattr(stats, n) for n in _ARRAYS if getattr(stats, n) is not None}
        try:
            write_atomically(path, lambda f: np.savez(f, key=key, **arrays))
            log.info("class statistics: fitted, cached in %s", path)
        except OSError as e:
            log.warning("could not cache the class statistics in %s: %s", path, e)

    stats, loaded = load_or_build(path, lambda: _load_stats(path, key), fit, save)
    if loaded:
        log.info("class statistics: loaded from %s", path)
    return stats.with_shrinkage(sh), loaded


def _load_stats(path: Path, key: str) -> ClassStats | None:
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as f:
        if str(f["key"]) != key:
            return None
        return ClassStats(**{n: f[n] for n in _ARRAYS if n in f.files})
