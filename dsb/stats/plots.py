"""Plots of DSB probe metrics over training (x = step on a log2 axis)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

__all__ = ["collect_probe_curves", "plot_probe_curves"]

_PATTERNS = {
    "maxent": re.compile(r"(?:^|/)maxent/([^/]+)/(accuracy|loss)$"),
    "ot": re.compile(r"(?:^|/)ot/([^/]+)/(target_accuracy|source_accuracy|loss|source_loss)$"),
}


def collect_probe_curves(
    metrics_records: Sequence[dict], kind: str
) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """``{(set, metric): [(step, value), ...]}`` sorted by step, from metrics.jsonl rows."""
    pat = _PATTERNS[kind]
    curves: dict[tuple[str, str], dict[int, float]] = {}
    for rec in metrics_records:
        if "step" not in rec:
            continue
        for key, val in rec.items():
            m = pat.search(key)
            if m is None or val is None:
                continue
            curves.setdefault((m.group(1), m.group(2)), {})[int(rec["step"])] = float(val)
    return {k: sorted(v.items()) for k, v in curves.items()}


def plot_probe_curves(
    metrics_records: Sequence[dict],
    out_png: str | Path,
    kind: str = "maxent",
    num_classes: int = 10,
    title: str | None = None,
):
    """Two rows (accuracy, loss), one line per set, dashed chance lines at 1/K and ln K.

    OT sets: target accuracy solid, source accuracy dotted in the same colour. The step
    axis is ``dsb.plots.setup_step_axis`` (log2, step 0 shown). Returns the figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dsb.plots import setup_step_axis

    if kind not in _PATTERNS:
        raise ValueError(f"kind must be 'maxent' or 'ot', got {kind!r}")
    curves = collect_probe_curves(metrics_records, kind)
    sets = sorted({s for s, _ in curves})
    fig, (ax_acc, ax_loss) = plt.subplots(2, 1, figsize=(6.5, 6.5), sharex=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    all_steps = {st for pts in curves.values() for st, _ in pts}

    for i, name in enumerate(sets):
        c = colours[i % len(colours)]
        if kind == "maxent":
            acc_lines = [("accuracy", "-", name)]
        else:
            acc_lines = [
                ("target_accuracy", "-", f"{name} (target)"),
                ("source_accuracy", ":", f"{name} (source)"),
            ]
        for metric, ls, label in acc_lines:
            pts = curves.get((name, metric))
            if pts:
                ax_acc.plot(*zip(*pts), ls, color=c, marker=".", label=label)
        pts = curves.get((name, "loss"))
        if pts:
            ax_loss.plot(*zip(*pts), "-", color=c, marker=".", label=name)
    ax_acc.axhline(1.0 / num_classes, ls="--", color="gray", lw=1, label="chance")
    ax_loss.axhline(math.log(num_classes), ls="--", color="gray", lw=1, label="ln K")
    ax_acc.set_ylabel("accuracy")
    ax_loss.set_ylabel("cross-entropy")
    setup_step_axis(ax_loss, all_steps)
    ax_acc.legend(fontsize=7, ncol=2)
    ax_acc.set_title(title or f"DSB probes: {kind}")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return fig
