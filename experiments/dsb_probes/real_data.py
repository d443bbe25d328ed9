"""The DSB panels on a real dataset, in one command: sweep, table, figures and findings.

The shared body of ``experiments/dsb_mnist/make_reference.py`` and
``experiments/dsb_fashion_mnist/make_reference.py``: ``main(dataset, argv, doc)`` runs
``experiment=sweep_dsb_<dataset>_local`` (LeNet-5 and an MLP x seeds 0-2, 2^12 steps,
every max-ent and OT probe set) into ``runs/reference/dsb_<dataset>`` without the
``poly_approx`` evaluator (the DSB panels do not use it, and its quadratic form at d = 784
costs more than the rest of the run), writes ``table.parquet`` there, and draws
``maxent_across_time`` / ``ot_across_time`` (``plot_sweep.py``) and ``findings.{md,json}``
(the paper's claims, measured by ``findings.py``) into ``experiments/dsb_<dataset>/reference/``.
Extra arguments are Hydra overrides for every job; ``--reuse`` resumes or replots.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import findings
import plot_sweep

from dsb.aggregate import make_reference_main


def plot(argv: list[str]) -> None:
    plot_sweep.main(argv)
    findings.main(argv)


def main(dataset: str, argv: list[str] | None = None, doc: str | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    make_reference_main(
        [*argv, "~evals.poly"],
        experiment=f"sweep_dsb_{dataset}_local",
        figure=f"dsb_{dataset}",
        plot=plot,
        doc=doc or __doc__,
    )
