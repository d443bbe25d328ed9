"""Cost of the DSB probe sets of the CIFAR-10 recipe (experiment=dsb_cifar10) at d = 3072.

One command: ``python benchmarks/dsb_probe_sets.py`` writes
``benchmarks/results/dsb_probe_sets.json`` (machine, load average, JAX devices, every
measurement and the extrapolation to the recipe's sizes). The recipe's options are read
from conf/ (``evals.dsb``: num_samples, maxent_sets, ot_sets, particle_steps, seed, clip).

Data: synthetic class-structured images (per class a smooth mean image, a rank-``--rank``
Gaussian part and pixel noise, clipped to [0, 1] and rounded to k/255), ``--per-class``
train rows per class, fitted with ``fit_class_stats`` exactly as the evaluator does (256
bins, 256 projections): realistic statistics (full-rank covariances, many distinct pixel
values) at the CIFAR shape.

Three parts:

  particle_profile  where box2/box3 time goes: one class of ``n_y`` particles at d = 3072,
                    compile time and seconds per Adam step of the jitted scan, for the
                    hand-written gradient (``_particle_grad``, used now) and for autodiff
                    of ``_particle_loss`` (what the sampler did before), with XLA's flop
                    count per step. The step is matmul bound: ~2 n d^2 + 4 n^2 d flops
                    now, ~6 n d^2 + 6 n^2 d with autodiff.
  builds            each set built in a FRESH subprocess (``build_*_set`` without cache):
                    wall seconds and peak RSS of the build (VmHWM reset after the
                    statistics are loaded, so the 0.7 GiB float64 covariances are in the
                    baseline, not hidden by the load's own peak; ru_maxrss of the whole
                    process too), at two or three sizes so the scaling is measured.
  projection        the recipe's sizes (num_samples = 10^4, particle_steps): per set,
                    from the measured scaling laws written next to each number.

Usage: python benchmarks/dsb_probe_sets.py [--per-class 500] [--sizes 100 200 400]
[--particle-sizes 50 200 1000] [--quick] [--label ...]. ``--quick`` shrinks everything
(a smoke run; its numbers are not the recorded ones).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import procmem  # benchmarks/procmem.py (the script directory is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "dsb_probe_sets.json"
K, D = 10, 3072


def recipe_options() -> dict:
    from dsb.config import compose, to_config

    cfg = to_config(compose(["experiment=dsb_cifar10"]))
    opts = dict(cfg.evals["dsb"])
    opts.setdefault("particle_steps", 1000)  # DsbProbes' default
    return opts


def synthetic(per_class: int, rank: int, seed: int, n_test: int = 0):
    """``(x [K per_class, D], y)`` train rows (and ``n_test`` test rows) in [0, 1]."""
    rng = np.random.default_rng(seed)
    side = np.linspace(0, 1, 32)
    means, factors = [], []
    for _ in range(K):
        # Smooth class mean: a few low-frequency cosines per channel.
        f = rng.integers(1, 4, (3, 2))
        img = np.stack(
            [
                0.5 + 0.2 * np.cos(np.pi * f[c, 0] * side)[:, None] * np.cos(np.pi * f[c, 1] * side)
                for c in range(3)
            ],
            -1,
        )
        means.append(img.reshape(-1))
        factors.append(rng.standard_normal((D, rank)) * (0.15 / np.sqrt(rank)))

    def draw(n):
        y = rng.integers(0, K, n)
        x = np.empty((n, D))
        for k in range(K):
            m = y == k
            z = rng.standard_normal((int(m.sum()), rank))
            x[m] = means[k] + z @ factors[k].T + 0.03 * rng.standard_normal((int(m.sum()), D))
        return np.round(np.clip(x, 0, 1) * 255) / 255, y.astype(np.int32)

    return draw(K * per_class), draw(n_test)


def save_stats(st, path: Path) -> None:
    import dataclasses

    arrays = {f.name: getattr(st, f.name) for f in dataclasses.fields(st)}
    arrays["shrinkage"] = np.array([] if st.shrinkage is None else st.shrinkage)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})


def load_stats(path: Path):
    from dsb.stats.moments import ClassStats

    with np.load(path) as f:
        kw = {k: f[k] for k in f.files}
    sh = kw.pop("shrinkage")
    return ClassStats(**kw, shrinkage=None if sh.size == 0 else tuple(sh))


# ----------------------------------------------------------------------------- worker


def worker(spec: dict) -> dict:
    """One build in this (fresh) process: wall seconds and peak RSS."""
    from dsb.stats.evalsets import build_maxent_set, build_ot_set

    st = load_stats(Path(spec["stats"]))
    _ = st.content_hash
    import gc

    gc.collect()
    rss0, maxrss0 = procmem.status("VmRSS"), procmem.maxrss()
    hwm_reset = procmem.reset_hwm()
    t = time.perf_counter()
    if spec["group"] == "maxent":
        es = build_maxent_set(st, spec["kind"], spec["n"], 0, **spec["options"])
    else:
        with np.load(spec["source"]) as f:
            x, src = f["x"], f["y"]
        es = build_ot_set(st, spec["kind"], x, src, 0, **spec["options"])
    sec = time.perf_counter() - t
    out = {
        "seconds": round(sec, 3),
        "maxrss_gib": round(procmem.maxrss() / 2**30, 3),
        "maxrss_before_build_gib": round(maxrss0 / 2**30, 3),
        "rss_before_build_gib": round(rss0 / 2**30, 3),
        # VmHWM since the reset: the build's own peak (the stats load peaks higher).
        "build_peak_rss_gib": round(procmem.status("VmHWM") / 2**30, 3) if hwm_reset else None,
        "build_peak_over_before_gib": round((procmem.status("VmHWM") - rss0) / 2**30, 3)
        if hwm_reset
        else None,
        "rows": len(es.y_N),
        "mean_rel_err": es.report.get("mean_rel_err"),
        "cov_rel_err": es.report.get("cov_rel_err"),
    }
    if "pairs" in es.report.get("extra", {}):
        out["pairs"] = es.report["extra"]["pairs"]
        out["source_classes"] = len(np.unique(es.src_N))
    return out


def run_worker(spec: dict, timeout: int) -> dict:
    env = dict(os.environ)
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"worker failed: {spec}\n{p.stderr[-3000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["process_seconds"] = round(time.perf_counter() - t, 2)
    print(spec["group"], spec["kind"], spec.get("n"), res, flush=True)
    return res


# ----------------------------------------------------------------------------- profile


def particle_profile(st, sizes, steps: int) -> list[dict]:
    """Seconds per step and XLA flops of one class's particle optimisation at d = 3072."""
    import functools

    import jax
    import jax.numpy as jnp
    import optax

    from dsb.stats import maxent

    @functools.partial(jax.jit, static_argnames=("steps", "use_skew"))
    def autodiff_opt(z0, mean, cov, proj, skew, w0, lr, steps, use_skew):
        # The sampler before the hand-written gradient: jax.grad of the same objective.
        opt = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.01))

        def step(carry, i):
            z, s = carry
            g = jax.grad(maxent._particle_loss)(
                z, mean, cov, proj, skew, w0 * (1.0 - i / steps), use_skew
            )
            upd, s = opt.update(g, s, z)
            return (optax.apply_updates(z, upd), s), None

        (z, _), _ = jax.lax.scan(step, (z0, opt.init(z0)), jnp.arange(steps))
        return jax.nn.sigmoid(z)

    @functools.partial(jax.jit, static_argnames=("steps", "use_skew"))
    def hand_written(z0, mean, cov, proj, skew, w0, lr, steps, use_skew):
        # The sampler's compiled chunk (maxent._particle_chunk) running all the steps,
        # every projection in one block.
        state = maxent._particle_optimizer(lr, steps).init(z0)
        z, _ = maxent._particle_chunk(
            z0, state, jnp.int32(0), mean, cov, proj, skew, w0, lr,
            steps=steps, length=steps, use_skew=use_skew, batch=proj.shape[1],
        )  # fmt: skip
        return jax.nn.sigmoid(z)

    r = st.proj_DxR.shape[1] // 2
    cov = jnp.asarray(st.covariance(0), jnp.float32)
    mean = jnp.asarray(st.mean_KxD[0], jnp.float32)
    proj = jnp.asarray(st.proj_DxR[:, :r], jnp.float32)
    skew = jnp.asarray(st.proj_skew_KxR[0, :r], jnp.float32)
    rows = []
    for nk in sizes:
        z0 = jnp.asarray(np.random.default_rng(nk).standard_normal((nk, D)) * 0.3, jnp.float32)
        args = (z0, mean, cov, proj, skew, jnp.float32(1e-2), jnp.float32(0.05))
        for name, fn in (("hand_written", hand_written), ("autodiff", autodiff_opt)):
            for use_skew in (False, True):
                res = {"n_y": nk, "gradient": name, "order": 3 if use_skew else 2}
                t = time.perf_counter()
                c1 = fn.lower(*args, steps=1, use_skew=use_skew).compile()
                res["compile_seconds"] = round(time.perf_counter() - t, 2)
                cs = fn.lower(*args, steps=1 + steps, use_skew=use_skew).compile()
                ca = c1.cost_analysis()
                ca = ca[0] if isinstance(ca, list) else ca
                res["xla_flops_one_step"] = float(ca.get("flops", float("nan")))
                c1(*args).block_until_ready()  # warm
                t = time.perf_counter()
                c1(*args).block_until_ready()
                t1 = time.perf_counter() - t
                t = time.perf_counter()
                cs(*args).block_until_ready()
                ts = time.perf_counter() - t
                res["seconds_per_step"] = round((ts - t1) / steps, 5)
                res["theory_flops_per_step"] = (
                    2 * nk * D * D + 4 * nk * nk * D
                    if name == "hand_written"
                    else 6 * nk * D * D + 6 * nk * nk * D
                )
                rows.append(res)
                print("profile", res, flush=True)
                if name == "autodiff" and nk > 400:
                    break  # slow: order 2 is enough to compare
    return rows


