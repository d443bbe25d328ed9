"""Dense training Jacobian: dsb against the plain ``jax.jit(jax.jacfwd(run))``, side by side.

    python benchmarks/jacobian_dense.py                 # CPU: every section, ~40 min on 2 cores
    python benchmarks/jacobian_dense.py --sections main roofline --repeats 3

The script gives the host one XLA device per core (``--xla_force_host_platform_device_count``)
before JAX starts; accelerators are used as they are. Results:
``benchmarks/results/jacobian_dense_cpu.json`` (``jacobian_dense_gpu_<device kind>.json``
on a GPU). ``--update`` merges the sections run into that file. Sections:

* ``main``: the reference run (MLP 64-GELU-10, P = 4810, T = 625, float32). Methods, run
  interleaved (one call of each per round) for ``--repeats`` rounds, best round reported:
  ``plain_jacfwd`` (the reference notebook's method on the same run: all P tangents at
  once under one ``jit``; the baseline), ``dsb_forward`` (``jacobian_forward``: one
  linearisation per device, 64-column chunks split over the devices, verified identity
  columns skipped), ``dsb_forward_1dev`` (one device), and the same two methods on the
  run with autodiff derivatives (``*_autodiff``: the notebook's ``jax.nn.gelu`` and optax
  cross-entropy; dsb's closed-form GELU and cross-entropy derivatives are the
  difference). Every answer is compared with the float64 J of dsb's forward mode
  (relative Frobenius norm) and with the baseline's. The load average is
  read before and after each call.
* ``roofline``: XLA's flop count of one step of the baseline program times T gives each
  method's GFLOP/s; a float32 matmul (n = 1024, all cores) the attainable peak. The tighter
  bound is the *GEMM floor*: the eight matrix products of one tangent step of the MLP
  (``x dW1``, ``da W2``, ``a dW2``, ``da^T delta``, ``a^T d delta``, ``d delta W2^T``,
  ``delta dW2^T``, ``x^T d delta_h`` at the chunk size dsb uses), timed alone, one chain
  per device on all devices at once, times the chunks per device: the time of dsb's
  schedule if everything but its matrix products were free. ``bound = plain / floor``.
* ``profile`` (CPU): a subprocess on one core with XLA's per-operation trace events
  (``--xla_cpu_enable_xprof_traceme``) runs dsb's forward mode at T = 25 and splits the
  time of the chunk loop into matrix products and the rest (elementwise fusions,
  transposes), with the top operations.
* ``scaling``: P = 4810 (the MLP), 14,632 and 60,350 (LeNet-5 on 8x8 digits, im2col
  convolutions, hidden 100-50 and 240-168), T = 625, float32. Each is timed on column
  subsets of one and of two chunks per device (compile excluded); the difference gives the
  time per column, the rest the fixed cost (linearisation), and ``fixed + P * per_column``
  the projected full J. Memory: XLA's buffer assignment for the chunk program (temporaries,
  arguments, outputs) plus J itself (``4 P^2`` bytes; over the 2 GiB default budget use
  ``jacobian_forward_to_disk``).
"""

from __future__ import annotations

import argparse
import os
import sys

if "jax" not in sys.modules:  # one host device per core, before JAX starts
    _flag = f"--xla_force_host_platform_device_count={os.cpu_count()}"
    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as PS

from dsb.jacobian import (
    auto_chunk_size,
    cross_entropy_loss,
    fixed_minibatches,
    identity_columns,
    jacobian_forward,
    make_training_run,
    nnx_apply,
    reference_optimizer,
    reference_run,
)
from dsb.jacobian.dense import _chunk_plan, _stack

T_REF = 625


def _sync(x):
    return jax.block_until_ready(x)


def timed(fn):
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    out = _sync(fn())
    return time.perf_counter() - t0, out, load, os.getloadavg()[0]


