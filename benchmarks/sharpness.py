"""Cost of the ``sharpness`` evaluator per checkpoint, for the default MLP and LeNet-5.

For each model (at its digits initialisation, 8x8x1 inputs) on a batch of ``--examples``
digits: the compile time of the Hessian-vector product, the median time of one product
(``--repeats`` timed after a warm-up), ``top_eigenpairs`` at ``k = 1``, ``rtol = 1e-3`` as
the evaluator runs it by default (wall time, Lanczos steps, products, converged) and
Hutchinson's trace with 32 probes, for the Hessian and the Gauss-Newton matrix. The
evaluator's cost per checkpoint is the top-eigenvalue row plus the trace row where
``trace_probes`` is set. The JSON records the load average before and after: numbers from
a busy machine are upper bounds.

    python benchmarks/sharpness.py [--examples 1024] [--out benchmarks/results/sharpness_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
from flax import nnx

from dsb.curvature import CurvatureOperator, hutchinson_trace, top_eigenpairs
from dsb.data.digits import digits_arrays
from dsb.models import build_model
from dsb.models.layers import count_params

MODELS = {"mlp": {"widths": [512, 512]}, "lenet5": {}}  # the default job's MLP; LeNet-5


def measure(name: str, kwargs: dict, examples: int, repeats: int, matrix: str) -> dict:
    x, y = digits_arrays()["train"]
    x, y = x[:examples], y[:examples]
    model = build_model(name, num_classes=10, input_shape=(8, 8, 1), rngs=nnx.Rngs(0), **kwargs)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    op = CurvatureOperator(graphdef, params, rest, x, y, matrix=matrix)
    v = jax.random.normal(jax.random.key(1), (op.dim,))
    t0 = time.perf_counter()
    jax.block_until_ready(op(v))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(op(v))
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    top = top_eigenpairs(op, 1, rtol=1e-3)
    top_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tr = hutchinson_trace(op, 32)
    trace_s = time.perf_counter() - t0
    return {
        "params": count_params(model),
        "examples": examples,
        "matrix": matrix,
        "product_compile_s": compile_s,
        "product_median_s": statistics.median(times),
        "top1_s": top_s,
        "top1_lanczos_steps": top.steps,
        "top1_products": top.products,
        "top1_converged": top.all_converged,
        "top1_value": float(top.ritz[0]),
        "top1_rel_residual": float(top.residuals[0] / abs(top.ritz[0])),
        "trace32_s": trace_s,
        "trace32": tr.mean,
        "trace32_rel_stderr": tr.stderr / abs(tr.mean),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/sharpness_cpu.json"))
    args = ap.parse_args()
    out = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "devices": [str(d) for d in jax.devices()],
        "loadavg_start": [round(v, 2) for v in os.getloadavg()],
        "results": [],
    }
    for name, kwargs in MODELS.items():
        for matrix in ("hessian", "gauss_newton"):
            row = {"model": name, **measure(name, kwargs, args.examples, args.repeats, matrix)}
            print(json.dumps(row), flush=True)
            out["results"].append(row)
    out["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
