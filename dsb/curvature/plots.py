"""``sharpness_across_time.png``: the top Hessian eigenvalue of a ``sharpness`` entry against
its stability threshold, on the log2 step axis of dsb's other figures.

Converged eigenvalues are drawn as filled markers; a checkpoint whose eigenvalue did not
converge shows only its Ritz value, a lower bound, as a hollow marker labelled so, never as
a value. Adam runs get a second panel: the preconditioned sharpness and its threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from dsb.plot_helpers import save_figure, setup_step_axis

__all__ = ["sharpness_figures"]


def _series(records: Sequence[dict], name: str) -> list[tuple[int, float]]:
    out = []
    for r in records:
        v = r.get(name)  # metrics.jsonl writes non-finite values as "nan" / "inf"
        if v is not None and math.isfinite(float(v)):
            out.append((int(r["step"]), float(v)))
    return out


def _panel(ax, records, prefix: str, what: str, threshold_label: str) -> list[int]:
    eig = _series(records, f"{prefix}eig_1")
    ritz = dict(_series(records, f"{prefix}eig_1_ritz"))
    unconverged = [(s, v) for s, v in ritz.items() if s not in dict(eig)]
    thr = _series(records, f"{prefix}threshold")
    if eig:
        ax.plot(*zip(*eig), "-", marker="o", ms=4, color="C0", label=f"{what} (converged)")
    if unconverged:
        ax.plot(
            *zip(*sorted(unconverged)), "o", ms=6, mfc="none", color="C3",
            label=f"UNCONVERGED: Ritz lower bound ({len(unconverged)} checkpoints)",
        )  # fmt: skip
    if thr:
        ax.plot(*zip(*thr), "--", color="k", lw=1.2, label=threshold_label)
    ax.set_ylabel(what)
    ax.legend(fontsize=7)
    return [s for s, _ in eig] + [s for s, _ in unconverged] + [s for s, _ in thr]


def sharpness_figures(
    records: Sequence[dict],
    key: str,
    out_dir: str | Path,
    *,
    title: str = "",
    num_classes: int | None = None,
) -> list[Path]:
    """The figure of the ``sharpness`` entry ``key`` (``dsb.plots`` figure signature)."""
    p = f"{key}/"
    own = [r for r in records if any(k.startswith(p) for k in r)]
    if not own:
        return []
    precond = any(f"{p}precond_eig_1_ritz" in r for r in own)
    rows = 3 if precond else 2
    fig = Figure(figsize=(6.5, 2.6 * rows))
    axes = fig.subplots(rows, 1, sharex=True)
    steps = _panel(axes[0], own, p, "sharpness lambda_max(H)", "stability threshold")
    if precond:
        steps += _panel(
            axes[1], own, f"{p}precond_", "lambda_max(P^-1 H) (Adam)",
            "threshold (2 + 2 b1) / ((1 - b1) lr)",
        )  # fmt: skip
    loss = _series(records, "train/loss")
    ax = axes[-1]
    if loss:
        ax.plot(*zip(*loss), "-", color="C2", lw=1.0)
    ax.set_ylabel("training loss")
    setup_step_axis(ax, steps + [s for s, _ in loss])
    for a in axes:
        a.grid(alpha=0.3)
    what = "sharpness across time"
    axes[0].set_title(f"{title}\n{what}" if title else what, fontsize=10)
    fig.tight_layout()
    return [f for f in save_figure(fig, out_dir, "sharpness_across_time") if f.suffix == ".png"]