# ----------------------------------------------------------------------------- main


def _fit_line(xs, ys):
    """Least-squares ``y = a + b x``; returns (a, b)."""
    b, a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(a), float(b)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker")
    ap.add_argument("--per-class", type=int, default=500)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 400])
    ap.add_argument("--particle-sizes", type=int, nargs="+", default=[50, 200, 1000])
    ap.add_argument("--profile-steps", type=int, default=4)
    ap.add_argument("--build-steps", type=int, nargs=2, default=[5, 25])
    ap.add_argument("--ot-rows", type=int, nargs=2, default=[1, 6])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip", nargs="*", default=[], help="set names to skip")
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))))
        return
    if a.quick:
        a.per_class, a.sizes, a.particle_sizes = 60, [40, 80], [20, 40]
        a.profile_steps, a.build_steps, a.ot_rows = 2, [2, 4], [1, 2]

    import jax

    from dsb.stats.moments import fit_class_stats

    opts = recipe_options()
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    (x, y), (xt, yt) = synthetic(a.per_class, a.rank, seed=0, n_test=K * 20)
    t = time.perf_counter()
    st = fit_class_stats([(x[i : i + 1000], y[i : i + 1000]) for i in range(0, len(y), 1000)], K)
    fit_s = time.perf_counter() - t
    result = {
        "label": a.label,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.platform()}",
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_devices": [str(dv) for dv in jax.devices()],
        "env": {k: os.environ.get(k) for k in ("XLA_FLAGS", "OMP_NUM_THREADS")},
        "loadavg_start": [round(v, 2) for v in load0],
        "recipe": {k: opts[k] for k in ("num_samples", "maxent_sets", "ot_sets", "seed")}
        | {"particle_steps": opts["particle_steps"], "clip": opts.get("clip", False)},
        "data": {"dim": D, "classes": K, "train_rows": len(y), "rank": a.rank},
        "fit_seconds": round(fit_s, 2),
        "args": {k: v for k, v in vars(a).items() if k != "worker"},
    }
    tmp = Path(tempfile.mkdtemp(prefix="dsb_probe_bench_"))
    save_stats(st, tmp / "stats.npz")

    result["particle_profile"] = particle_profile(st, a.particle_sizes, a.profile_steps)

    builds: dict[str, list[dict]] = {}
    clip = bool(opts.get("clip", False))
    for kind in opts["maxent_sets"]:
        if kind in a.skip:
            continue
        runs = []
        if kind in ("box2", "box3"):
            # Steps vary at one size (per-step cost), and the size at the larger step count.
            grid = [(a.sizes[0], a.build_steps[0]), (a.sizes[0], a.build_steps[1])]
            grid += [(n, a.build_steps[1]) for n in a.sizes[1:]]
        else:
            grid = [(n, None) for n in a.sizes]
        for n, steps in grid:
            o = {"clip": clip} if kind == "gaussian" else {}
            if steps is not None:
                o["steps"] = steps
            spec = {"stats": str(tmp / "stats.npz"), "group": "maxent", "kind": kind, "n": n}
            res = run_worker(spec | {"options": o}, timeout=3600)
            runs.append({"n": n, "steps": steps} | res)
        builds[f"maxent/{kind}"] = runs
    for kind in opts["ot_sets"]:
        if kind in a.skip:
            continue
        runs = []
        if kind == "gaussian":
            # One source class (0), growing numbers of (s, t) pairs: per-pair cost.
            sizes = a.ot_rows
            pool = xt[yt == 0]
            srcs = [(pool[:n], yt[yt == 0][:n]) for n in sizes]
        else:
            sizes = a.sizes
            srcs = [(np.resize(xt, (n, D)), np.resize(yt, n)) for n in sizes]
        for n, (xs, ys) in zip(sizes, srcs, strict=True):
            np.savez(tmp / "src.npz", x=xs.astype(np.float32), y=ys)
            o = {"clip": clip} if kind == "gaussian" else {}
            spec = {"stats": str(tmp / "stats.npz"), "group": "ot", "kind": kind, "n": n}
            res = run_worker(spec | {"options": o, "source": str(tmp / "src.npz")}, timeout=3600)
            runs.append({"n": n} | res)
        builds[f"ot/{kind}"] = runs
    result["builds"] = builds
    shutil.rmtree(tmp, ignore_errors=True)  # the saved statistics: ~0.8 GiB
    result["projection"] = project(result, opts)
    result["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    prev = json.loads(out.read_text()) if out.exists() else []
    prev = [r for r in prev if r.get("label") != a.label or not a.label]
    out.write_text(json.dumps([*prev, result], indent=1) + "\n")
    print(json.dumps(result["projection"], indent=1))


def project(result: dict, opts: dict) -> dict:
    """Each set at the recipe's size from the measured scaling (law stated per set)."""
    n_full, steps_full = int(opts["num_samples"]), int(opts["particle_steps"])
    nk_full = n_full // K
    prof = [r for r in result["particle_profile"] if r["gradient"] == "hand_written"]
    out = {}
    for name, runs in result["builds"].items():
        kind = name.split("/")[1]
        if name in ("maxent/box2", "maxent/box3"):
            order = 2 if kind == "box2" else 3
            p = [r for r in prof if r["order"] == order]
            # t_step(n_y) = a + b n_y + c n_y^2 through the profiled sizes (n^2 d term).
            deg = min(2, len(p) - 1)
            coef = np.polyfit([r["n_y"] for r in p], [r["seconds_per_step"] for r in p], deg)
            t_step = float(np.polyval(coef, nk_full))
            s0, s1 = runs[0]["steps"], runs[1]["steps"]
            per_step_all_classes = (runs[1]["seconds"] - runs[0]["seconds"]) / (s1 - s0)
            fixed = runs[0]["seconds"] - s0 * per_step_all_classes  # eighs, compiles, report
            big = [r for r in runs if r["steps"] == s1]
            fixed_a, fixed_b = _fit_line(
                [r["n"] for r in big], [r["seconds"] - s1 * per_step_all_classes for r in big]
            )
            sec = fixed_a + fixed_b * n_full + K * steps_full * t_step
            law = (
                "T = fixed(n) + K * steps * t_step(n/K): fixed(n) linear in n from the builds "
                "(per-class eigh for the start, K compiles, float64 moment report), "
                "t_step(n_y) a quadratic through the profiled n_y (measured per-step seconds "
                "of one class)"
            )
            out[name] = {
                "seconds": round(sec, 1),
                "t_step_at_n_y": round(t_step, 4),
                "n_y": nk_full,
                "fixed_seconds_at_n": round(fixed_a + fixed_b * n_full, 1),
                "fixed_seconds_small_build": round(fixed, 2),
                "law": law,
            }
        elif name == "ot/gaussian":
            (r0, r1) = runs[0], runs[1]
            per_pair = (r1["seconds"] - r0["seconds"]) / max(r1["pairs"] - r0["pairs"], 1)
            per_source = r0["seconds"] - r0["pairs"] * per_pair
            pairs, sources = K * (K - 1), K  # every (s, t) pair appears at n = 10^4
            out[name] = {
                "seconds": round(sources * per_source + pairs * per_pair, 1),
                "per_pair_seconds": round(per_pair, 2),
                "per_source_seconds": round(per_source, 2),
                "law": "T = sources * per_source + pairs * per_pair (two 1-source builds "
                "with different pair counts), 10 sources and 90 pairs at n = 10^4",
            }
        else:
            a_, b_ = _fit_line([r["n"] for r in runs], [r["seconds"] for r in runs])
            out[name] = {
                "seconds": round(a_ + b_ * n_full, 1),
                "law": f"T = {a_:.3g} + {b_:.3g} n (least squares over n = "
                f"{[r['n'] for r in runs]})",
            }
        key = "build_peak_rss_gib" if runs[0].get("build_peak_rss_gib") else "maxrss_gib"
        ma, mb = _fit_line([r["n"] for r in runs], [r[key] for r in runs])
        if name != "ot/gaussian":
            out[name]["peak_rss_gib"] = round(ma + mb * n_full, 2)
            out[name]["peak_rss_law"] = f"{key} linear in n through the builds"
        else:
            out[name]["peak_rss_gib"] = round(max(r[key] for r in runs), 2)
            out[name]["peak_rss_law"] = "per-pair working set does not grow with n (rows: O(n d))"
    out["total_seconds_per_job_without_shared_cache"] = round(
        sum(v["seconds"] for v in out.values() if isinstance(v, dict)), 1
    )
    return out


if __name__ == "__main__":
    main()