def step_flops_of_baseline(run, theta0) -> float:
    """XLA's flop count of the baseline program for one step (T = 1)."""
    cost = jax.jit(jax.jacfwd(run.with_steps(1))).lower(theta0).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


def matmul_gflops(n: int = 1024, reps: int = 10) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    _sync(f(a))
    best = np.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        _sync(f(a))
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _dsb_chunks(run, theta0, num_identity: int) -> tuple[int, int]:
    """``(chunk, chunks_per_device)`` that ``jacobian_forward(run, theta0)`` uses with its
    defaults (all local devices, 2 GiB) when ``num_identity`` columns are skipped."""
    return _chunk_plan(
        theta0.size - num_identity,
        theta0.size,
        run.num_steps,
        theta0.dtype.itemsize,
        mode="forward",
        memory_bytes=2 * 2**30,
        num_devices=jax.local_device_count(),
    )


def rel(a, ref) -> float:
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


# --------------------------------------------------------------------------- main


def section_main(args, res):
    run, th = reference_run(num_steps=args.steps)
    run_ad, th_ad = reference_run(num_steps=args.steps, closed_form=False)
    assert np.array_equal(np.asarray(th), np.asarray(th_ad))
    plain = jax.jit(jax.jacfwd(run))
    plain_ad = jax.jit(jax.jacfwd(run_ad))
    methods = {
        "plain_jacfwd": lambda: plain(th),
        "dsb_forward": lambda: jacobian_forward(run, th),
        "dsb_forward_1dev": lambda: jacobian_forward(run, th, num_devices=1),
        "plain_jacfwd_autodiff": lambda: plain_ad(th_ad),
        "dsb_forward_autodiff": lambda: jacobian_forward(run_ad, th_ad),
    }
    if jax.local_device_count() == 1:
        del methods["dsb_forward_1dev"]
    rounds = {k: [] for k in methods}
    outs = {}
    # compile (and first-call costs) outside the timed rounds, recorded separately
    first = {}
    for k, fn in methods.items():
        first[k], outs[k], _, _ = timed(fn)
        print(f"first call {k}: {first[k]:.1f}s", flush=True)
    for r in range(args.repeats):
        for k, fn in methods.items():
            t, outs[k], l0, l1 = timed(fn)
            rounds[k].append({"seconds": t, "load_before": l0, "load_after": l1})
            print(f"round {r} {k}: {t:.1f}s (load {l0:.2f} -> {l1:.2f})", flush=True)
    best = {k: min(x["seconds"] for x in v) for k, v in rounds.items()}
    base = best["plain_jacfwd"]
    host = {k: np.asarray(v) for k, v in outs.items()}
    del outs
    ident = identity_columns(run, th)
    res["main"] = {
        "num_params": int(th.size),
        "num_steps": int(run.num_steps),
        "dtype": str(th.dtype),
        "devices": jax.local_device_count(),
        "identity_columns": len(ident),
        "chunk_size": _dsb_chunks(run, th, len(ident))[0],
        "first_call_seconds": first,
        "rounds": rounds,
        "best_seconds": best,
        "speedup_vs_plain_jacfwd": {k: base / v for k, v in best.items()},
        "speedup_vs_plain_jacfwd_autodiff": {
            k: best["plain_jacfwd_autodiff"] / v for k, v in best.items()
        },
        "rel_frobenius_diff_vs_plain_jacfwd": {
            k: rel(v, host["plain_jacfwd"]) for k, v in host.items()
        },
    }
    if args.float64:
        jax.config.update("jax_enable_x64", True)
        run64, th64 = reference_run(num_steps=args.steps, dtype=jnp.float64)
        t0 = time.perf_counter()
        j64 = np.asarray(_sync(jacobian_forward(run64, th64)))
        res["main"]["float64_seconds"] = time.perf_counter() - t0
        res["main"]["rel_frobenius_diff_vs_float64"] = {k: rel(v, j64) for k, v in host.items()}
        jax.config.update("jax_enable_x64", False)
    print(json.dumps({k: res["main"][k] for k in ("best_seconds", "speedup_vs_plain_jacfwd")}))


