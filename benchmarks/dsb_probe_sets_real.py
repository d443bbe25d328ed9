"""Build time and quality of every DSB probe-set kind on real MNIST / Fashion-MNIST (d = 784).

One command (the datasets prepared offline first, see README "Data")::

    python benchmarks/dsb_probe_sets_real.py [--datasets mnist fashion_mnist] [--num-samples 2000]

writes ``benchmarks/results/dsb_probe_sets_real.json``. For each dataset it runs the real
job, ``python -m dsb.main experiment=dsb_<dataset>`` for one training step, with every
registered max-ent and OT kind in ``evals.dsb`` and an EMPTY probe-set cache (a temporary
``$DSB_PROBE_CACHE``), so every set is built once, in the evaluator, exactly as a sweep's
first job builds it. Recorded per set, from the run's own files: the build seconds
(``summary.json`` -> ``timings.phases["probe_set/<kind>-<set>/built"]``), the achieved moment
errors and every stated target with its tolerance (``dsb_probes_moments.json``); per
dataset, the statistics' fit (``stats``) and data-loading seconds, the machine and its
load average before and after (the numbers are wall times on a shared machine: compare
rows of one file, not across files).

``benchmarks/dsb_probe_sets.py`` is the synthetic CIFAR-shaped (d = 3072) counterpart
with scaling fits; this one answers "what does the first job of the MNIST sweep pay".
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

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "dsb_probe_sets_real.json"


def kinds() -> tuple[list[str], list[str]]:
    from dsb.stats.probesets import MAXENT_SETS, OT_SETS

    return sorted(MAXENT_SETS.names()), sorted(OT_SETS.names())


def run_one(dataset: str, num_samples: int, workdir: Path) -> dict:
    maxent, ot = kinds()
    run_dir = workdir / f"run_{dataset}"
    cache = workdir / f"cache_{dataset}"
    cmd = [
        sys.executable, "-m", "dsb.main", f"experiment=dsb_{dataset}", "~evals.poly",
        "train.total_steps=1", "optim.schedule=constant", "optim.warmup_steps=0",
        "figures=false", "logging.tensorboard=false",
        "train.progress_bar=false", f"evals.dsb.num_samples={num_samples}",
        f"evals.dsb.maxent_sets=[{','.join(maxent)}]", f"evals.dsb.ot_sets=[{','.join(ot)}]",
        f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    env = dict(os.environ, DSB_PROBE_CACHE=str(cache))
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    wall = time.perf_counter() - t0
    summary = json.loads((run_dir / "summary.json").read_text())
    phases = summary["timings"]["phases"]
    moments = json.loads((run_dir / "dsb_probes_moments.json").read_text())
    sets = {}
    for kind, names in (("maxent", maxent), ("ot", ot)):
        for name in names:
            rep = moments[kind][name]
            built = phases.get(f"probe_set/{kind}-{name}/built")
            sets[f"{kind}/{name}"] = {
                "build_s": None if built is None else built["s"],
                "cached": rep.get("cached"),
                "mean_rel_err": rep.get("mean_rel_err"),
                "cov_rel_err": rep.get("cov_rel_err"),
                "coskew_rel_err": rep.get("coskew_rel_err"),
                "noise_floor": rep.get("noise_floor"),
                "checks": rep.get("checks"),
                "target_met": all(c.get("met", True) for c in rep.get("checks", {}).values()),
            }
    return {
        "dataset": dataset,
        "d": 784,
        "num_samples": num_samples,
        "wall_s": wall,
        "loadavg_before": load0,
        "loadavg_after": os.getloadavg(),
        "phases": {k: v for k, v in phases.items() if not k.startswith("probe_set/")},
        "probe_set_phases": {k: v for k, v in phases.items() if k.startswith("probe_set/")},
        "sets": sets,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--datasets", nargs="+", default=["mnist", "fashion_mnist"])
    ap.add_argument("--num-samples", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dsb_probe_real_") as tmp:
        rows = [run_one(ds, args.num_samples, Path(tmp)) for ds in args.datasets]
    import jax

    result = {
        "command": "python benchmarks/dsb_probe_sets_real.py " + " ".join(argv or sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "jax": jax.__version__,
            "devices": [str(d) for d in jax.devices()],
        },
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    for r in rows:
        print(f"{r['dataset']}: wall {r['wall_s']:.0f} s (load {r['loadavg_before'][0]:.1f})")
        for name, s in r["sets"].items():
            b = "-" if s["build_s"] is None else f"{s['build_s']:.1f} s"
            print(f"  {name:22s} build {b:>9s}  target_met={s['target_met']}")
    print(args.out)
    return result


if __name__ == "__main__":
    main()
