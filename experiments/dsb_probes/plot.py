"""Redraw the DSB figures of one or more run directories.

    python experiments/dsb_probes/plot.py RUN_DIR [RUN_DIR ...] [--out DIR]

Writes ``maxent_across_time.png`` and ``ot_across_time.png`` (x = step on a log2 axis,
rows accuracy and loss, dashed chance lines at 1/K and ln K) for each run, into
``<run>/figures/`` or ``--out/<run name>/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dsb.plots import plot_probe_figures


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    for run in args.runs:
        paths = plot_probe_figures(run, out_dir=(args.out / run.name) if args.out else None)
        if not paths:
            raise SystemExit(f"{run}: no DSB probe metrics in metrics.jsonl")
        print(*paths, sep="\n")


if __name__ == "__main__":
    main()