# ----------------------------------------------------------------------- roofline


def _product_shapes(run, theta0, c: int) -> dict:
    """(M, K, N) of the eight matrix products of one tangent step of a one-hidden-layer
    MLP for a chunk of ``c`` tangents (batch b, input d, hidden h, classes k)."""
    layers = run.unravel(theta0)["layers"]
    (d, h), k = layers[0]["kernel"].shape, layers[1]["kernel"].shape[1]
    b = int(jax.tree_util.tree_leaves(run.batches)[0].shape[1])
    return {
        "x @ dW1": (b, d, c * h),
        "da @ W2": (c * b, h, k),
        "a @ dW2": (b, h, c * k),
        "da^T @ delta": (c * h, b, k),
        "a^T @ d_delta": (h, b, c * k),
        "d_delta @ W2^T": (c * b, k, h),
        "delta @ dW2^T": (b, k, c * h),
        "x^T @ d_delta_h": (d, b, c * h),
    }


def _time_products(shapes: list, reps: int = 200) -> float:
    """Seconds per round of the products ``shapes`` [(M, K, N)], timed alone: every device
    runs ``reps`` chained rounds at once. Each round adds the previous round's (tiny)
    checksum to the smaller operand of each product, so XLA cannot hoist the products out
    of the loop; that pass touches at most 160 KB per product here, against 1-4 MB of
    operands and results. (Variants that touched no data let XLA drop the work, and an
    unrolled program over distinct operands ran 5-10x slower than the real step.)"""
    nd = jax.local_device_count()
    mesh = jax.make_mesh(
        (nd,), ("d",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.local_devices()
    )
    key = jax.random.key(0)
    lhs, rhs = [], []
    for i, (m, kk, n) in enumerate(shapes):
        ka, kb = jax.random.split(jax.random.fold_in(key, i))
        lhs.append(jax.random.normal(ka, (nd, m, kk)))
        rhs.append(jax.random.normal(kb, (nd, kk, n)))

    def per_dev(lhs, rhs):
        def body(_, carry):
            eps, acc = carry
            tot = 0.0
            for a, bm in zip(lhs, rhs):
                a, bm = a[0], bm[0]
                if a.size <= bm.size:
                    a = a + eps
                else:
                    bm = bm + eps
                tot = tot + (a @ bm)[0, 0]
            return tot * 1e-30, acc + tot

        zero = jax.lax.pcast(jnp.float32(0), ("d",), to="varying")
        return jax.lax.fori_loop(0, reps, body, (zero, zero))[1][None]

    f = jax.jit(jax.shard_map(per_dev, mesh=mesh, in_specs=PS("d"), out_specs=PS("d")))
    _sync(f(lhs, rhs))
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        _sync(f(lhs, rhs))
        best = min(best, time.perf_counter() - t0)
    return best / reps


def gemm_floor(run, theta0, chunk: int) -> dict:
    """The GEMM floor of dsb's schedule (the eight products at ``chunk``, all at once) and
    a lower floor over schedules: each product at its fastest of chunks 16/64/256 and of
    both orientations (``A B`` or ``(B^T A^T)^T``), per tangent column."""
    shapes = _product_shapes(run, theta0, chunk)
    each = {name: _time_products([s]) for name, s in shapes.items()}
    total = _time_products(list(shapes.values()))
    flops = sum(2 * m * kk * n for m, kk, n in shapes.values())
    best_per_column = {}
    for name in shapes:
        cands = {}
        for c in (16, 64, 256):
            m, kk, n = _product_shapes(run, theta0, c)[name]
            cands[f"c{c}"] = _time_products([(m, kk, n)]) / c
            cands[f"c{c}_transposed"] = _time_products([(n, kk, m)]) / c
        best_per_column[name] = min(cands.items(), key=lambda kv: kv[1])
    return {
        "chunk": chunk,
        "shapes_MKN": {k: list(v) for k, v in shapes.items()},
        "seconds_per_chunk_step_each": each,
        "seconds_per_chunk_step_all": total,
        "gflops_per_device": flops / total / 1e9,
        "best_layout_seconds_per_column_step": {k: v[1] for k, v in best_per_column.items()},
        "best_layout_choice": {k: v[0] for k, v in best_per_column.items()},
        "best_layout_seconds_per_column_step_sum": sum(v[1] for v in best_per_column.values()),
    }


def section_roofline(args, res):
    run, th = reference_run(num_steps=args.steps)
    step_flops = step_flops_of_baseline(run, th)
    total = step_flops * run.num_steps
    peak = matmul_gflops()
    out = {
        "baseline_flops_per_step_xla": step_flops,
        "total_flops": total,
        "peak_matmul_gflops_f32_n1024": peak,
    }
    nd = jax.local_device_count()
    if jax.default_backend() == "cpu":
        p = th.size - len(identity_columns(run, th))
        chunk, per_dev = _dsb_chunks(run, th, th.size - p)
        floor = gemm_floor(run, th, chunk)
        floor["chunks_per_device"] = per_dev
        floor["seconds_per_step"] = floor["seconds_per_chunk_step_all"] * per_dev
        floor["seconds_full_run"] = floor["seconds_per_step"] * run.num_steps
        best_col = floor["best_layout_seconds_per_column_step_sum"]
        floor["best_layout_seconds_full_run"] = best_col * p / nd * run.num_steps
        out["gemm_floor"] = floor
    if "main" in res:
        best = res["main"]["best_seconds"]
        out["achieved_gflops"] = {k: total / v / 1e9 for k, v in best.items()}
        out["fraction_of_peak"] = {k: total / v / 1e9 / peak for k, v in best.items()}
        out["speedup_bound_peak_vs_plain"] = peak / out["achieved_gflops"]["plain_jacfwd"]
        if "gemm_floor" in out:
            fl = out["gemm_floor"]["seconds_full_run"]
            out["speedup_bound_gemm_floor_vs_plain"] = best["plain_jacfwd"] / fl
            out["dsb_forward_over_gemm_floor"] = best["dsb_forward"] / fl
            fl_best = out["gemm_floor"]["best_layout_seconds_full_run"]
            out["speedup_bound_best_layout_gemm_floor_vs_plain"] = best["plain_jacfwd"] / fl_best
    res["roofline"] = out
    print(json.dumps(out, indent=1))


# ------------------------------------------------------------------------ profile

_PROFILE_CHILD = r"""
import bisect, collections, glob, gzip, json, os, sys
os.sched_setaffinity(0, {0})
import jax
from dsb.jacobian import reference_run, jacobian_forward
run, th = reference_run(num_steps=25)
jax.block_until_ready(jacobian_forward(run, th, num_devices=1))
d = sys.argv[1]
with jax.profiler.trace(d, create_perfetto_trace=True):
    jax.block_until_ready(jacobian_forward(run, th, num_devices=1))
fn = glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)[0]
ev = [e for e in json.load(gzip.open(fn))["traceEvents"] if e.get("ph") == "X"]
# the chunk loop: the while loop run once per chunk, the longest such loop in total
loops = collections.defaultdict(list)
for e in ev:
    if e["name"].startswith("while"):
        loops[e["name"]].append((e["ts"], e["ts"] + e["dur"]))
def total(k):
    return sum(b - a for a, b in loops[k])
name = max((k for k, v in loops.items() if len(v) > 1), key=total)
spans = sorted(loops[name])
starts = [a for a, _ in spans]
agg = collections.Counter(); cnt = collections.Counter()
for e in ev:
    n = e["name"]
    if n.startswith(("while", "Thunk", "end: ")) or n.startswith("$"):
        continue
    i = bisect.bisect_right(starts, e["ts"]) - 1
    if i >= 0 and e["ts"] + e["dur"] <= spans[i][1]:
        agg[n] += e["dur"]; cnt[n] += 1
out = {"loop": name, "chunks": len(spans), "loop_us": sum(b - a for a, b in spans),
       "agg": agg, "cnt": cnt}
print("PROFILE" + json.dumps(out))
"""


def section_profile(args, res):
    if jax.default_backend() != "cpu":
        return
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        "--xla_cpu_enable_xprof_traceme=true --xla_cpu_multi_thread_eigen=false "
        "intra_op_parallelism_threads=1"
    )
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run(
            [sys.executable, "-c", _PROFILE_CHILD, d], env=env, capture_output=True, text=True
        )
    line = [x for x in out.stdout.splitlines() if x.startswith("PROFILE")]
    if not line:
        res["profile"] = {"error": out.stderr[-2000:]}
        return
    prof = json.loads(line[0][len("PROFILE") :])
    agg = prof["agg"]
    gemm = sum(v for k, v in agg.items() if k.startswith(("ynn_fusion", "dot", "custom-call")))
    other = sum(agg.values()) - gemm
    top = sorted(agg.items(), key=lambda kv: -kv[1])[:16]
    loop_us = prof["loop_us"]
    res["profile"] = {
        "setting": "one core, one thread, T = 25, dsb_forward on one device (64-column "
        "chunks); times of the operations inside the chunk loop",
        "chunks": prof["chunks"],
        "chunk_loop_seconds": loop_us / 1e6,
        "unattributed_loop_seconds": (loop_us - gemm - other) / 1e6,
        "matrix_product_seconds": gemm / 1e6,
        "other_op_seconds": other / 1e6,
        "matrix_product_share_of_ops": gemm / (gemm + other),
        "top_ops_seconds": {k: v / 1e6 for k, v in top},
    }
    print(json.dumps(res["profile"], indent=1))


