"""The DSB panels on real mnist, in one command: sweep, table, figures and findings.

    python -m dsb.data.prepare mnist --from_idx ~/.cache/dsb-raw   # once (offline)
    python experiments/dsb_mnist/make_reference.py            # README.md: wall time
    python experiments/dsb_mnist/make_reference.py --reuse    # resume / replot

Runs ``experiment=sweep_dsb_mnist_local`` (LeNet-5 and an MLP x seeds 0-2, 2^12 steps,
every max-ent and OT probe set) into ``runs/reference/dsb_mnist`` without the
``poly_approx`` evaluator (the DSB panels do not use it, and its quadratic form at d = 784
costs more than the rest of the run), writes ``table.parquet`` there, and draws
``maxent_across_time`` / ``ot_across_time`` and ``findings.{md,json}`` (the paper's claims,
measured by ``experiments/dsb_probes/findings.py``) into
``experiments/dsb_mnist/reference/``. Extra arguments are Hydra overrides for every job.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "dsb_probes"))

import findings
import plot_sweep

from dsb.aggregate import make_reference_main


def plot(argv: list[str]) -> None:
    plot_sweep.main(argv)
    findings.main(argv)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    make_reference_main(
        [*argv, "~evals.poly"],
        experiment="sweep_dsb_mnist_local",
        figure="dsb_mnist",
        plot=plot,
        doc=__doc__,
    )


if __name__ == "__main__":
    main()
