"""Plots of DSB probe metrics over training (x = step on a log2 axis).

``dsb_probe_figures`` draws the run figures of one ``dsb_probes`` evaluator entry (what
``dsb.plots.plot_run`` calls for that type); ``plot_probe_curves`` draws one of them from
any metrics records.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from dsb.plot_helpers import setup_step_axis

__all__ = ["collect_probe_curves", "dsb_probe_figures", "plot_probe_curves"]

# The figures of a dsb_probes entry: file stem and title, per kind of probe.
PROBE_FIGURES = {
    "maxent": ("maxent_across_time", "max-ent sets across time"),
    "ot": ("ot_across_time", "OT-edited sets across time"),
}

_PATTERNS = {
    "maxent": re.compile(r"(?:^|/)maxent/([^/]+)/(accuracy|loss|target_met)$"),
    "ot": re.compile(
        r"(?:^|/)ot/([^/]+)/(target_accuracy|source_accuracy|loss|source_loss|target_met)$"
    ),
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
    num_classes: int | None = 10,
    title: str | None = None,
) -> Figure:
    """Two rows (accuracy, loss), one line per set, dashed chance lines at 1/K and ln K
    (none if ``num_classes`` is None), saved to ``out_png``.

    OT sets: target accuracy solid, source accuracy dotted in the same colour. The step
    axis is ``dsb.plot_helpers.setup_step_axis`` (log2, step 0 shown). Returns the figure (a
    ``matplotlib.figure.Figure``, not registered with pyplot: no backend is involved).
    """
    import matplotlib

    if kind not in _PATTERNS:
        raise ValueError(f"kind must be 'maxent' or 'ot', got {kind!r}")
    curves = collect_probe_curves(metrics_records, kind)
    sets = sorted({s for s, _ in curves})
    fig = Figure(figsize=(6.5, 6.5))
    ax_acc, ax_loss = fig.subplots(2, 1, sharex=True)
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    all_steps = {st for pts in curves.values() for st, _ in pts}

    for i, name in enumerate(sets):
        c = colours[i % len(colours)]
        met = curves.get((name, "target_met"))
        flag = " [MISSED TARGET]" if met and met[-1][1] < 1 else ""
        if kind == "maxent":
            acc_lines = [("accuracy", "-", name + flag)]
        else:
            acc_lines = [
                ("target_accuracy", "-", f"{name} (target){flag}"),
                ("source_accuracy", ":", f"{name} (source)"),
            ]
        for metric, ls, label in acc_lines:
            pts = curves.get((name, metric))
            if pts:
                ax_acc.plot(*zip(*pts), ls, color=c, marker=".", label=label)
        pts = curves.get((name, "loss"))
        if pts:
            ax_loss.plot(*zip(*pts), "-", color=c, marker=".", label=name)
    if num_classes:
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
    return fig


def dsb_probe_figures(
    records: Sequence[dict],
    key: str,
    out_dir: str | Path,
    *,
    title: str = "",
    num_classes: int | None = None,
) -> list[Path]:
    """The figures of the ``dsb_probes`` evaluator entry ``key`` (metrics ``<key>/maxent/...``
    and ``<key>/ot/...``): ``<out_dir>/maxent_across_time.png`` and
    ``<out_dir>/ot_across_time.png``, each only if that kind of probe was logged. ``title``
    (e.g. the run name) prefixes the figure titles. Returns the paths written."""
    prefix = f"{key}/"
    own = [
        {"step": r["step"], **{k[len(prefix) :]: v for k, v in r.items() if k.startswith(prefix)}}
        for r in records
        if "step" in r
    ]
    out = []
    for kind, (stem, what) in PROBE_FIGURES.items():
        if collect_probe_curves(own, kind):
            path = Path(out_dir) / f"{stem}.png"
            plot_probe_curves(
                own, path, kind=kind, num_classes=num_classes,
                title=f"{title}: {what}" if title else what,
            )  # fmt: skip
            out.append(path)
    return out
