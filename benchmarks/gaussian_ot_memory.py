"""Peak memory and time of the Gaussian (Bures) OT edit at CIFAR-10 size (d = 3072, K = 10).

The reference built all K^2 d x d maps at once (~60 GB at 64x64x3). ``gaussian_ot_edit``
keeps one source eigendecomposition and one map alive at a time. This script builds
synthetic class statistics (K float64 covariances, low rank plus a ridge, like image
covariances), edits ``--num-samples`` rows with per-sample targets t != s and records:

  stats_bytes             the K covariances the edit reads (input, not working memory)
  edit_tracemalloc_peak   peak of numpy allocations during the edit (exact for arrays)
  rss_before / rss_peak   process resident set before the edit and its high-water mark
                          during it (Linux, peak reset through /proc/self/clear_refs)
  seconds, pairs, seconds_per_pair

Usage: python benchmarks/gaussian_ot_memory.py [--dim 3072] [--sources 0 1] [--out ...]
``--sources`` restricts the edited rows to some source classes (all their targets are
still mapped) to fit a slow machine; the JSON records what was run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
import tracemalloc
from pathlib import Path

import numpy as np

from dsb.stats.moments import ClassStats
from dsb.stats.ot import draw_targets, gaussian_ot_edit


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def synthetic_stats(k: int, d: int, rank: int, seed: int) -> ClassStats:
    rng = np.random.default_rng(seed)
    cov = np.empty((k, d, d))
    for c in range(k):
        b = rng.standard_normal((d, rank)) * (0.1 / np.sqrt(rank))
        np.matmul(b, b.T, out=cov[c])
        cov[c].flat[:: d + 1] += 1e-4
    means = rng.uniform(0.3, 0.7, (k, d))
    return ClassStats(np.full(k, 5000), np.full(k, 1.0 / k), means, cov)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=3072)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--rank", type=int, default=512)
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--sources", type=int, nargs="*", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/gaussian_ot_memory.json")
    p.add_argument("--label", default="")
    args = p.parse_args()

    t0 = time.perf_counter()
    stats = synthetic_stats(args.classes, args.dim, args.rank, args.seed)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(args.seed + 1)
    src = np.repeat(np.arange(args.classes), -(-args.num_samples // args.classes))
    src = src[: args.num_samples].astype(np.int32)
    tgt = draw_targets(src, args.classes, args.seed)
    keep = np.ones(len(src), bool) if args.sources is None else np.isin(src, args.sources)
    src, tgt = src[keep], tgt[keep]
    x = rng.uniform(0, 1, (len(src), args.dim))

    rss_before = _rss_bytes()
    reset = _reset_hwm()
    tracemalloc.start()
    t0 = time.perf_counter()
    edited = gaussian_ot_edit(stats, x, src, tgt, clip=False)
    seconds = time.perf_counter() - t0
    _, tm_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_peak = _hwm_bytes()
    pairs = int(edited.report.extra["pairs"])
    gib = 2.0**30
    result = {
        "label": args.label,
        "dim": args.dim,
        "classes": args.classes,
        "rank": args.rank,
        "edited_rows": len(src),
        "source_classes": sorted(set(src.tolist())),
        "pairs": pairs,
        "all_pairs": args.classes * (args.classes - 1),
        "seconds": round(seconds, 2),
        "seconds_per_pair": round(seconds / max(pairs, 1), 2),
        "stats_build_seconds": round(build_s, 2),
        "stats_bytes": int(stats.cov_KxDxD.nbytes + stats.mean_KxD.nbytes),
        "edit_tracemalloc_peak_bytes": int(tm_peak),
        "edit_tracemalloc_peak_gib": round(tm_peak / gib, 3),
        "rss_before_bytes": int(rss_before),
        "rss_peak_bytes": int(rss_peak),
        "rss_peak_gib": round(rss_peak / gib, 3),
        "rss_peak_minus_before_gib": round((rss_peak - rss_before) / gib, 3),
        "rss_peak_is_edit_only": reset,
        "one_map_gib": round(args.dim**2 * 8 / gib, 4),
        "all_k2_maps_gib_if_stored": round(args.classes**2 * args.dim**2 * 8 / gib, 2),
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
