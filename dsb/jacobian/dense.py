"""The dense training Jacobian ``J [P, P] = d theta_T / d theta_0`` and a robust SVD.

Forward mode linearises the run once (``jax.linearize``: one primal pass whose residuals
are kept) and pushes chunks of identity columns through the linear map with ``vmap``,
sequentially over chunks with ``lax.map``. Reverse mode pulls chunks of identity rows
back through ``jax.vjp`` of the run with ``jax.checkpoint`` on the step (only the
``T`` carries are stored). Chunk sizes come from a memory budget (``auto_chunk_size``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jax import lax

__all__ = [
    "SVDResult",
    "auto_chunk_size",
    "jacobian_forward",
    "jacobian_forward_cached",
    "jacobian_reverse",
    "load_spectrum",
    "robust_svd",
    "save_spectrum",
]

# Per-column working set, in units of P numbers: parameter and momentum tangents, the
# gradient tangent, the optimizer's update tangents and the output column, with slack.
_COLUMN_FACTOR = 12
# Cap from timing chunks of 16..1024 columns at P=4810 on 2 CPU cores: 64 was fastest;
# past a few hundred the batched tangents stop fitting in cache and throughput falls.
_MAX_CHUNK = 64


def auto_chunk_size(
    num_params: int,
    num_steps: int,
    itemsize: int,
    *,
    mode: str = "forward",
    memory_bytes: int = 2 * 2**30,
    max_chunk: int = _MAX_CHUNK,
) -> int:
    """Columns (forward) or rows (reverse) of J computed at once within ``memory_bytes``.

    Fixed cost: the output ``P^2`` plus, in forward mode, the linearisation residuals
    (about ``3 P`` numbers per step, ``T`` steps) and in reverse mode the remat'd carries
    (``2 P`` per step). Each column/row then costs ``_COLUMN_FACTOR * P`` numbers.
    """
    p, t = num_params, num_steps
    per_step = 3 if mode == "forward" else 2
    fixed = itemsize * (p * p + per_step * p * t)
    per_column = itemsize * _COLUMN_FACTOR * p
    room = memory_bytes - fixed
    if room < per_column:
        raise MemoryError(
            f"dense J of P={p}, T={t} needs about {(fixed + per_column) / 2**30:.2f} GiB; "
            f"memory_bytes={memory_bytes / 2**30:.2f} GiB. Use dsb.jacobian.matrix_free."
        )
    return int(max(1, min(room // per_column, max_chunk, p)))


def _chunked(
    make_fn: Callable[[jax.Array], Callable[[jax.Array], jax.Array]],
    theta0: jax.Array,
    chunk: int,
    num_devices: int,
) -> jax.Array:
    """Stack ``fn(E)`` over identity chunks ``E [chunk, P]`` into ``[P, P]`` rows.

    ``make_fn(theta0)`` linearises the run and returns the batched linear map. With
    ``num_devices > 1`` the chunks are split over local devices with ``shard_map`` (on a
    CPU host: ``XLA_FLAGS=--xla_force_host_platform_device_count=2``, one device per
    core); each device linearises once on its own (one extra training run per device).
    """
    p = theta0.size
    n_chunks = math.ceil(p / chunk / num_devices) * num_devices

    def chunks(th, ids):
        fn = make_fn(th)

        def one(i):
            idx = i * chunk + jnp.arange(chunk)
            return fn(jax.nn.one_hot(idx, p, dtype=th.dtype))  # rows past P are all-zero

        return lax.map(one, ids)

    # Always through shard_map, even on one device: at P = 4810, T = 625 the same chunks
    # took 48.5 s inside a one-device shard_map and 98.2 s under a plain jit on XLA:CPU
    # (benchmarks/jacobian_dense.py, entry ablation_chunks_plain_jit_1dev).
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as PS

    mesh = jax.make_mesh((num_devices,), ("chunks",), devices=jax.devices()[:num_devices])
    ids = jax.device_put(jnp.arange(n_chunks), NamedSharding(mesh, PS("chunks")))

    def per_device(th, ids):
        return chunks(lax.pcast(th, ("chunks",), to="varying"), ids)

    fn = jax.shard_map(per_device, mesh=mesh, in_specs=(PS(), PS("chunks")), out_specs=PS("chunks"))
    out = jax.jit(fn)(theta0, ids)
    if num_devices > 1:
        # Gather the device-sharded stack through the host (the SVD runs there anyway).
        out = jnp.asarray(np.asarray(out))
    return out.reshape(n_chunks * chunk, p)[:p]


def _prepare(run, theta0, chunk_size, num_steps, memory_bytes, mode, num_devices):
    t = num_steps if num_steps is not None else getattr(run, "num_steps", 1)
    nd = num_devices or 1
    chunk = chunk_size or auto_chunk_size(
        theta0.size, t, theta0.dtype.itemsize, mode=mode, memory_bytes=memory_bytes // nd
    )
    return chunk, nd


def jacobian_forward(
    run: Callable[[jax.Array], jax.Array],
    theta0: jax.Array,
    *,
    chunk_size: int | None = None,
    num_steps: int | None = None,
    memory_bytes: int = 2 * 2**30,
    num_devices: int | None = None,
) -> jax.Array:
    """``J [P, P]`` by forward mode: linearise once, vmap the linear map over column chunks.

    ``num_steps`` (for the memory bound) defaults to ``run.num_steps``; ``num_devices``
    splits the chunks over that many local devices (default 1).
    """
    chunk, nd = _prepare(run, theta0, chunk_size, num_steps, memory_bytes, "forward", num_devices)

    def make_fn(th):
        _, f_jvp = jax.linearize(run, th)
        return jax.vmap(f_jvp)

    return _chunked(make_fn, theta0, chunk, nd).T  # rows of the stack are columns of J


def jacobian_forward_cached(run, theta0: jax.Array, path: str | Path | None = None) -> np.ndarray:
    """``jacobian_forward(run, theta0)`` as a host array, read from the ``.npy`` file
    ``path`` when it exists and written there otherwise (the dense reference J takes
    minutes; tests and benchmarks share one via ``$DSB_REFERENCE_J``). The file is not
    checked against ``run``: one path per run."""
    if path and Path(path).exists():
        return np.load(path)
    jd = np.asarray(jax.block_until_ready(jacobian_forward(run, theta0)))
    if path:
        np.save(path, jd)
    return jd


def jacobian_reverse(
    run: Callable[[jax.Array], jax.Array],
    theta0: jax.Array,
    *,
    chunk_size: int | None = None,
    num_steps: int | None = None,
    memory_bytes: int = 2 * 2**30,
    num_devices: int | None = None,
) -> jax.Array:
    """``J [P, P]`` by reverse mode over row chunks.

    For a ``TrainingRun`` pass ``dataclasses.replace(run, remat=True)`` on long runs so
    the backward pass stores the step carries only, not every activation.
    """
    chunk, nd = _prepare(run, theta0, chunk_size, num_steps, memory_bytes, "reverse", num_devices)

    def make_fn(th):
        _, f_vjp = jax.vjp(run, th)
        return jax.vmap(lambda u: f_vjp(u)[0])

    return _chunked(make_fn, theta0, chunk, nd)


class SVDResult(dict):
    """``{"s": [P], "U": [P, P] or None, "Vt": [P, P] or None}`` in float64."""

    @property
    def s(self) -> np.ndarray:
        return self["s"]

    @property
    def U(self) -> np.ndarray | None:
        return self.get("U")

    @property
    def Vt(self) -> np.ndarray | None:
        return self.get("Vt")


def robust_svd(
    jac: np.ndarray | jax.Array, *, compute_uv: bool = True, check_reconstruction: bool = False
) -> SVDResult:
    """SVD of ``jac [m, n]`` in float64 on the host (LAPACK), with NaN checks.

    Tries the divide-and-conquer driver (``gesdd``) first and falls back to ``gesvd``
    when it fails or returns non-finite numbers; raises ``FloatingPointError`` with the
    reason when both fail. float32 SVD of the reference J returned NaN: never use it.
    """
    a = np.asarray(jac, dtype=np.float64)
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).sum())
        raise FloatingPointError(f"robust_svd: the matrix has {bad} non-finite entries")
    errors = []
    for driver in ("gesdd", "gesvd"):
        try:
            out = scipy.linalg.svd(
                a, compute_uv=compute_uv, lapack_driver=driver, check_finite=False
            )
        except (np.linalg.LinAlgError, ValueError) as e:
            errors.append(f"{driver}: {e}")
            continue
        u, s, vt = out if compute_uv else (None, out, None)
        parts = [s] + ([u, vt] if compute_uv else [])
        if all(np.isfinite(x).all() for x in parts):
            if check_reconstruction and compute_uv:
                err = np.linalg.norm((u * s) @ vt - a) / max(np.linalg.norm(a), 1e-300)
                if err > 1e-8:
                    errors.append(f"{driver}: reconstruction error {err:.2e}")
                    continue
            return SVDResult(s=s, U=u, Vt=vt)
        errors.append(f"{driver}: non-finite output")
    raise FloatingPointError("robust_svd failed: " + "; ".join(errors))


def save_spectrum(path: str | Path, svd: SVDResult, *, save_vectors: bool = False, **meta) -> Path:
    """Write ``s`` (and ``U``, ``Vt`` when asked) and scalar metadata to ``path.npz``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"s": svd.s}
    if save_vectors:
        if svd.U is None:
            raise ValueError("save_vectors=True but the SVD was computed without vectors")
        arrays.update(U=svd.U, Vt=svd.Vt)
    arrays.update({f"meta_{k}": np.asarray(v) for k, v in meta.items()})
    np.savez(path, **arrays)
    return path


def load_spectrum(path: str | Path) -> SVDResult:
    with np.load(path) as z:
        return SVDResult(
            s=z["s"], U=z["U"] if "U" in z else None, Vt=z["Vt"] if "Vt" in z else None
        )
