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
    "batch_sharding",
    "data_parallel",
    "gather_to_host",
    "initialize",
    "make_mesh",
    "put_global_batch",
    "put_replicated",
    "replicated",
    "simulated_devices_env",
]

DATA_AXIS = "data"
log = logging.getLogger(__name__)
_initialized = False


def initialize(cfg: ParallelConfig) -> None:
    """Start JAX's multi-host runtime when asked; must run before anything touches devices."""
    global _initialized
    if cfg.distributed and not _initialized:
        jax.distributed.initialize()
        _initialized = True
        log.info(
            "jax.distributed: process %d of %d, %d local / %d global devices",
            jax.process_index(),
            jax.process_count(),
            jax.local_device_count(),
            jax.device_count(),
        )


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


def put_replicated(tree, mesh: Mesh):
    """Place a pytree identically on every device (every host must pass the same values)."""
    return jax.device_put(tree, replicated(mesh))


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
