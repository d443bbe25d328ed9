"""The DSB panels on real fashion_mnist, in one command: sweep, table, figures and findings.

    python -m dsb.data.prepare fashion_mnist --from_idx ~/.cache/dsb-raw   # once (offline)
    python experiments/dsb_fashion_mnist/make_reference.py            # README.md: wall time
    python experiments/dsb_fashion_mnist/make_reference.py --reuse    # resume / replot

Runs ``experiment=sweep_dsb_fashion_mnist_local`` into
``runs/reference/dsb_fashion_mnist`` and writes ``experiments/dsb_fashion_mnist/reference/``
(``experiments/dsb_probes/real_data.py`` says what and how). Extra arguments are Hydra
overrides for every job.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "dsb_probes"))

import real_data

if __name__ == "__main__":
    real_data.main("fashion_mnist", doc=__doc__)
