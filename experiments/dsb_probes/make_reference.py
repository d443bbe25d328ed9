"""Regenerate the reference figures of this folder from the current code, in one command.

    python experiments/dsb_probes/make_reference.py             # ~2 min on 2 CPU cores
    python experiments/dsb_probes/make_reference.py --reuse     # replot existing runs

Runs the local sweep ``experiment=sweep_dsb_probes_local`` (digits, MLP at two sizes, two
seeds) into ``runs/reference/dsb_probes`` (deleted first unless ``--reuse``; a killed
regeneration resumes with ``--reuse``), writes the aggregated table there, and draws the
figures into ``experiments/dsb_probes/reference/``. Extra arguments are Hydra overrides
for every job (e.g. ``train.total_steps=256`` for a quick look).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import plot_sweep  # noqa: E402

from dsb.aggregate import make_reference  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sweep-dir", type=Path, default=ROOT / "runs/reference/dsb_probes")
    ap.add_argument("--out", type=Path, default=HERE / "reference")
    ap.add_argument("--reuse", action="store_true", help="keep (resume) existing runs")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job")
    args = ap.parse_args(argv)
    make_reference(
        "sweep_dsb_probes_local",
        args.sweep_dir,
        plot_sweep.main,
        args.out,
        args.overrides,
        args.reuse,
    )


if __name__ == "__main__":
    main()
