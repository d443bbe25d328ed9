"""The MDL tables and figures: control / LEACE / QLEACE x architectures x 3 seeds.

    python experiments/mdl_erasure/make_reference.py [--grid digits|fashion_mnist] [--runs DIR]

``digits`` (default): ``python -m dsb.mdl -m experiment=mdl_erasure_local`` and
``..._lenet5`` into DIR (default multirun/mdl_erasure_local), then
``python -m dsb.mdl.aggregate DIR --out experiments/mdl_erasure`` (mdl_table.md/.csv,
mdl_summary.json, mdl.png). ``fashion_mnist``: ``experiment=mdl_erasure_fashion_mnist``,
``..._lenet5`` and ``..._resnet`` into multirun/mdl_erasure_fashion_mnist, aggregated
into experiments/mdl_erasure/fashion_mnist/ (the erased splits are cached, so each
erasure is fitted once for the whole grid). Finished prefixes are skipped and an
unfinished one resumes from its checkpoint, so a killed run resumes. Records the wall
and CPU time of each architecture's sweeps (and the total) in timing.json next to the
table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

# grid -> (sweeps: (experiment, extra overrides) in the order they run, default sweep
#          directory, output directory)
GRIDS = {
    "digits": (
        (("mdl_erasure_local", ()), ("mdl_erasure_local_lenet5", ())),
        ROOT / "multirun" / "mdl_erasure_local",
        HERE,
    ),
    # Every architecture gets all three methods at seed 0 before LeNet-5's other seeds,
    # so that a grid cut short still compares the methods on every architecture.
    "fashion_mnist": (
        (
            ("mdl_erasure_fashion_mnist", ()),
            ("mdl_erasure_fashion_mnist_lenet5", ("seed=0",)),
            ("mdl_erasure_fashion_mnist_resnet", ()),
            ("mdl_erasure_fashion_mnist_lenet5", ("seed=1,2",)),
        ),
        ROOT / "multirun" / "mdl_erasure_fashion_mnist",
        HERE / "fashion_mnist",
    ),
}


def _cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime, usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", choices=sorted(GRIDS), default="digits")
    ap.add_argument("--runs", default=None, help="sweep directory (default: the grid's)")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = ap.parse_args()
    sweeps, runs, out = GRIDS[args.grid]
    runs = Path(args.runs or runs)
    out.mkdir(parents=True, exist_ok=True)
    t0, per_experiment = time.time(), {}
    for exp, overrides in sweeps:
        t, (u, s) = time.time(), _cpu()
        cmd = [sys.executable, "-m", "dsb.mdl", "-m", f"experiment={exp}", *overrides]
        cmd += [f"hydra.sweep.dir={runs}", *args.overrides]
        subprocess.run(cmd, check=True, cwd=ROOT)
        u1, s1 = _cpu()
        rec = per_experiment.setdefault(exp, {"wall_s": 0.0, "cpu_user_s": 0.0, "cpu_sys_s": 0.0})
        rec["wall_s"] = round(rec["wall_s"] + time.time() - t, 1)
        rec["cpu_user_s"] = round(rec["cpu_user_s"] + u1 - u, 1)
        rec["cpu_sys_s"] = round(rec["cpu_sys_s"] + s1 - s, 1)
    wall = time.time() - t0
    user, sys_ = _cpu()
    subprocess.run(
        [sys.executable, "-m", "dsb.mdl.aggregate", str(runs), "--out", str(out)],
        check=True,
        cwd=ROOT,
    )
    timing = {
        "wall_s": round(wall, 1),
        "cpu_user_s": round(user, 1),
        "cpu_sys_s": round(sys_, 1),
        "runs": str(runs),
        "per_experiment": per_experiment,
    }
    (out / "timing.json").write_text(json.dumps(timing, indent=1) + "\n")
    print(timing)


if __name__ == "__main__":
    main()
