"""The reference MDL table and figure on digits: control / LEACE / QLEACE x MLP /
LeNet-5 x 3 seeds.

    python experiments/mdl_erasure/make_reference.py [--runs DIR]

Runs ``python -m dsb.mdl -m experiment=mdl_erasure_local`` and ``..._lenet5`` into DIR
(default multirun/mdl_erasure_local; finished prefixes are skipped, so a killed run
resumes), then
``python -m dsb.mdl.aggregate DIR --out experiments/mdl_erasure`` (mdl_table.md/.csv,
mdl_summary.json, mdl.png), and records the wall and CPU time in timing.json.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default=str(ROOT / "multirun" / "mdl_erasure_local"))
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = ap.parse_args()
    t0 = time.time()
    for exp in ("mdl_erasure_local", "mdl_erasure_local_lenet5"):
        cmd = [sys.executable, "-m", "dsb.mdl", "-m", f"experiment={exp}"]
        cmd += [f"hydra.sweep.dir={args.runs}", *args.overrides]
        subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.time() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        [sys.executable, "-m", "dsb.mdl.aggregate", args.runs, "--out", str(HERE)],
        check=True,
        cwd=ROOT,
    )
    timing = {
        "wall_s": round(wall, 1),
        "cpu_user_s": round(usage.ru_utime, 1),
        "cpu_sys_s": round(usage.ru_stime, 1),
        "runs": args.runs,
    }
    (HERE / "timing.json").write_text(json.dumps(timing, indent=1) + "\n")
    print(timing)


if __name__ == "__main__":
    main()
