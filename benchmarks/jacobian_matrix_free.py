"""Matrix-free training-Jacobian spectrum of a P >= 60,000 model: wall time and peak memory.

    python benchmarks/jacobian_matrix_free.py                       # LeNet-5, float64
    python benchmarks/jacobian_matrix_free.py --probe-steps --reps 1 --top-k 5 --deflate 5 \
        --count-probes 4 --count-max-products 400 --count-max-seconds 900 --force
    python benchmarks/jacobian_matrix_free.py --model mlp --count-max-products 4000
    python benchmarks/jacobian_matrix_free.py --model lenet5 --dtype float32 --timing-only
    python benchmarks/jacobian_matrix_free.py --model lenet5-xla --dtype float32 --timing-only

(the recorded runs; each run's settings are stored with its results).

Models (digits 8x8x1, 10 classes):

* ``lenet5``: ``build_model("lenet5", hidden=(240, 168), conv_impl="im2col")``, P = 60,350:
  the library's im2col convolutions (matmul derivatives; checked against ``nnx.Conv`` in
  ``tests/models``).
* ``lenet5-xla``: the same model with XLA convolutions (``conv_impl="xla"``), for the
  per-product timing that motivates ``im2col``.
* ``mlp``: ``build_model("mlp", widths=(900,))``, P = 64*900 + 900 + 900*10 + 10 = 67,510.

Recipe: the reference one (25 fixed minibatches of 64, SGD momentum 0.9, cosine 0.1 -> 0,
T = 625), the whole run in ``--dtype`` (default float64: the LeNet's sigma_1 is ~5e6, so a
float32 run's products carry ~0.3 of absolute error and no count below 0.1 means anything;
see ``resolution_floor_sigma_D``). Stages, each printed with elapsed time and peak RSS and
written to the JSON as it finishes (a killed run still leaves its numbers):

1. ``probe_T*``: one ``J v`` and one ``J^T u`` at small T (default 25), to see how the
   product time scales with T.
2. ``linearize`` at full T, then one jitted ``J v`` and one ``J^T u`` (compile and run timed
   apart; the jitted product is traced once and reused, trace counts recorded).
3. Budget check: if the planned products (top-k: at most ``4 (2k + 10) + 2k``; counts:
   ``--count-max-products``) times the measured per-product time exceed ``--budget-s``,
   the analysis is skipped (unless ``--force``) and the extrapolated total is recorded.
4. ``top_k``: ``top_singular_triplets`` of J (adaptive Golub-Kahan to relative residual
   ``--top-rtol``): the singular values, their relative residuals, the converged flags,
   products and time.
5. ``counts_D``: ``kpm_counts`` of the singular values of ``D = J - I`` below 0.1 / 1e-2 /
   1e-3 (kernel-polynomial step filters with Hutchinson probes after deflating the top
   ``--deflate`` directions of D; ``dsb.jacobian.certified``), within
   ``--count-max-products`` products and ``--count-max-seconds``: per threshold the
   bracket, whether it is resolved (the estimate is ``null`` when not) and the resolution
   reached, with the degree, probes, products, time and why it stopped. The record says
   which thresholds were resolved.

Dense comparison: the forward-mode dense Jacobian needs P column products (one JVP through
training each), so ``dense_estimate_s = P * t(J v)``. Peak memory is the process
high-water RSS (``resource.getrusage``). Results accumulate per model in
``benchmarks/results/jacobian_matrix_free.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dsb.data.digits import digits_arrays
from dsb.jacobian import (
    JacobianOperator,
    cross_entropy_loss,
    fixed_minibatches,
    kpm_counts,
    make_training_run,
    nnx_apply,
    reference_optimizer,
    top_singular_triplets,
)
from dsb.models import build_model

T_FULL = 625


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def build(name: str, x, y, dtype):
    if name.startswith("lenet5"):
        impl = "xla" if name == "lenet5-xla" else "im2col"
        model = build_model(
            "lenet5",
            num_classes=10,
            input_shape=(8, 8, 1),
            rngs=nnx.Rngs(0),
            hidden=(240, 168),
            conv_impl=impl,
            dtype=dtype,
        )
        desc = f"lenet5 channels=(6, 16) hidden=(240, 168) conv_impl={impl}, digits 8x8x1"
    elif name == "mlp":
        model = build_model(
            "mlp",
            num_classes=10,
            input_shape=(8, 8, 1),
            rngs=nnx.Rngs(0),
            widths=(900,),
            dtype=dtype,
        )
        desc = "mlp widths=(900,) relu, digits 8x8x1"
    else:
        raise ValueError(name)
    apply, params = nnx_apply(model)
    run, theta0 = make_training_run(
        cross_entropy_loss(apply),
        params,
        reference_optimizer(T_FULL),
        fixed_minibatches(x, y, 64),
        num_steps=T_FULL,
        dtype=dtype,
    )
    return run, theta0, desc


class Products:
    """Jitted ``J v`` / ``J^T u`` of one linearisation; the linear map is a jit argument,
    so each is traced once per (T, shapes) and reused. ``traces`` counts the traces."""

    def __init__(self, op: JacobianOperator):
        self.op = op
        self.traces = {"matvec": 0, "rmatvec": 0}
        theta0 = op.theta0

        def mv(f, v):
            self.traces["matvec"] += 1
            return f(v)

        def rmv(f, u):
            self.traces["rmatvec"] += 1
            return jax.linear_transpose(f, theta0)(u)[0]

        self._mv, self._rmv = jax.jit(mv), jax.jit(rmv)

    def matvec(self, v):
        return self._mv(self.op.linear_jvp, v)

    def rmatvec(self, u):
        return self._rmv(self.op.linear_jvp, u)


def time_products(op: JacobianOperator, reps: int, log) -> dict:
    prod = Products(op)
    v = jax.random.normal(jax.random.key(1), (op.num_params,), op.dtype)
    out = {}
    for name, fn in (("matvec", prod.matvec), ("rmatvec", prod.rmatvec)):
        t0 = time.perf_counter()
        w = jax.block_until_ready(fn(v))
        first = time.perf_counter() - t0
        runs = []
        for _ in range(reps):
            t0 = time.perf_counter()
            w = jax.block_until_ready(fn(v))
            runs.append(time.perf_counter() - t0)
        out[name] = {"first_call_s": first, "run_s": runs, "median_s": float(np.median(runs))}
        log(f"  one {name}: first call (compile+run) {first:.2f}s, runs {np.round(runs, 3)}s")
        assert np.isfinite(np.asarray(w)).all()
    out["traces"] = dict(prod.traces)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("lenet5", "lenet5-xla", "mlp"), default="lenet5")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    ap.add_argument("--probe-steps", type=int, nargs="*", default=(25,))
    ap.add_argument("--reps", type=int, default=2, help="timed repeats per product")
    ap.add_argument("--top-k", type=int, default=20)
    ap.add_argument("--top-rtol", type=float, default=1e-3)
    ap.add_argument("--deflate", type=int, default=20)
    ap.add_argument("--count-probes", type=int, default=8)
    ap.add_argument("--count-max-products", type=int, default=2000)
    ap.add_argument("--count-max-seconds", type=float, default=None)
    ap.add_argument("--thresholds", type=float, nargs="+", default=(0.1, 1e-2, 1e-3))
    ap.add_argument("--budget-s", type=float, default=600.0, help="whole-run target")
    ap.add_argument("--force", action="store_true", help="run the analysis over budget")
    ap.add_argument("--timing-only", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/jacobian_matrix_free.json")
    args = ap.parse_args()
    jax.config.update("jax_enable_x64", True)  # Krylov bases in float64 whatever the run
    dtype = jnp.dtype(args.dtype)
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:7.1f}s rss {_rss_gib():.2f} GiB] {msg}", flush=True)

    out_path = Path(args.out)
    allres = json.loads(out_path.read_text()) if out_path.exists() else {}
    allres.setdefault("runs", {})
    rec: dict = {"settings": vars(args), "stages": {}, "complete": False}
    allres["runs"][f"{args.model}-{args.dtype}"] = rec

    def save():
        rec["wall_s_so_far"] = time.perf_counter() - t_start
        rec["peak_rss_gib"] = _rss_gib()
        rec["load_average"] = os.getloadavg()
        allres["machine"] = {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "jax": jax.__version__,
            "note": "shared 2-core machine (another user's jobs ran alongside; see load "
            "averages); times are wall clock",
        }
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(allres, indent=1))

    @contextlib.contextmanager
    def stage(name):
        log(f"stage {name} ...")
        t0 = time.perf_counter()
        info: dict = {}
        yield info
        info["seconds"] = time.perf_counter() - t0
        info["peak_rss_gib_after"] = _rss_gib()
        rec["stages"][name] = info
        log(f"stage {name} done in {info['seconds']:.1f}s")
        save()

    with stage("build") as info:
        x, y = digits_arrays()["train"]
        run, theta0, desc = build(args.model, x, y, dtype)
        p = int(theta0.size)
        rec.update(model=desc, num_params=p, num_steps=T_FULL, dtype=str(theta0.dtype))
        log(f"  {desc}: P = {p}, T = {T_FULL}, {theta0.dtype}")

    for steps in args.probe_steps:
        with stage(f"probe_T{steps}") as info:
            t0 = time.perf_counter()
            op_s = JacobianOperator(run.with_steps(steps), theta0)
            jax.block_until_ready(op_s.theta_t)
            info["linearize_s"] = time.perf_counter() - t0
            info.update(time_products(op_s, args.reps, log))
            del op_s

    with stage("linearize") as info:
        op = JacobianOperator(run, theta0)
        jax.block_until_ready(op.theta_t)
    with stage("one_product_full_T") as info:
        info.update(time_products(op, args.reps, log))
        t_jv, t_jtu = info["matvec"]["median_s"], info["rmatvec"]["median_s"]
        t_prod = 0.5 * (t_jv + t_jtu)
        log(f"  per product at T={T_FULL}: J v {t_jv:.3f}s, J^T u {t_jtu:.3f}s")

    n_top = 4 * (2 * args.top_k + 10) + 2 * args.top_k
    n_count = args.count_max_products
    planned = (n_top + n_count) * t_prod
    elapsed = time.perf_counter() - t_start
    rec["per_product_s"] = {"J_v": t_jv, "Jt_u": t_jtu}
    rec["planned_products"] = {"top_k": n_top, "counts_max": n_count}
    rec["extrapolated_analysis_s"] = planned
    rec["extrapolated_total_s"] = elapsed + planned
    rec["dense_forward_estimate_s"] = p * t_jv
    rec["dense_forward_estimate_days"] = p * t_jv / 86400
    log(
        f"planned {n_top} + {n_count} products ~ {planned:.0f}s more (total ~ "
        f"{elapsed + planned:.0f}s vs budget {args.budget_s:.0f}s); dense forward ~ "
        f"P x t(J v) = {p * t_jv:.0f}s"
    )
    save()
    if args.timing_only:
        log("timing only: stop")
        return
    if elapsed + planned > args.budget_s and not args.force:
        rec["skipped_analysis"] = "extrapolated total over budget; rerun with --force"
        save()
        log("over budget: analysis skipped (see extrapolated_total_s)")
        return

    with stage("top_k") as info:
        top = top_singular_triplets(op, args.top_k, rtol=args.top_rtol, max_products=n_top)
        info.update(
            products=top.products,
            krylov_steps=top.num_krylov,
            top_singular_values=top.s.tolist(),
            rel_residuals=top.rel_residual.tolist(),
            converged=top.converged.tolist(),
            all_converged=top.all_converged,
            rtol=args.top_rtol,
            stop_reason=top.stop_reason,
        )
        log(
            f"  top-{args.top_k} of J: {np.round(top.s[:5], 4)}...; all converged to "
            f"{args.top_rtol:g}: {top.all_converged} ({top.products} products)"
        )

    with stage("counts_D") as info:
        op_d = op.with_shift(1.0)
        # D's top directions for the deflation: J's are not D's (D = J - I).
        top_d = top_singular_triplets(
            op_d, args.deflate + 1, rtol=args.top_rtol, max_products=args.count_max_products // 2
        )
        res = kpm_counts(
            op_d,
            args.thresholds,
            deflate=args.deflate,
            num_probes=args.count_probes,
            max_products=args.count_max_products,
            max_seconds=args.count_max_seconds,
            top=top_d,
        )
        counts = {}
        for t, c in res.counts.items():
            d = c.as_dict()
            d["estimate"] = None if not c.resolved else c.estimate  # JSON: no NaN
            counts[f"{t:g}"] = d
        resolved = [f"{t:g}" for t, c in res.counts.items() if c.resolved]
        info.update(
            counts_of_sigma_D_below=counts,
            resolved_thresholds=resolved,
            unresolved_thresholds=[f"{t:g}" for t, c in res.counts.items() if not c.resolved],
            resolution_sigma_D=res.resolution,
            degree=res.degree,
            probes=res.num_probes,
            deflated=res.deflated,
            sigma_max_deflated_bound=res.sigma_max,
            top_D_singular_values=top_d.s.tolist(),
            top_D_converged=top_d.all_converged,
            products=res.products,
            stop_reason=res.stop_reason,
        )
        log(
            f"  counts of sigma(D): resolved {resolved or 'none'}; resolution "
            f"{res.resolution:.3g} at degree {res.degree}, {res.num_probes} probes, "
            f"{res.products} products ({res.stop_reason})"
        )
        for t, c in res.counts.items():
            log(f"    below {t:g}: [{c.low:.0f}, {c.high:.0f}] estimate {c.estimate}")

    rec["wall_s"] = time.perf_counter() - t_start
    rec["complete"] = True
    save()
    log(f"done: wall {rec['wall_s']:.0f}s, peak RSS {_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()
