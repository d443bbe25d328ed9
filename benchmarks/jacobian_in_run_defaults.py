"""The matrix-free bulk counts with the evaluator's defaults, inside a dsb training run.

    python benchmarks/jacobian_in_run_defaults.py

Runs (a subprocess, so what is measured is exactly what a user runs)

    python -m dsb.main experiment=jacobian_digits 'evals.jac.when=[625]' \
        '+evals.jacmf={type: training_jacobian, when: [625], max_dense_params: 0}'

i.e. the reference setup through the dsb trainer (digits MLP 64-GELU-10, P = 4810, 625
steps) with two Jacobian evaluators at the last step: ``jac`` (dense J, whose exact
``count_D_below_<t>`` is the truth) and ``jacmf`` (matrix-free, every count setting at
its default). Writes ``benchmarks/results/jacobian_in_run_defaults.json``: per threshold
the truth, the matrix-free count (``null`` unless resolved), its bracket, the relative
error, the predicted products to resolve it when unresolved; the deflation depth,
products, degree, probes, seconds and the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "jacobian_in_run_defaults.json"
OVERRIDES = [
    "experiment=jacobian_digits",
    "evals.jac.when=[625]",
    "+evals.jacmf={type: training_jacobian, when: [625], max_dense_params: 0}",
]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default=None, help="default: a fresh temporary directory")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument(
        "--skip-run", action="store_true", help="only read an existing --run-dir's metrics"
    )
    ap.add_argument(
        "--dense-from",
        default=None,
        help="take the dense truth from this earlier run directory of the same command "
        "(the replay is deterministic) and skip the dense evaluator in this one",
    )
    args = ap.parse_args(argv)

    from dsb.metrics import read_metrics

    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="dsb_jac_in_run_"))
    overrides = list(OVERRIDES)
    if args.dense_from:
        overrides[1] = "evals.jac.when=[]"
    cmd = [sys.executable, "-m", "dsb.main", *overrides, f"hydra.run.dir={run_dir}"]
    print(" ".join(cmd), flush=True)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    if not args.skip_run:
        subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()

    rec = next(r for r in read_metrics(run_dir) if "jacmf/sigma_1" in r)
    if args.dense_from:
        dense = next(r for r in read_metrics(args.dense_from) if "jac/sigma_1" in r)
        rec.update({k: v for k, v in dense.items() if k.startswith("jac/")})

    def get(name):
        v = rec.get(name)  # metrics.jsonl writes non-finite values as strings ("nan")
        v = None if v is None else float(v)
        return None if v is None or v != v else v  # NaN -> null

    thresholds = sorted(
        {
            k.split("count_D_below_")[1].split("_")[0]
            for k in rec
            if k.startswith("jacmf/count_D_below_")
        },
        key=float,
        reverse=True,
    )
    counts = {}
    for t in thresholds:
        mf = f"jacmf/count_D_below_{t}"
        true = get(f"jac/count_D_below_{t}")
        est = get(mf)
        low, high = get(f"{mf}_bracket_low"), get(f"{mf}_bracket_high")
        counts[t] = {
            "true": true,
            "true_abs_s_minus_1": get(f"jac/count_abs_s_minus_1_below_{t}"),
            "estimate": est,
            "resolved": bool(get(f"{mf}_resolved")),
            "low": low,
            "high": high,
            "contains_truth": bool(low <= true <= high) if true is not None else None,
            "rel_error": abs(est - true) / true if est is not None and true else None,
            "rel_width": (high - low) / true if true else None,
            "products_needed": get(f"{mf}_products_needed"),
        }
        print(f"t = {t}: {counts[t]}", flush=True)
    keys = [
        "num_params",
        "replay_rel_error",
        "sigma_1",
        "top_products",
        "count_resolution",
        "count_degree",
        "count_probes",
        "count_products",
        "count_deflated",
        "count_deflation_products",
        "count_seconds",
        "count_all_resolved",
    ]
    record = {
        "command": "python -m dsb.main " + " ".join(f"'{o}'" for o in overrides),
        "dense_truth_from": args.dense_from or "this run",
        "counts": counts,
        **{k: get(f"jacmf/{k}") for k in keys},
        "dense_sigma_1": get("jac/sigma_1"),
        "wall_seconds_whole_run": wall,
        "load_average_1_5_15_before": load_before,
        "load_average_1_5_15_after": load_after,
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs; shared)",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "run_dir": str(run_dir),
    }
    print(json.dumps({k: v for k, v in record.items() if k != "counts"}, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
