"""The Gaussian OT probe set on real MNIST / Fashion-MNIST (d = 784), with and without
class-covariance shrinkage: does a ridge remove the out-of-box artefact?

One command (the raw IDX files in ``~/.cache/dsb-raw``, see README "Data")::

    python benchmarks/gaussian_ot_shrinkage.py [--datasets mnist fashion_mnist] [--b none 0.01]

writes ``benchmarks/results/gaussian_ot_shrinkage.json``. For each dataset: the class
statistics of the train split (float64, as the ``dsb_probes`` evaluator fits them), then
the ``gaussian`` OT set of the evaluator's default size (2000 seeded test images, targets
``draw_targets(seed=0)``) built from those statistics with shrinkage ``(1, b)``
(Sigma_hat = S + b (tr S / d) I, ``ClassStats.with_shrinkage``) for each ``b``. Recorded per
``b``: the range of the edited pixel values and the fraction outside [0, 1] and outside
[-0.5, 1.5]; the map's own checks (against the shrunk statistics it was built from); and
the empirical moment errors of the edited rows against the REAL (unshrunk) class
statistics, next to the same errors of as many real test images of each target class
(the sampling floor at this size: a perfect edit cannot read lower).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "gaussian_ot_shrinkage.json"
NUM_SAMPLES, SEED = 2000, 0


def _flat(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float64) / 255.0


def run(dataset: str, bs: list[float | None]) -> dict:
    from dsb.data.idx import read_idx_split
    from dsb.stats.moments import fit_class_stats
    from dsb.stats.ot import draw_targets, gaussian_ot_edit
    from dsb.stats.report import moment_report

    root = Path(os.environ.get("DSB_RAW", Path.home() / ".cache" / "dsb-raw")) / dataset
    x, y = read_idx_split(root, "train")
    xt, yt = read_idx_split(root, "test")
    x, xt, y, yt = _flat(x), _flat(xt), y.astype(np.int64), yt.astype(np.int64)
    t0 = time.perf_counter()
    stats = fit_class_stats([(x, y)], 10)
    out = {"fit_s": time.perf_counter() - t0, "d": stats.dim, "num_samples": NUM_SAMPLES}
    pick = np.sort(np.random.default_rng(SEED).permutation(len(yt))[:NUM_SAMPLES])
    src, tgt = yt[pick], draw_targets(yt[pick], 10, SEED)
    # The floor: for each edited row, a real test image of its target class (as many per
    # class as the edit has), against the same statistics.
    rng = np.random.default_rng(SEED + 1)
    real_rows = np.concatenate(
        [rng.choice(np.flatnonzero(yt == t), np.sum(tgt == t), replace=False) for t in range(10)]
    )
    real = moment_report(xt[real_rows], yt[real_rows], stats)
    out["real_test_images"] = {
        "mean_rel_err": real.mean_rel_err,
        "cov_rel_err": real.cov_rel_err,
        "coskew_rel_err": real.coskew_rel_err,
    }
    out["by_b"] = {}
    for b in bs:
        st = stats if b is None else stats.with_shrinkage((1.0, b))
        t0 = time.perf_counter()
        es = gaussian_ot_edit(st, xt[pick], src, tgt)
        seconds = time.perf_counter() - t0
        e = es.x_NxD.astype(np.float64)
        vs_real = moment_report(e, tgt, stats)
        out["by_b"][str(b)] = {
            "build_s": seconds,
            "min": float(e.min()),
            "max": float(e.max()),
            "abs_q999": float(np.quantile(np.abs(e), 0.999)),
            "frac_outside_box": float(np.mean((e < 0) | (e > 1))),
            "frac_outside_-0.5_1.5": float(np.mean((e < -0.5) | (e > 1.5))),
            "source_ranks": sorted({p["rank_s"] for p in es.report.extra["pair_info"]}),
            "map_checks": es.report.checks,
            "vs_real_stats": {
                "mean_rel_err": vs_real.mean_rel_err,
                "cov_rel_err": vs_real.cov_rel_err,
                "coskew_rel_err": vs_real.coskew_rel_err,
            },
        }
        print(dataset, b, json.dumps(out["by_b"][str(b)], default=float), flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["mnist", "fashion_mnist"])
    ap.add_argument("--b", nargs="+", default=["none", "0.001", "0.01"])
    args = ap.parse_args(argv)
    bs = [None if v == "none" else float(v) for v in args.b]
    load0 = os.getloadavg()
    res = {d: run(d, bs) for d in args.datasets}
    res["machine"] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "loadavg_before": load0,
        "loadavg_after": os.getloadavg(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=1, default=float) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
