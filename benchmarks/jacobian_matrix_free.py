"""Matrix-free training-Jacobian spectrum of a P >= 60,000 model: wall time and peak memory.

    python benchmarks/jacobian_matrix_free.py

Model: LeNet-5 on digits 8x8 with hidden widths (240, 168): P = 60,350 (dense J would be
60,350 forward passes of the whole run, ~12x the P = 4810 cost per column times 12.5x the
columns). Recipe: the reference one (25 fixed minibatches of 64, SGD momentum 0.9, cosine
0.1 -> 0, T = 625), float32. Work: one linearisation, Golub-Kahan top-``k`` singular
values, and SLQ on ``D^T D`` (``D = J - I``) with vmapped probes for the count of
singular values of D below 0.1 / 1e-2 / 1e-3 (CMS bracket reported with the estimate).
Peak memory is the process high-water RSS. Results:
``benchmarks/results/jacobian_matrix_free.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import jax
from flax import nnx

from dsb.data.digits import digits_arrays
from dsb.jacobian import (
    JacobianOperator,
    cross_entropy_loss,
    fixed_minibatches,
    golub_kahan_svd,
    make_training_run,
    nnx_apply,
    reference_optimizer,
    slq_spectrum,
)
from dsb.models import build_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, nargs=2, default=(240, 168))
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--gk-matvecs", type=int, default=20)
    ap.add_argument("--slq-matvecs", type=int, default=30)
    ap.add_argument("--slq-probes", type=int, default=4)
    ap.add_argument("--out", default="benchmarks/results/jacobian_matrix_free.json")
    args = ap.parse_args()
    jax.config.update("jax_enable_x64", True)  # Krylov bases in float64; the run is float32
    t_start = time.perf_counter()
    x, y = digits_arrays()["train"]
    model = build_model(
        "lenet5",
        num_classes=10,
        input_shape=(8, 8, 1),
        rngs=nnx.Rngs(0),
        hidden=tuple(args.hidden),
    )
    apply, params = nnx_apply(model)
    run, theta0 = make_training_run(
        cross_entropy_loss(apply),
        params,
        reference_optimizer(625),
        fixed_minibatches(x, y, 64),
        num_epochs=25,
    )
    p = int(theta0.size)
    timings = {}

    t0 = time.perf_counter()
    op = JacobianOperator(run, theta0)
    jax.block_until_ready(op.theta_t)
    timings["linearize"] = time.perf_counter() - t0
    v = jax.random.normal(jax.random.key(0), (p,), theta0.dtype)
    jax.block_until_ready(op.matvec(v))
    t0 = time.perf_counter()
    jax.block_until_ready(op.rmatvec(op.matvec(v)))
    timings["one_JtJ_product"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    _, top, _ = golub_kahan_svd(op, args.top_k, num_matvecs=args.gk_matvecs)
    timings["golub_kahan"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    slq = slq_spectrum(op.with_shift(1.0), num_matvecs=args.slq_matvecs, num_probes=args.slq_probes)
    timings["slq_D"] = time.perf_counter() - t0
    counts = {}
    for thr in (0.1, 1e-2, 1e-3):
        est, sem = slq.count_below(thr)
        lo, hi = slq.count_bounds(thr)
        counts[str(thr)] = {
            "estimate": est,
            "sem": sem,
            "cms_low": float(lo.mean()),
            "cms_high": float(hi.mean()),
        }
    timings["total"] = time.perf_counter() - t_start
    result = {
        "model": f"lenet5 hidden={tuple(args.hidden)} on digits 8x8x1",
        "num_params": p,
        "num_steps": int(run.num_steps),
        "top_singular_values_golub_kahan": [float(s) for s in top],
        "slq_count_singular_values_of_D_below": counts,
        "settings": vars(args),
        "seconds": timings,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "machine": platform.platform(),
        "jax": jax.__version__,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
