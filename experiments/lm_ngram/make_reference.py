"""Regenerate the reference figures of this folder from the current code, in one command.

    python experiments/lm_ngram/make_reference.py              # ~3 min on 2 CPU cores
    python experiments/lm_ngram/make_reference.py --reuse     # replot existing runs

Runs the local sweep ``experiment=sweep_lm_ngram_local`` (the embedded corpus, a 1-layer
byte-level transformer at two widths, two seeds) into ``runs/reference/lm_ngram``
(deleted first unless ``--reuse``; a killed regeneration resumes with ``--reuse``),
writes the aggregated table there, and draws the figure into
``experiments/lm_ngram/reference/``. Extra arguments are Hydra overrides for every job
(e.g. ``train.total_steps=128`` for a quick look).
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
        experiment="sweep_lm_ngram_local",
        figure="lm_ngram",
        plot=plot_sweep.main,
        doc=__doc__,
    )


if __name__ == "__main__":
    main()