# ------------------------------------------------------------------------ scaling


def lenet_run(hidden, steps):
    from flax import nnx

    from dsb.data.digits import digits_arrays
    from dsb.models import build_model

    x, y = digits_arrays()["train"]
    model = build_model(
        "lenet5",
        num_classes=10,
        input_shape=(8, 8, 1),
        rngs=nnx.Rngs(0),
        hidden=hidden,
        conv_impl="im2col",
    )
    apply, params = nnx_apply(model)
    return make_training_run(
        cross_entropy_loss(apply),
        params,
        reference_optimizer(steps),
        fixed_minibatches(x, y, 64),
        num_steps=steps,
    )


def chunk_cap(p: int) -> int:
    """Accelerators: columns per chunk that keep one chunk's working set near 4 GiB."""
    return max(64, min(p, 4 * 2**30 // (4 * 12 * p)))


def section_scaling(args, res):
    # name: (builder, chunk on CPU). LeNet columns cost ~100x the MLP's on CPU (im2col
    # convolutions of 8x8 images are small products), so their subsets are smaller.
    cpu = jax.default_backend() == "cpu"
    specs = {
        "mlp_64": (lambda: reference_run(num_steps=args.steps), 64),
        "lenet5_100_50": (lambda: lenet_run((100, 50), args.steps), 32 if cpu else None),
        "lenet5_240_168": (lambda: lenet_run((240, 168), args.steps), 8 if cpu else None),
    }
    out = res.setdefault("scaling", {})
    nd = jax.local_device_count()
    for name, (make, chunk) in specs.items():
        if args.scaling_only and name not in args.scaling_only:
            continue
        try:
            out[name] = scale_one(name, make, chunk, nd)
        except Exception as e:  # record and go on (an accelerator may run out of memory)
            out[name] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
        print(json.dumps(out[name]), flush=True)
    if "mlp_64" in out and "main" in res:
        out["mlp_64"]["measured_full_seconds"] = res["main"]["best_seconds"]["dsb_forward"]


def scale_one(name, make, chunk, nd) -> dict:
    run, th = make()
    p = th.size
    chunk = chunk or auto_chunk_size(
        p, run.num_steps, 4, memory_bytes=2 * 2**30 // nd, num_columns=2 * chunk_cap(p)
    )
    times = {}
    for per_dev in (1, 2):
        cols = np.arange(min(p, per_dev * nd * chunk))
        kw = {"columns": cols, "identity": None, "chunk_size": chunk}
        _sync(jacobian_forward(run, th, **kw))  # compile
        t0 = time.perf_counter()
        _sync(jacobian_forward(run, th, **kw))
        times[len(cols)] = time.perf_counter() - t0
        print(f"{name} P={p}: {len(cols)} columns in {times[len(cols)]:.1f}s", flush=True)
    (n1, t1), (n2, t2) = sorted(times.items())
    per_col = (t2 - t1) / (n2 - n1)
    fixed = t1 - n1 * per_col
    ids = np.full((nd, chunk), 0, np.int32)
    mem = (
        _stack.lower(run, th, jax.device_put(ids), mode="forward", num_devices=nd)
        .compile()
        .memory_analysis()
    )
    device_bytes = None
    if mem is not None:
        device_bytes = int(
            mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
        )
    return {
        "num_params": int(p),
        "num_steps": int(run.num_steps),
        "chunk": chunk,
        "devices": nd,
        "subset_seconds": {str(k): v for k, v in times.items()},
        "seconds_per_column": per_col,
        "fixed_seconds": fixed,
        "projected_full_seconds": fixed + p * per_col,
        "chunk_program_bytes_one_chunk_per_device": device_bytes,
        "full_J_bytes_float32": 4 * p * p,
        "to_disk_needed_at_default_budget": 4 * p * p > 2 * 2**30,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=T_REF)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sections", nargs="+", default=["main", "roofline", "profile", "scaling"])
    ap.add_argument("--scaling-only", nargs="*", default=None)
    ap.add_argument("--no-float64", dest="float64", action="store_false")
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--update", action="store_true", help="merge into the result file: keep other sections"
    )
    ap.add_argument(
        "--matmul-precision",
        default="highest",
        help="jax_default_matmul_precision for every method ('default' lets GPUs use TF32)",
    )
    args = ap.parse_args()
    jax.config.update("jax_default_matmul_precision", args.matmul_precision)
    dev = jax.devices()[0]
    res = {
        "platform": jax.default_backend(),
        "device_kind": dev.device_kind,
        "devices": jax.local_device_count(),
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "jax": jax.__version__,
        "load_average_at_start": os.getloadavg(),
        "argv": sys.argv[1:],
        "matmul_precision": args.matmul_precision,
    }
    tag = res["platform"]
    if tag != "cpu":  # e.g. jacobian_dense_gpu_nvidia_h200.json
        tag += "_" + "".join(c if c.isalnum() else "_" for c in dev.device_kind.lower())
    out = args.out or f"benchmarks/results/jacobian_dense_{tag}.json"
    runs = []
    if args.update and Path(out).exists():  # keep the sections not rerun
        old = json.loads(Path(out).read_text())
        first = {"argv": old.get("argv"), "load_average_at_start": old.get("load_average_at_start")}
        runs = old.get("runs", [first])
        res = {**old, **res}
    res["runs"] = [*runs, {"argv": sys.argv[1:], "sections": " ".join(args.sections),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                           "load_average_at_start": os.getloadavg()}]  # fmt: skip
    for name in ("main", "roofline", "profile", "scaling"):
        if name in args.sections:
            globals()[f"section_{name}"](args, res)
    res["load_average_at_end"] = os.getloadavg()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
