"""Figures of a run's metrics across checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from dsb.metrics import read_metrics

__all__ = [
    "finish_sweep_figure",
    "plot_curves",
    "plot_probe_figures",
    "plot_run",
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


def save_figure(fig, out_dir: str | Path, stem: str) -> list[Path]:
    """``fig`` as ``<out_dir>/<stem>.png`` and ``.pdf``; the figure is closed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.{ext}" for ext in ("png", "pdf")]
    for p in paths:
        fig.savefig(p, dpi=110)
    plt.close(fig)
    return paths


def plot_curves(
    records: list[dict],
    groups: list[str],
    out_png: str | Path,
    num_classes: int | None = None,
    title: str = "",
) -> Path:
    """Rows accuracy and loss, one line per metric group (``<group>/accuracy`` and
    ``<group>/loss``), dashed chance lines at 1/K and ln K."""
    fig, axes = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True)
    all_steps = [r["step"] for r in records]
    for row, (ax, metric) in enumerate(zip(axes, ("accuracy", "loss"))):
        for group in groups:
            pts = [
                (r["step"], r[f"{group}/{metric}"])
                for r in records
                if isinstance(r.get(f"{group}/{metric}"), float)
            ]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", ms=3, label=group)
        if num_classes:
            chance = 1 / num_classes if metric == "accuracy" else math.log(num_classes)
            ax.axhline(
                chance,
                ls="--",
                color="gray",
                lw=1,
                label=f"chance ({chance:.3g})" if row == 0 else None,
            )
        ax.set_ylabel(metric)
        setup_step_axis(ax, all_steps)
        if row == 0:
            ax.set_ylim(0, 1.02)
    axes[0].legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=130)
    plt.close(fig)
    return out_png


def plot_run(run_dir: str | Path, num_classes: int | None = None) -> list[Path]:
    """All standard figures of a run directory, written to ``<run_dir>/figures/``."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        return []
    keys = {k for r in records for k in r}
    eval_groups = sorted(
        {
            k.rsplit("/", 1)[0]
            for k in keys
            if k.endswith("/accuracy") and not k.startswith("train/")
        }
    )
    top_level = [g for g in eval_groups if "/" not in g]
    figures = [
        plot_curves(
            records,
            ["train", *top_level],
            run_dir / "figures" / "curves.png",
            num_classes,
            title=f"{run_dir.name}: training and evaluation",
        )
    ]
    if any(k.startswith("ngram/") for k in keys):
        from dsb.lm.plots import plot_ngram_probes

        path = run_dir / "figures" / "ngram_probes.png"
        plt.close(plot_ngram_probes(records, path))
        figures.append(path)
    else:
        figures += plot_probe_figures(run_dir, num_classes=num_classes, records=records)
    return figures


def _num_classes(run_dir: Path) -> int:
    from omegaconf import OmegaConf

    from dsb.data.registry import get_dataset_spec

    return get_dataset_spec(OmegaConf.load(run_dir / "config.yaml").data.name).num_classes


def plot_probe_figures(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    num_classes: int | None = None,
    records: list[dict] | None = None,
) -> list[Path]:
    """ "max-ent sets across time" and "OT-edited sets across time", for each kind of DSB
    probe the run logged, into ``out_dir`` (default ``<run_dir>/figures``)."""
    from dsb.stats.plots import plot_probe_curves

    run_dir = Path(run_dir)
    records = read_metrics(run_dir) if records is None else records
    keys = {k for r in records for k in r}
    num_classes = num_classes or _num_classes(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "figures"
    out = []
    titles = {"maxent": "max-ent sets across time", "ot": "OT-edited sets across time"}
    for kind, title in titles.items():
        if any(f"{kind}/" in k for k in keys):
            path = out_dir / f"{kind}_across_time.png"
            fig = plot_probe_curves(
                records, path, kind=kind, num_classes=num_classes, title=f"{run_dir.name}: {title}"
            )
            plt.close(fig)
            out.append(path)
    return out
