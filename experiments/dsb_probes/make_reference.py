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

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import plot_sweep

from dsb.aggregate import make_reference_main


def main(argv=None) -> None:
    make_reference_main(
        argv,
        experiment="sweep_dsb_probes_local",
        figure="dsb_probes",
        plot=plot_sweep.main,
        doc=__doc__,
    )


if __name__ == "__main__":
    main()
