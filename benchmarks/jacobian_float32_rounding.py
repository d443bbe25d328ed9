"""Float32 rounding in the training Jacobian's products, measured on the reference run.

    DSB_REFERENCE_J=/tmp/refJ.npy DSB_REFERENCE_J64=/tmp/refJ64.npy \
        python benchmarks/jacobian_float32_rounding.py

The certificate of ``dsb.jacobian.certified`` covers the Krylov and filter errors of the
counts, not the rounding inside each float32 product ``J v`` / ``J^T u`` (a replay of the
whole training run in float32). This measures it on the reference run (digits MLP
64-GELU-10, P = 4810, T = 625): the same run replayed in float32 and in float64 from the
same theta_0 (the float32 draw, exactly representable in float64), then

* the products: ``||J_32 v - J_64 v|| / ||v||`` and ``||J_32^T u - J_64^T u|| / ||u||`` for
  random Gaussian vectors (what each matrix-free product gets wrong);
* the dense Jacobians (forward mode, P JVPs each; the float32 one is what the benchmarks
  and the evaluator take as the truth): ``||J_32 - J_64||_2`` (by Weyl, no singular value
  of D = J - I moves by more), the singular values of D near each threshold in both, and
  the counts of sigma(D) below each threshold in both.

Writes ``benchmarks/results/jacobian_float32_rounding.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from dsb.jacobian import JacobianOperator, jacobian_forward_cached, reference_run  # noqa: E402

OUT = Path(__file__).parent / "results" / "jacobian_float32_rounding.json"


def product_errors(op32, op64, num: int, seed: int = 0) -> dict:
    """Relative errors of float32 products against float64 ones on ``num`` random vectors."""
    rng = np.random.default_rng(seed)
    fwd, bwd = [], []
    for _ in range(num):
        v = rng.standard_normal(op32.num_params)
        v /= np.linalg.norm(v)
        j32 = np.asarray(op32.matvec(jnp.asarray(v, jnp.float32)), np.float64)
        # v rounded to float32 on both sides: the difference is the product's own rounding.
        v32 = np.asarray(np.float32(v), np.float64)
        j64 = np.asarray(op64.matvec(jnp.asarray(v32)))
        fwd.append(float(np.linalg.norm(j32 - j64)))
        t32 = np.asarray(op32.rmatvec(jnp.asarray(v, jnp.float32)), np.float64)
        t64 = np.asarray(op64.rmatvec(jnp.asarray(v32)))
        bwd.append(float(np.linalg.norm(t32 - t64)))
    return {"jvp": fwd, "vjp": bwd, "jvp_max": max(fwd), "vjp_max": max(bwd)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.1, 1e-2, 1e-3])
    ap.add_argument("--num-vectors", type=int, default=8)
    args = ap.parse_args(argv)

    run32, theta0 = reference_run()
    run64, _ = reference_run(dtype=jnp.float64)
    theta64 = theta0.astype(jnp.float64)  # the same point: float32 values are exact in float64
    t0 = time.perf_counter()
    op32, op64 = JacobianOperator(run32, theta0), JacobianOperator(run64, theta64)
    theta_t_rel = float(
        np.linalg.norm(np.asarray(op32.theta_t, np.float64) - np.asarray(op64.theta_t))
        / np.linalg.norm(np.asarray(op64.theta_t))
    )
    prod = product_errors(op32, op64, args.num_vectors)
    t_prod = time.perf_counter() - t0
    print(f"theta_T rel diff {theta_t_rel:.3g}; product errors {prod}", flush=True)

    t0 = time.perf_counter()
    j32 = jacobian_forward_cached(run32, theta0, os.environ.get("DSB_REFERENCE_J"))
    t_j32 = time.perf_counter() - t0
    t0 = time.perf_counter()
    j64 = jacobian_forward_cached(run64, theta64, os.environ.get("DSB_REFERENCE_J64"))
    t_j64 = time.perf_counter() - t0
    print(f"dense J: float32 {t_j32:.0f} s, float64 {t_j64:.0f} s", flush=True)
    p = len(j32)
    eye = np.eye(p)
    diff = j32.astype(np.float64) - j64
    norm_diff = float(np.linalg.norm(diff, 2))
    s32 = np.linalg.svd(j32.astype(np.float64) - eye, compute_uv=False)
    s64 = np.linalg.svd(j64 - eye, compute_uv=False)
    near = {}
    for t in args.thresholds:
        c32, c64 = int((s32 < t).sum()), int((s64 < t).sum())
        i = p - c64  # s descending: index of the largest value below t in float64
        win = slice(max(i - 5, 0), min(i + 5, p))
        dev = np.abs(s32 - s64)
        # how many of float64's values lie within the Weyl bound of t (the counts can move
        # by at most this many)
        within = int((np.abs(s64 - t) <= norm_diff).sum())
        near[f"{t:g}"] = {
            "count_float32": c32,
            "count_float64": c64,
            "count_diff": c32 - c64,
            "count_within_weyl_bound_of_t": within,
            "sigma_D_float64_near_t": s64[win].tolist(),
            "sigma_D_float32_near_t": s32[win].tolist(),
            "max_abs_sigma_diff_near_t": float(dev[win].max()),
        }
        print(f"t = {t:g}: {near[f'{t:g}']}", flush=True)
    record = {
        "num_params": p,
        "theta_T_rel_diff": theta_t_rel,
        "product_abs_error_unit_vectors": prod,
        "sigma_1_J": {
            "float32": float(np.linalg.norm(j32.astype(np.float64), 2)),
            "float64": float(np.linalg.norm(j64, 2)),
        },
        "norm2_J32_minus_J64": norm_diff,
        "max_abs_sigma_D_diff": float(np.abs(s32 - s64).max()),
        "thresholds": near,
        "seconds": {"products": t_prod, "dense_float32": t_j32, "dense_float64": t_j64},
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs; shared)",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "thresholds"}, indent=1))


if __name__ == "__main__":
    main()
