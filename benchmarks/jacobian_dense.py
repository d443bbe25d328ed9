"""Dense training Jacobian at the reference size (P = 4810, T = 625): dsb vs plain jacfwd.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/jacobian_dense.py

Baseline: ``jax.jit(jax.jacfwd(run))`` of the same nested-scan run (what the reference
notebook did: all P tangents at once). dsb: ``jacobian_forward`` (linearise once, vmap
the linear map over 64-column chunks under ``lax.map``), on one device and with the
chunks split over two host devices (one per core). Both are timed in this one process,
alternated, first call (compile included) and a second call; the answers are compared
in relative Frobenius norm. Results: ``benchmarks/results/jacobian_dense.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from dsb.data.digits import digits_arrays
from dsb.jacobian import (
    cross_entropy_loss,
    fixed_minibatches,
    jacobian_forward,
    make_training_run,
    nnx_apply,
    reference_optimizer,
)
from dsb.models import build_model


def timed(fn):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - t0, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/jacobian_dense.json")
    args = ap.parse_args()
    x, y = digits_arrays()["train"]
    model = build_model(
        "mlp",
        num_classes=10,
        input_shape=(8, 8, 1),
        rngs=nnx.Rngs(0),
        widths=(64,),
        activation="gelu",
        bias_init_std=0.125,
    )
    apply, params = nnx_apply(model)
    run, theta0 = make_training_run(
        cross_entropy_loss(apply),
        params,
        reference_optimizer(625),
        fixed_minibatches(x, y, 64),
        num_epochs=args.epochs,
    )
    naive = jax.jit(jax.jacfwd(run))
    nd = len(jax.devices())
    methods = {
        "naive_jacfwd": lambda: naive(theta0),
        "dsb_forward_1dev": lambda: jacobian_forward(run, theta0),
    }
    if nd >= 2:
        methods["dsb_forward_2dev"] = lambda: jacobian_forward(run, theta0, num_devices=2)
    times = {k: [] for k in methods}
    outs = {}
    for _ in range(args.repeats):
        for k, fn in methods.items():
            t, outs[k] = timed(fn)
            times[k].append(t)
            print(f"{k}: {t:.1f}s", flush=True)
    ref = np.asarray(outs["naive_jacfwd"], np.float64)
    rel = {
        k: float(np.linalg.norm(np.asarray(v, np.float64) - ref) / np.linalg.norm(ref))
        for k, v in outs.items()
    }
    best = {k: min(v) for k, v in times.items()}
    result = {
        "num_params": int(theta0.size),
        "num_steps": int(run.num_steps),
        "dtype": str(theta0.dtype),
        "seconds": times,
        "speedup_vs_naive": {k: best["naive_jacfwd"] / v for k, v in best.items()},
        "rel_frobenius_diff_vs_naive": rel,
        "devices": nd,
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "machine": platform.platform(),
        "jax": jax.__version__,
        "note": "timed on a shared 2-core machine; load average recorded; same process, alternated",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
