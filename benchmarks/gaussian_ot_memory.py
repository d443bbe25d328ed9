"""Whole-process peak memory and time of the Gaussian (Bures) OT edit at CIFAR-10 size.

One process does what a run does at d = 3072, K = 10: stream synthetic labelled images
through ``fit_class_stats`` (float64 means and covariances, one pass; the K covariances
alone are 0.70 GiB) and then ``gaussian_ot_edit`` rows toward targets t != s. The
authors' reference code needed ~3.8 GB; all K^2 d x d float64 maps would be 7 GiB.
``gaussian_ot_edit`` keeps one float64-decomposed source (vectors stored in float32),
reads each target covariance from the statistics and never forms a d x d map; with
``--pair-driver ev`` (default) the per-pair eigh works in place, ``evr`` is faster but
holds one more d x d array. Recorded:

  process_maxrss          resource.getrusage(RUSAGE_SELF).ru_maxrss: the high-water
                          mark of the whole process (imports, data, fit and edit): the
                          larger of its values before the HWM reset and at the end
                          (clear_refs resets ru_maxrss too on current kernels)
  tracemalloc_peak        peak of Python/numpy allocations over the fit and the edit
  rss_after_fit           resident set once the statistics are fitted
  edit_peak_over_fit      VmHWM during the edit minus the resident set before it
                          (HWM reset through /proc/self/clear_refs)
  seconds (fit, edit), pairs, seconds_per_pair

The pixel data are a per-class mean plus a low-rank (``--rank``) Gaussian part plus
independent pixel noise, generated batch by batch so no data set is held. The Gaussian
OT edit needs means and covariances only, so the fit skips the marginal tables and the
projected third moments unless ``--full-stats`` (they add ~0.12 GiB at d = 3072).

Usage: python benchmarks/gaussian_ot_memory.py [--dim 3072] [--sources 0 1]
[--targets 2 3] [--label ...]. ``--sources``/``--targets`` restrict the edited rows to
some (s, t) pairs to fit a slow machine; the JSON records what was run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import tracemalloc
from pathlib import Path

import numpy as np
import procmem  # benchmarks/procmem.py (the script directory is on sys.path)

from dsb.stats.moments import fit_class_stats
from dsb.stats.ot import draw_targets, gaussian_ot_edit

GIB = 2.0**30


def batches(k, d, rank, per_class, batch, seed):
    """Labelled ``[b, d]`` float64 batches in [0, 1], classes interleaved."""
    means = np.random.default_rng(seed).uniform(0.3, 0.7, (k, d))
    rng = np.random.default_rng(seed + 1)
    for start in range(0, per_class, batch):
        nb = min(batch, per_class - start)
        for c in range(k):
            basis = np.random.default_rng([seed, c]).standard_normal((rank, d))
            basis *= 0.1 / np.sqrt(rank)
            x = means[c] + rng.standard_normal((nb, rank)) @ basis
            x += 0.01 * rng.standard_normal((nb, d))
            np.clip(x, 0.0, 1.0, out=x)
            yield x, np.full(nb, c, np.int32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=3072)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--rank", type=int, default=256)
    p.add_argument("--per-class", type=int, default=1000)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--sources", type=int, nargs="*", default=None)
    p.add_argument("--targets", type=int, nargs="*", default=None)
    p.add_argument("--full-stats", action="store_true")
    p.add_argument("--factor-dtype", default="float32")
    p.add_argument("--pair-driver", default="ev", choices=["ev", "evr", "evd"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/gaussian_ot_memory.json")
    p.add_argument("--label", default="")
    args = p.parse_args()
    k, d = args.classes, args.dim

    rss_start = procmem.status("VmRSS")
    tracemalloc.start()
    t0 = time.perf_counter()
    extra = {} if args.full_stats else {"num_bins": 0, "num_projections": 0}
    data = batches(k, d, args.rank, args.per_class, args.batch, args.seed)
    stats = fit_class_stats(data, k, **extra)
    fit_s = time.perf_counter() - t0
    _, tm_fit = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()

    # Rows to edit: fresh samples of the same classes, targets t != s from a fixed seed.
    per = -(-args.num_samples // k)
    src = np.repeat(np.arange(k), per)[: args.num_samples].astype(np.int32)
    tgt = draw_targets(src, k, args.seed)
    keep = np.ones(len(src), bool)
    if args.sources is not None:
        keep &= np.isin(src, args.sources)
    if args.targets is not None:
        keep &= np.isin(tgt, args.targets)
    src, tgt = src[keep], tgt[keep]
    x = np.empty((len(src), d))
    for c in np.unique(src):
        m = src == c
        gen = batches(k, d, args.rank, int(m.sum()), int(m.sum()), args.seed + 7)
        x[m] = next(xb for xb, yb in gen if yb[0] == c)

    rss_after_fit = procmem.status("VmRSS")
    maxrss_fit = procmem.maxrss()  # fit plus building the rows to edit
    reset = procmem.reset_hwm()
    t0 = time.perf_counter()
    edited = gaussian_ot_edit(
        stats, x, src, tgt, factor_dtype=np.dtype(args.factor_dtype), pair_driver=args.pair_driver
    )
    edit_s = time.perf_counter() - t0
    _, tm_edit = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    hwm_edit = procmem.status("VmHWM")
    maxrss = max(maxrss_fit, procmem.maxrss())
    pairs = int(edited.report.extra["pairs"])
    result = {
        "label": args.label,
        "dim": d,
        "classes": k,
        "rank": args.rank,
        "fit_rows": k * args.per_class,
        "fit_batch": args.batch,
        "full_stats": args.full_stats,
        "factor_dtype": args.factor_dtype,
        "pair_driver": args.pair_driver,
        "edited_rows": len(src),
        "pairs_run": [f"{a}->{b}" for a, b in sorted(set(zip(src.tolist(), tgt.tolist())))],
        "pairs": pairs,
        "all_pairs": k * (k - 1),
        "fit_seconds": round(fit_s, 2),
        "edit_seconds": round(edit_s, 2),
        "seconds_per_pair": round(edit_s / max(pairs, 1), 2),
        "covariances_gib": round(stats.cov_KxDxD.nbytes / GIB, 3),
        "rss_start_gib": round(rss_start / GIB, 3),
        "rss_after_fit_gib": round(rss_after_fit / GIB, 3),
        "process_maxrss_bytes": int(maxrss),
        "process_maxrss_gib": round(maxrss / GIB, 3),
        "process_maxrss_before_edit_gib": round(maxrss_fit / GIB, 3),
        "process_maxrss_end_gib": round(procmem.maxrss() / GIB, 3),
        "edit_hwm_gib": round(hwm_edit / GIB, 3) if reset else None,
        "edit_peak_over_fit_gib": round((hwm_edit - rss_after_fit) / GIB, 3) if reset else None,
        "tracemalloc_fit_peak_gib": round(tm_fit / GIB, 3),
        "tracemalloc_edit_peak_gib": round(tm_edit / GIB, 3),
        "under_1e9_bytes": maxrss < 1e9,
        "under_1_gib": maxrss < GIB,
        "one_d2_float64_gib": round(d**2 * 8 / GIB, 4),
        "all_k2_maps_gib_if_stored": round(k**2 * d**2 * 8 / GIB, 2),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
    }
    print(json.dumps(result, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(out.read_text()) if out.exists() else []
    runs = [r for r in runs if r.get("label") != args.label] + [result]
    out.write_text(json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    main()
