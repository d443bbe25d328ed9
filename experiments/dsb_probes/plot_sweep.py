"""The DSB figures of a whole sweep: mean over seeds with a min-max band, per variant.

    python experiments/dsb_probes/plot_sweep.py multirun/sweep_dsb_probes/<date> --out DIR
    python experiments/dsb_probes/plot_sweep.py table.parquet --out DIR   # a saved table

Inputs are run directories, sweep directories or globs (collected with
``dsb.aggregate.collect``), or a table written by ``python -m dsb.aggregate``. Writes
``maxent_across_time.{png,pdf}`` and ``ot_across_time.{png,pdf}`` into ``--out``: one row
of panels per dataset (accuracy, then loss), one column per probe set, one line per
variant (the config values that differ between runs, seeds aside: model, size, ...), x =
step on a log2 axis, dashed chance lines at 1/K and ln K. OT panels draw the target-class
accuracy solid and the source-class accuracy dotted. A panel whose set missed a target it
states (``target_met = 0`` in any run) is titled ``[MISSED TARGET]`` in red.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from dsb.aggregate import load_table as aggregate_load_table
from dsb.aggregate import over_seeds, sweep_plot_args, variant_columns
from dsb.data.registry import get_dataset_spec
from dsb.plot_helpers import finish_sweep_figure, plot_seed_band, save_figure, setup_step_axis

MAXENT_ORDER = ["ics", "box1", "gaussian", "box2", "box3"]
OT_ORDER = ["cqn", "mean_shift", "gaussian"]
TITLES = {"maxent": "max-ent sets across time", "ot": "OT-edited sets across time"}


def load_table(
    inputs: list[str], finished_only: bool = False, all_steps: bool = False
) -> pd.DataFrame:
    """``dsb.aggregate.load_table``, refusing inputs without any configured run."""
    df = aggregate_load_table(inputs, finished_only, all_steps)
    if df.empty or "data.name" not in df:
        raise SystemExit(f"no runs with a config found in {inputs}")
    return df


def _sets(df: pd.DataFrame, kind: str, order: list[str]) -> list[str]:
    found = {c.split("/")[2] for c in df.columns if c.startswith(f"dsb/{kind}/")}
    return [s for s in order if s in found] + sorted(found - set(order))


def _short(col: str) -> str:
    """``model.kwargs.widths`` -> ``widths``; ``model.name`` -> ``model``."""
    parts = col.split(".")
    return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]


def _label(row: pd.Series, cols: list[str]) -> str:
    return ", ".join(f"{_short(c)}={row[c]}" for c in cols) or "all runs"


def missed_target(df: pd.DataFrame, kind: str, probe: str) -> bool:
    """Whether any run logged ``dsb/<kind>/<probe>/target_met = 0``: the set missed one of
    the targets its report states (``dsb_probes_moments.json`` says which)."""
    col = f"dsb/{kind}/{probe}/target_met"
    return col in df and bool((df[col].dropna() == 0).any())


def make_figure(df: pd.DataFrame, kind: str):
    """The ``kind`` ("maxent" or "ot") figure of every dataset in ``df`` (None: no such
    probes); rows alternate accuracy and loss per dataset (sorted by name)."""
    sets = _sets(df, kind, MAXENT_ORDER if kind == "maxent" else OT_ORDER)
    if not sets:
        return None
    variants = [c for c in variant_columns(df) if c != "data.name"]
    if kind == "maxent":
        acc = [("accuracy", "-", "")]
    else:
        acc = [("target_accuracy", "-", " (target)"), ("source_accuracy", ":", " (source)")]
    metrics = [f"dsb/{kind}/{s}/{m}" for s in sets for m in [a[0] for a in acc] + ["loss"]]
    metrics = [m for m in metrics if m in df]
    datasets = sorted(df["data.name"].dropna().unique())
    nrows, ncols = 2 * len(datasets), len(sets)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(max(3.2 * ncols, 6.4), 2.6 * nrows), sharex=True, squeeze=False
    )
    steps = df["step"].dropna().astype(int).tolist()
    for d, dataset in enumerate(datasets):
        sub = df[df["data.name"] == dataset]
        summary = over_seeds(sub, metrics, by=variants)
        k = get_dataset_spec(dataset).num_classes
        groups = [(None, summary)] if not variants else list(summary.groupby(variants, sort=True))
        for j, probe in enumerate(sets):
            ax_acc, ax_loss = axes[2 * d, j], axes[2 * d + 1, j]
            for i, (_, g) in enumerate(groups):
                label = _label(g.iloc[0], variants)
                for metric, ls, suffix in acc:
                    key = f"dsb/{kind}/{probe}/{metric}"
                    plot_seed_band(ax_acc, g, key, f"C{i}", ls, label + suffix)
                plot_seed_band(ax_loss, g, f"dsb/{kind}/{probe}/loss", f"C{i}", "-", label)
            ax_acc.axhline(1 / k, ls="--", color="gray", lw=1)
            ax_loss.axhline(math.log(k), ls="--", color="gray", lw=1)
            ax_acc.set_ylim(0, 1.02)
            missed = " [MISSED TARGET]" if missed_target(sub, kind, probe) else ""
            ax_acc.set_title(
                f"{dataset}: {probe}{missed}", fontsize=9, color="C3" if missed else "black"
            )
            for ax in (ax_acc, ax_loss):
                setup_step_axis(ax, steps)
                ax.set_xlabel("")
            if j == 0:
                ax_acc.set_ylabel("accuracy")
                ax_loss.set_ylabel("cross-entropy")
    for ax in axes[-1]:
        ax.set_xlabel("step")
    n_runs = df["run_dir"].nunique()
    title = f"{TITLES[kind]}: mean over seeds, min-max band ({n_runs} runs)"
    finish_sweep_figure(fig, axes[0, 0], title)
    return fig


def plot_kind(df: pd.DataFrame, kind: str, out_dir: Path) -> list[Path]:
    """``make_figure`` saved as ``<out_dir>/<kind>_across_time.{png,pdf}``."""
    fig = make_figure(df, kind)
    if fig is None:
        return []
    return save_figure(fig, out_dir, f"{kind}_across_time")


def main(argv=None) -> list[Path]:
    args = sweep_plot_args(argv, __doc__)
    df = load_table(args.inputs, args.finished_only, args.all_steps)
    paths = [p for kind in ("maxent", "ot") for p in plot_kind(df, kind, args.out)]
    if not paths:
        raise SystemExit("no DSB probe metrics (dsb/maxent/..., dsb/ot/...) in these runs")
    print(*paths, sep="\n")
    return paths


if __name__ == "__main__":
    main()
