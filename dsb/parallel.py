"""Device mesh, shardings and the data-parallel step wrapper.

Why ``jax.shard_map`` rather than ``jit`` with sharding annotations: the step is written
as per-device code with explicit collectives (``pmean`` of gradients, metrics and
BatchNorm statistics over the ``data`` axis). That is the same program on 1 CPU, 8 GPUs
and a multi-host pod, and its numerics are the ones we state in the code: a mean of
per-device means, with no partitioner free to pick another reduction or to all-gather
activations. It also keeps the model code oblivious to sharding, so the training-Jacobian
tools can call the same model as a plain ``params -> outputs`` function.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dsb.config import ParallelConfig

__all__ = [
    "DATA_AXIS",
    "abstract_like",
    "batch_sharding",
    "data_parallel",
    "distributed_args",
    "gather_to_host",
    "initialize",
    "make_mesh",
    "put_global_batch",
    "replicated",
    "simulated_devices_env",
]

DATA_AXIS = "data"
log = logging.getLogger(__name__)
_initialized = False


def initialize(cfg: ParallelConfig) -> None:
    """Start JAX's multi-host runtime when asked; must run before anything touches devices.

    ``jax.distributed.initialize`` gets ``distributed_args(cfg)``: what the config or the
    environment names; JAX detects the rest on SLURM, Open MPI and TPU pods. Collectives
    across CPU processes need no setting: ``jax_cpu_collectives_implementation`` defaults
    to gloo (JAX 0.10), which tests/test_multihost.py runs on.
    """
    global _initialized
    if cfg.distributed and not _initialized:
        jax.distributed.initialize(**distributed_args(cfg))
        _initialized = True
        log.info(
            "jax.distributed: process %d of %d, %d local / %d global devices",
            jax.process_index(),
            jax.process_count(),
            jax.local_device_count(),
            jax.device_count(),
        )


def distributed_args(cfg: ParallelConfig, environ: dict | None = None) -> dict:
    """The arguments of ``jax.distributed.initialize`` that are known: each of
    ``coordinator_address``, ``num_processes`` and ``process_id`` from ``parallel.*`` if
    set, else from ``$JAX_COORDINATOR_ADDRESS``, ``$JAX_NUM_PROCESSES``, ``$JAX_PROCESS_ID``
    (``environ``, default ``os.environ``); those in neither are left to JAX to detect."""
    env = os.environ if environ is None else environ
    args = {
        "coordinator_address": cfg.coordinator_address or env.get("JAX_COORDINATOR_ADDRESS"),
        "num_processes": _int_or_env(cfg.num_processes, env, "JAX_NUM_PROCESSES"),
        "process_id": _int_or_env(cfg.process_id, env, "JAX_PROCESS_ID"),
    }
    n, i = args["num_processes"], args["process_id"]
    if n is not None and n <= 0:
        raise ValueError(f"num_processes={n} (parallel.num_processes or $JAX_NUM_PROCESSES)")
    if i is not None and not 0 <= i < (n if n is not None else i + 1):
        raise ValueError(
            f"process_id={i} (parallel.process_id or $JAX_PROCESS_ID): must be in "
            f"0 .. num_processes - 1 (num_processes={n})"
        )
    return {k: v for k, v in args.items() if v not in (None, "")}


def _int_or_env(value: int | None, env, name: str) -> int | None:
    if value is not None:
        return value
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"${name}={raw!r}: must be an integer") from None


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh over every device (or the first ``num_devices``) with axis ``data``."""
    devices = jax.devices()
    if num_devices is not None:
        if jax.process_count() > 1:
            raise ValueError("parallel.num_devices is only supported in single-process runs")
        if not 0 < num_devices <= len(devices):
            raise ValueError(f"parallel.num_devices={num_devices}: have {len(devices)} devices")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Explicit,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def abstract_like(tree, sharding=None):
    """ShapeDtypeStructs of ``tree`` (optionally all with ``sharding``): a restore target."""

    def leaf(x):
        return jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=sharding or getattr(x, "sharding", None)
        )

    return jax.tree.map(leaf, tree)


def put_global_batch(local_batch, mesh: Mesh):
    """This host's rows of the global batch -> global arrays sharded over ``data``."""
    sharding = batch_sharding(mesh)
    if jax.process_count() == 1:  # the same result, without the multi-host bookkeeping
        return jax.device_put(local_batch, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def data_parallel(fn, mesh: Mesh, in_specs, out_specs):
    """``fn`` written per device (batch axes split over ``data``) -> a global function."""
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs)


def gather_to_host(x) -> np.ndarray:
    """A global array sharded over ``data`` -> the full numpy array on every host."""
    if jax.process_count() > 1:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def simulated_devices_env(devices: int, env: dict | None = None) -> dict[str, str]:
    """The environment of a child interpreter that sees ``devices`` simulated CPU devices
    (``--xla_force_host_platform_device_count``): this process's environment with
    ``XLA_FLAGS`` and ``JAX_PLATFORMS`` replaced, then ``env``. XLA reads the flag when the
    backend starts, so it only works in a fresh process."""
    return {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        **(env or {}),
    }
