"""Dense training Jacobian at the reference size (P = 4810, T = 625): dsb vs plain jacfwd.

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/jacobian_dense.py

Baseline: ``jax.jit(jax.jacfwd(run))`` of the same nested-scan run (what the reference
notebook did: all P tangents at once). dsb: ``jacobian_forward`` (linearise once, vmap the
linear map over 64-column chunks under ``lax.map``, inside ``shard_map``) and
``jacobian_reverse`` (64-row chunks), each on one device and with the chunks split over
two host devices (one per core). Ablation: the same forward chunks under a plain ``jit``
(no ``shard_map``), which XLA:CPU runs markedly slower. All are timed in this one
process, alternated, first call (compile included) and ``--repeats`` calls; the answers
are compared in relative Frobenius norm.

Roofline: XLA's flop count for one training step of the baseline program (the scan body;
XLA counts a loop body once), times T, over each method's best time gives its achieved
GFLOP/s; a float32 matmul (n = 1024) on the same machine gives the attainable GFLOP/s.
Every method does the same flops (P tangents through T steps), so
``peak_matmul_gflops / baseline_gflops`` bounds the speed-up any schedule of these flops
can reach on this machine. Results: ``benchmarks/results/jacobian_dense.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dsb.jacobian import (
    jacobian_forward,
    jacobian_reverse,
    reference_run,
)


def timed(fn):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - t0, out


def plain_jit_chunks(run, chunk: int):
    """Ablation: dsb's forward chunks under a plain ``jit`` instead of a one-device
    ``shard_map`` (what ``jacobian_forward`` did before; same arithmetic)."""

    def jac(theta0):
        p = theta0.size
        _, f_jvp = jax.linearize(run, theta0)
        batched = jax.vmap(f_jvp)
        n = -(-p // chunk)

        def one(i):
            return batched(jax.nn.one_hot(i * chunk + jnp.arange(chunk), p, dtype=theta0.dtype))

        return jax.lax.map(one, jnp.arange(n)).reshape(n * chunk, p)[:p].T

    return jac


def step_flops_of_baseline(run, theta0) -> float:
    """XLA's flop count of the baseline program for one step (T = 1: the scan body)."""
    one = run.with_steps(1)
    cost = jax.jit(jax.jacfwd(one)).lower(theta0).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


def matmul_gflops(n: int = 1024, reps: int = 10) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = np.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/jacobian_dense.json")
    args = ap.parse_args()
    # 25 minibatches per epoch; the lr cosine spans the run (625 steps at the default).
    run, theta0 = reference_run(num_steps=25 * args.epochs)
    naive = jax.jit(jax.jacfwd(run))
    nd = len(jax.devices())
    plain = jax.jit(plain_jit_chunks(run, 64))
    methods = {
        "naive_jacfwd": lambda: naive(theta0),
        "ablation_chunks_plain_jit_1dev": lambda: plain(theta0),
        "dsb_forward_1dev": lambda: jacobian_forward(run, theta0),
        "dsb_reverse_1dev": lambda: jacobian_reverse(run, theta0),
    }
    if nd >= 2:
        methods["dsb_forward_2dev"] = lambda: jacobian_forward(run, theta0, num_devices=2)
        methods["dsb_reverse_2dev"] = lambda: jacobian_reverse(run, theta0, num_devices=2)
    times = {k: [] for k in methods}
    outs = {}
    step_flops = step_flops_of_baseline(run, theta0)
    peak = matmul_gflops()
    print(f"baseline flops per step {step_flops:.3g}; float32 matmul {peak:.0f} GFLOP/s")
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
    total_flops = step_flops * run.num_steps
    gflops = {k: total_flops / v / 1e9 for k, v in best.items()}
    result = {
        "num_params": int(theta0.size),
        "num_steps": int(run.num_steps),
        "dtype": str(theta0.dtype),
        "seconds": times,
        "speedup_vs_naive": {k: best["naive_jacfwd"] / v for k, v in best.items()},
        "rel_frobenius_diff_vs_naive": rel,
        "roofline": {
            "baseline_flops_per_step_xla": step_flops,
            "total_flops": total_flops,
            "achieved_gflops": gflops,
            "peak_matmul_gflops_f32_n1024": peak,
            "speedup_bound_vs_naive": peak / gflops["naive_jacfwd"],
        },
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
