"""The dense training Jacobian ``J [P, P] = d theta_T / d theta_0`` and a robust SVD.

Forward mode linearises the run once per device (``jax.linearize``: one primal pass whose
residuals are kept) and pushes chunks of identity columns through the linear map with
``vmap``, sequentially over chunks with ``lax.map``, the chunks split over the local
devices with ``shard_map``. Reverse mode pulls chunks of identity rows back through
``jax.vjp`` of the run (``remat`` on the step stores only the ``T`` carries). Chunk sizes
come from a memory budget and, on CPU, a cache-derived cap (``auto_chunk_size``).

Columns that are exactly ``e_j`` (``identity_columns``: parameters the run never moves
and that move nothing, such as first-layer weights of input features that are zero in
every training example) are written, not computed. ``jacobian_forward_to_disk`` streams
column blocks of a J too large for memory into a ``.npy`` file and resumes.

Where the time goes, and why the speed-up over ``jax.jit(jax.jacfwd(run))`` stops near 2.3x
on a 2-core CPU: ``benchmarks/jacobian_dense.py`` and docs/jacobian_dense.md.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as PS

__all__ = [
    "SVDResult",
    "auto_chunk_size",
    "identity_columns",
    "jacobian_forward",
    "jacobian_forward_cached",
    "jacobian_forward_to_disk",
    "jacobian_reverse",
    "load_spectrum",
    "robust_svd",
    "save_spectrum",
]

log = logging.getLogger(__name__)

# Per-column working set, in units of P numbers: parameter and momentum tangents, the
# gradient tangent, the optimizer's update tangents and the output column, with slack.
_COLUMN_FACTOR = 12
# CPU cap, from timing chunks of 8..1024 columns at P=4810 on 2 CPU cores: 16-64 were
# equally fast (within 3%), 128 was 10% slower and 256 35% slower (the batched tangents
# stop fitting in the 1 MiB per-core L2). Accelerators take whatever the memory budget
# allows: there, bigger batches fill the device.
_MAX_CHUNK_CPU = 64


def _default_devices(num_devices: int | None) -> int:
    """All local devices in a single-process job; one in a multi-process job (each process
    then computes its own J)."""
    if num_devices is not None:
        if not 1 <= num_devices <= jax.local_device_count():
            raise ValueError(
                f"num_devices={num_devices}, but {jax.local_device_count()} local devices exist"
            )
        return num_devices
    return jax.local_device_count() if jax.process_count() == 1 else 1


def auto_chunk_size(
    num_params: int,
    num_steps: int,
    itemsize: int,
    *,
    mode: str = "forward",
    memory_bytes: int = 2 * 2**30,
    max_chunk: int | None = None,
    num_columns: int | None = None,
) -> int:
    """Columns (forward) or rows (reverse) of J computed at once within ``memory_bytes``.

    Fixed cost: the output (``P`` times ``num_columns``, default ``P``) plus, in forward
    mode, the linearisation residuals (about ``3 P`` numbers per step, ``T`` steps) and in
    reverse mode the remat'd carries (``2 P`` per step). Each column/row then costs
    ``_COLUMN_FACTOR * P`` numbers. ``max_chunk`` defaults to 64 on CPU and no cap on
    accelerators.
    """
    p, t = num_params, num_steps
    ncol = p if num_columns is None else num_columns
    if max_chunk is None:
        max_chunk = _MAX_CHUNK_CPU if jax.default_backend() == "cpu" else p
    per_step = 3 if mode == "forward" else 2
    fixed = itemsize * (p * ncol + per_step * p * t)
    per_column = itemsize * _COLUMN_FACTOR * p
    room = memory_bytes - fixed
    if room < per_column:
        raise MemoryError(
            f"dense J of P={p}, T={t} needs about {(fixed + per_column) / 2**30:.2f} GiB; "
            f"memory_bytes={memory_bytes / 2**30:.2f} GiB. Use jacobian_forward_to_disk "
            "(column blocks) or dsb.jacobian.matrix_free."
        )
    return int(max(1, min(room // per_column, max_chunk, ncol)))


def _mesh(num_devices: int) -> jax.sharding.Mesh:
    # Auto axes: the result is an ordinary array outside (Explicit axes would carry the
    # "chunks" sharding into the caller's reshapes and scatters).
    return jax.make_mesh(
        (num_devices,),
        ("chunks",),
        axis_types=(jax.sharding.AxisType.Auto,),
        devices=jax.local_devices()[:num_devices],
    )


@functools.partial(jax.jit, static_argnames=("run", "mode", "num_devices"))
def _stack(run, theta0, ids, *, mode: str, num_devices: int):
    """``[n_chunks, chunk, P]``: the JVP (forward) or VJP (reverse) of ``run`` at
    ``theta0`` with each ``e_i``, ``i = ids[c, k]`` (``-1``: a zero row). Jitted once per
    (run, shapes, mode, devices): repeated calls reuse the executable.

    The chunks always go through ``shard_map``, even on one device: at P = 4810, T = 625
    the same chunks took 48.5 s inside a one-device ``shard_map`` and 98.2 s under a plain
    ``jit`` on XLA:CPU (an earlier ``benchmarks/jacobian_dense.py`` ablation)."""
    p = theta0.size
    mesh = _mesh(num_devices)

    def per_device(th, ids_local):
        th = lax.pcast(th, ("chunks",), to="varying")
        if mode == "forward":
            _, f_jvp = jax.linearize(run, th)
            fn = jax.vmap(f_jvp)
        else:
            _, f_vjp = jax.vjp(run, th)
            fn = jax.vmap(lambda u: f_vjp(u)[0])
        return lax.map(lambda i: fn(jax.nn.one_hot(i, p, dtype=th.dtype)), ids_local)

    return jax.shard_map(
        per_device, mesh=mesh, in_specs=(PS(), PS("chunks")), out_specs=PS("chunks")
    )(theta0, ids)


def _chunk_plan(
    num_columns: int,
    num_params: int,
    num_steps: int,
    itemsize: int,
    *,
    mode: str,
    memory_bytes: int,
    num_devices: int,
    chunk_size: int | None = None,
) -> tuple[int, int]:
    """``(chunk, chunks_per_device)`` for ``num_columns`` columns (rows) over
    ``num_devices``: ``chunk_size`` or ``auto_chunk_size`` within each device's share of
    ``memory_bytes``, then balanced: the fewest chunks per device at that size, and the
    smallest chunk that covers the columns (less padding than rounding the count of full
    chunks up)."""
    nd = num_devices
    chunk = chunk_size or auto_chunk_size(
        num_params,
        num_steps,
        itemsize,
        mode=mode,
        memory_bytes=memory_bytes // nd,
        num_columns=max(1, -(-num_columns // nd)),
    )
    per_device = max(1, math.ceil(num_columns / chunk / nd))
    return max(1, math.ceil(num_columns / (per_device * nd))), per_device


def _rows(run, theta0, which, mode, chunk_size, num_steps, memory_bytes, num_devices):
    """``[len(which), P]``: ``J e_i`` (forward) or ``J^T e_i`` (reverse) for ``i`` in
    ``which``, computed in chunks split over devices."""
    p = theta0.size
    which = np.asarray(which, np.int64)
    nd = _default_devices(num_devices)
    t = num_steps if num_steps is not None else getattr(run, "num_steps", 1)
    chunk, per_device = _chunk_plan(
        len(which),
        p,
        t,
        theta0.dtype.itemsize,
        mode=mode,
        memory_bytes=memory_bytes,
        num_devices=nd,
        chunk_size=chunk_size,
    )
    n_chunks = per_device * nd
    ids = np.full(n_chunks * chunk, -1, np.int32)
    ids[: len(which)] = which
    mesh = _mesh(nd)
    ids = jax.device_put(ids.reshape(n_chunks, chunk), NamedSharding(mesh, PS("chunks")))
    # float32 products in full float32: on GPUs the default precision rounds matmul inputs
    # to TF32 (10-bit mantissa), which left J 2e-4 from float64 on an H200 (1e-7 on CPU).
    with jax.default_matmul_precision("highest"):
        out = _stack(run, theta0, ids, mode=mode, num_devices=nd)
    if nd > 1:
        # Gather the device-sharded stack through the host (the SVD runs there anyway).
        out = jnp.asarray(np.asarray(out))
    return out.reshape(n_chunks * chunk, p)[: len(which)]


def _check_columns(columns, p: int) -> np.ndarray:
    if columns is None:
        return np.arange(p)
    cols = np.asarray(columns)
    if cols.ndim != 1 or not np.issubdtype(cols.dtype, np.integer):
        raise ValueError(f"columns must be a 1-D integer array, got {cols.dtype} {cols.shape}")
    if len(cols) and (cols.min() < 0 or cols.max() >= p):
        raise ValueError(f"columns must lie in [0, {p}); got [{cols.min()}, {cols.max()}]")
    return cols.astype(np.int64)


@functools.partial(jax.jit, static_argnames=("run",))
def _zero_gradient(run, theta0):
    """``[P]`` bool: the loss gradient is exactly zero on every minibatch at ``theta0``."""
    from jax.flatten_util import ravel_pytree

    from dsb.jacobian.training import _floats_to

    def moved(batch):
        g = jax.grad(run.loss_fn)(run.unravel(theta0), batch)
        return ravel_pytree(g)[0] != 0

    batches = _floats_to(run.batches, theta0.dtype)
    return ~jnp.any(lax.map(moved, batches), axis=0)


@functools.partial(jax.jit, static_argnames=("run",))
def _fixes(run, theta0, v):
    """Whether ``J v == v`` exactly."""
    return jnp.array_equal(jax.jvp(run, (theta0,), (v,))[1], v)


def _columns_are_identity(run, theta0, cols: np.ndarray, seed: int) -> bool:
    v = np.zeros(theta0.size, theta0.dtype)
    v[cols] = np.random.default_rng(seed).standard_normal(len(cols))
    return bool(_fixes(run, theta0, jnp.asarray(v)))


def identity_columns(run, theta0: jax.Array, *, seed: int = 0) -> np.ndarray:
    """Indices ``j`` whose column of J is exactly ``e_j``, verified.

    Candidates are the parameters whose loss gradient is exactly zero on every minibatch
    at ``theta0`` (for a ``TrainingRun``; other callables have none). Typical: first-layer
    weights of input features that are zero in every training example (192 of the
    reference run's 4810: 3 always-zero digits pixels times 64 hidden units). They are
    checked together with one JVP: for a Gaussian ``v`` supported on the candidates,
    ``J v == v`` holds exactly if every candidate column is ``e_j`` and fails with
    probability one otherwise (``(J - I) v = 0`` for a nonzero ``J - I`` restricted to the
    candidates only on a proper subspace). When the check fails (weight decay, a parameter
    that wakes up later) no column is skipped.
    """
    if not all(hasattr(run, a) for a in ("loss_fn", "batches", "unravel")):
        return np.zeros(0, np.int64)
    cand = np.flatnonzero(np.asarray(_zero_gradient(run, theta0)))
    if len(cand) and not _columns_are_identity(run, theta0, cand, seed):
        log.info("identity_columns: %d zero-gradient parameters, but J v != v", len(cand))
        return np.zeros(0, np.int64)
    return cand


def jacobian_forward(
    run: Callable[[jax.Array], jax.Array],
    theta0: jax.Array,
    *,
    columns=None,
    identity: str | np.ndarray | None = "auto",
    chunk_size: int | None = None,
    num_steps: int | None = None,
    memory_bytes: int = 2 * 2**30,
    num_devices: int | None = None,
) -> jax.Array:
    """``J [P, P]`` by forward mode (``J[:, columns]``, ``[P, len(columns)]``, when given).

    ``identity``: ``"auto"`` writes the columns ``identity_columns`` verifies as ``e_j``
    instead of computing them; an index array names them (they are verified the same way,
    and ``ValueError`` is raised if they are not); ``None`` computes every column.
    ``num_devices`` splits the chunks over that many local devices (default: all of them
    in a single-process job; on a CPU host, ``XLA_FLAGS=--xla_force_host_platform_device_count``
    set to the number of cores gives one device per core, 1.4x faster than one device
    on 2 cores). ``num_steps`` (for the memory bound) defaults to ``run.num_steps``.
    """
    p = theta0.size
    cols = _check_columns(columns, p)
    ident = _identity(run, theta0, identity)
    skip = np.isin(cols, ident)
    todo = cols[~skip]
    stack = None
    if len(todo):
        stack = _rows(
            run, theta0, todo, "forward", chunk_size, num_steps, memory_bytes, num_devices
        )
    if skip.any():  # interleave the computed rows with the e_j rows
        out = jnp.zeros((len(cols), p), theta0.dtype)
        if stack is not None:
            out = out.at[np.flatnonzero(~skip)].set(stack)
        stack = out.at[np.flatnonzero(skip), cols[skip]].set(1)
    elif stack is None:  # no columns asked for
        stack = jnp.zeros((0, p), theta0.dtype)
    return stack.T  # rows of the stack are columns of J


def _identity(run, theta0, identity) -> np.ndarray:
    if identity is None:
        return np.zeros(0, np.int64)
    if isinstance(identity, str):
        if identity != "auto":
            raise ValueError(f"identity must be 'auto', None or an index array, got {identity!r}")
        return identity_columns(run, theta0)
    want = _check_columns(identity, theta0.size)
    if len(want) and not _columns_are_identity(run, theta0, want, 0):
        raise ValueError("identity: the given columns of J are not all exactly e_j")
    return want


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


def jacobian_forward_to_disk(
    run,
    theta0: jax.Array,
    path: str | Path,
    *,
    block_columns: int = 2048,
    max_blocks: int | None = None,
    identity: str | np.ndarray | None = "auto",
    **kwargs,
) -> dict:
    """Write ``J [P, P]`` to the ``.npy`` file ``path`` in blocks of ``block_columns``
    columns, for a J that does not fit in memory (P = 60,000 in float32 is 14.4 GB).

    Memory: one block (``P * block_columns`` numbers) plus what ``jacobian_forward`` needs
    for it. Progress (finished blocks, with a fingerprint of ``theta0``, ``P``, dtype and
    block size) is kept in ``path + ".progress.json"`` after each block, so a killed job
    resumes where it stopped; the progress file is removed when J is complete.
    ``max_blocks`` stops after that many new blocks (for timing and tests). Returns
    ``{"complete", "blocks_done", "blocks_total", "seconds", "identity_columns"}``.
    ``kwargs`` go to ``jacobian_forward`` (``num_devices``, ``chunk_size``, ...).
    """
    path = Path(path)
    prog_path = Path(str(path) + ".progress.json")
    p = theta0.size
    dtype = np.dtype(theta0.dtype)
    ident = _identity(run, theta0, identity)
    todo_cols = np.setdiff1d(np.arange(p), ident)
    blocks = [todo_cols[i : i + block_columns] for i in range(0, len(todo_cols), block_columns)]
    fingerprint = {
        "num_params": p,
        "dtype": dtype.name,
        "block_columns": block_columns,
        "theta0_sha1": hashlib.sha1(np.asarray(theta0).tobytes()).hexdigest(),
        "num_steps": int(getattr(run, "num_steps", -1)),
    }
    done: list[int] = []
    if path.exists() and prog_path.exists():
        prog = json.loads(prog_path.read_text())
        if prog.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{path} holds a different J (progress fingerprint {prog.get('fingerprint')} "
                f"!= {fingerprint}); remove it or choose another path"
            )
        done = prog["done"]
        mm = np.lib.format.open_memmap(path, mode="r+")
    elif path.exists():
        return {"complete": True, "blocks_done": len(blocks), "blocks_total": len(blocks),
                "seconds": 0.0, "identity_columns": len(ident)}  # fmt: skip
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(p, p))
        mm[ident, ident] = 1  # the rest of a new .npy memmap is zero
        prog_path.write_text(json.dumps({"fingerprint": fingerprint, "done": done}))
    t0 = time.perf_counter()
    new = 0
    for b, cols in enumerate(blocks):
        if b in done:
            continue
        if max_blocks is not None and new >= max_blocks:
            break
        tb = time.perf_counter()
        mm[:, cols] = np.asarray(
            jacobian_forward(run, theta0, columns=cols, identity=None, **kwargs)
        )
        mm.flush()
        done.append(b)
        new += 1
        prog_path.write_text(json.dumps({"fingerprint": fingerprint, "done": done}))
        elapsed = time.perf_counter() - t0
        left = len(blocks) - len(done)
        log.info(
            "J block %d/%d (%d columns) in %.1fs; about %.0fs left",
            len(done), len(blocks), len(cols), time.perf_counter() - tb, elapsed / new * left,
        )  # fmt: skip
    del mm
    complete = len(done) == len(blocks)
    if complete:
        prog_path.unlink()
    return {
        "complete": complete,
        "blocks_done": len(done),
        "blocks_total": len(blocks),
        "seconds": time.perf_counter() - t0,
        "identity_columns": len(ident),
    }


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
    rows = np.arange(theta0.size)
    return _rows(run, theta0, rows, "reverse", chunk_size, num_steps, memory_bytes, num_devices)


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
