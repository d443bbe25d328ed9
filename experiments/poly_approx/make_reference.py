"""Regenerate the reference figures of this folder from the current code, in one command.

    python experiments/poly_approx/make_reference.py     # ~4 min on 2 CPU cores

Runs ``python -m dsb.main experiment=dsb_digits`` (the digits MLP [512, 512], seed 0) into
``runs/reference/poly_approx`` (deleted first), copies its ``poly_across_time.png`` and
``poly_eigenvectors.png`` into ``experiments/poly_approx/reference/`` with the per-checkpoint
numbers (``poly_numbers.json``), then runs ``adversarial_svd.py`` into this folder. Extra
arguments are Hydra overrides for the run (e.g. ``train.total_steps=256`` for a quick look;
do not commit that one).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def main(argv=None) -> None:
    overrides = list(sys.argv[1:] if argv is None else argv)
    run_dir = ROOT / "runs" / "reference" / "poly_approx"
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "dsb.main", "experiment=dsb_digits", f"hydra.run.dir={run_dir}"]
    subprocess.run(cmd + overrides, check=True, cwd=ROOT)
    ref = HERE / "reference"
    ref.mkdir(exist_ok=True)
    for name in ("poly_across_time.png", "poly_eigenvectors.png"):
        shutil.copy(run_dir / "figures" / name, ref / name)
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        poly = {k: v for k, v in rec.items() if k.startswith("poly/")}
        if poly:
            rows.append({"step": rec["step"], **poly})
    (ref / "poly_numbers.json").write_text(json.dumps(rows, indent=1))
    subprocess.run(
        [sys.executable, str(HERE / "adversarial_svd.py"), "--out", str(HERE)], check=True, cwd=ROOT
    )


if __name__ == "__main__":
    main()
