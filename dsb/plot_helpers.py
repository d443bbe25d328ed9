"""Shared pieces of dsb's figures: the step axis, seed bands, sweep layout, saving.

The base of the plotting modules: it imports nothing from dsb. Above it,
``dsb.stats.plots`` (DSB probe figures) and ``dsb.lm.plots`` (n-gram probe figures), and
on top ``dsb.plots`` (a run's figures, chosen by evaluator type). No module here selects
a matplotlib backend: figures that are only saved are built with
``matplotlib.figure.Figure`` and need none.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

__all__ = [
    "close_figure",
    "finish_sweep_figure",
    "plot_seed_band",
    "save_figure",
    "setup_step_axis",
]


def setup_step_axis(ax, steps) -> None:
    """x = step on a log2 scale; step 0 (the initialisation) sits at the linear part."""
    ax.set_xscale("symlog", base=2, linthresh=1, linscale=0.5)
    ax.set_xlim(left=0, right=max(max(steps, default=1), 1) * 1.1)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3, which="major")


def plot_seed_band(ax, summary, metric: str, color, ls: str, label: str) -> None:
    """One ``dsb.aggregate.over_seeds`` series: the mean of ``metric`` over steps, with a
    min-max band where more than one seed contributed. Nothing if it was never logged."""
    col = f"{metric}/mean"
    if col not in summary or summary[col].isna().all():
        return
    s = summary.dropna(subset=[col])
    x = s["step"].astype(float).clip(lower=0)
    ax.plot(x, s[col], ls, color=color, marker=".", ms=3, lw=1.2, label=label)
    if (s[f"{metric}/n"] > 1).any():
        ax.fill_between(x, s[f"{metric}/min"], s[f"{metric}/max"], color=color, alpha=0.2, lw=0)


def finish_sweep_figure(fig, legend_ax, title: str) -> None:
    """Shared legend (from ``legend_ax``) under the panels, ``title`` above, tight layout."""
    handles, labels = legend_ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.04 + 0.02 * math.ceil(len(labels) / 4), 1, 0.97))


def close_figure(fig) -> None:
    """Release ``fig`` if pyplot manages it (a ``plt.subplots`` figure); a plain
    ``Figure`` needs nothing. pyplot is not imported for this."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.close(fig)


def save_figure(fig, out_dir: str | Path, stem: str) -> list[Path]:
    """``fig`` as ``<out_dir>/<stem>.png`` and ``.pdf``; the figure is closed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.{ext}" for ext in ("png", "pdf")]
    for p in paths:
        fig.savefig(p, dpi=110)
    close_figure(fig)
    return paths
