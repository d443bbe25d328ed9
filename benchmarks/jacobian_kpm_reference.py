"""Bulk counts of sigma(D), D = J - I, on the reference run against its dense Jacobian.

    DSB_REFERENCE_J=/tmp/refJ.npy python benchmarks/jacobian_kpm_reference.py \
        --max-products 20000 --num-krylov 1200

The reference run is the one of ``tests/jacobian/test_slq.py::reference`` (digits MLP
64-GELU-10, P = 4810, T = 625, float32). Dense J (forward mode, P JVPs) is loaded from
``DSB_REFERENCE_J`` when that file exists (and saved there when it does not), its D = J - I
is SVD'd in float64 for the truth, then ``kpm_counts`` (x64 work dtype, deep deflation with
its certificate, ``dsb.jacobian.certified``) counts sigma(D) below each threshold. Writes
``benchmarks/results/jacobian_kpm_reference.json``: per threshold the truth, the bracket,
the estimate (``null`` unless resolved), the relative error, and the run's degree, probes,
deflation depth, products (deflation vs moments) and seconds, with the settings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

from dsb.jacobian import (  # noqa: E402
    JacobianOperator,
    UnconvergedWarning,
    jacobian_forward_cached,
    kpm_counts,
    reference_run,
)

OUT = Path(__file__).parent / "results" / "jacobian_kpm_reference.json"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.1, 1e-2])
    ap.add_argument("--max-products", type=int, default=20000)
    ap.add_argument("--num-krylov", type=int, default=None)
    ap.add_argument("--deflate", type=int, default=None)
    ap.add_argument("--num-probes", type=int, default=8)
    ap.add_argument("--rel-width", type=float, default=0.1)
    args = ap.parse_args(argv)

    run, theta0 = reference_run()
    cache = os.environ.get("DSB_REFERENCE_J")
    t0 = time.perf_counter()
    jd = jacobian_forward_cached(run, theta0, cache)
    t_dense_j = time.perf_counter() - t0
    s_d = np.linalg.svd(jd.astype(np.float64) - np.eye(len(jd)), compute_uv=False)
    p = len(jd)
    print(f"P = {p}; dense J {t_dense_j:.0f} s (cache: {cache}); SVD done", flush=True)

    op = JacobianOperator(run, theta0).with_shift(1.0)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnconvergedWarning)
        res = kpm_counts(
            op,
            args.thresholds,
            deflate=args.deflate,
            num_probes=args.num_probes,
            rel_width=args.rel_width,
            max_products=args.max_products,
            num_krylov=args.num_krylov,
        )
    seconds = time.perf_counter() - t0
    counts = {}
    for t, c in res.counts.items():
        true = int((s_d < t).sum())
        d = c.as_dict()
        d["estimate"] = c.estimate if c.resolved else None
        d.update(
            true=true,
            contains_truth=bool(c.low <= true <= c.high),
            rel_error=abs(c.estimate - true) / true if c.resolved else None,
            rel_width=(c.high - c.low) / true,
        )
        counts[f"{t:g}"] = d
        print(f"t = {t:g}: truth {true}, {d}", flush=True)
    k = res.deflated
    record = {
        "settings": vars(args),
        "num_params": p,
        "sigma_D": {
            "1": float(s_d[0]),
            f"{k + 1}": float(s_d[k]) if k < p else None,
        },
        "counts": counts,
        "degree": res.degree,
        "num_probes": res.num_probes,
        "deflated": k,
        "num_krylov": res.deflation.num_krylov if res.deflation is not None else None,
        "sigma_max_deflated_bound": res.sigma_max,
        "products": res.products,
        "deflation_products": res.deflation_products,
        "moment_products": res.moment_products,
        "seconds": seconds,
        "deflation_seconds": res.deflation.seconds if res.deflation is not None else None,
        "stop_reason": res.stop_reason,
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs; shared)",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(json.dumps({k_: v for k_, v in record.items() if k_ != "counts"}, indent=1))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
