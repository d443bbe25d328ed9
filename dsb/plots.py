"""A run's figures, chosen by the types of its evaluator entries.

``figures_for`` turns metrics (``metrics.jsonl`` records, or a ``dsb.analysis.reevaluate``
DataFrame with ``step`` and ``<key>/<name>`` columns) into the figures of a set of
evaluator entries; ``plot_run`` calls it on a run directory (the trainer at the end of a
run, ``notebooks/checkpoint_analysis.ipynb`` on re-evaluated metrics). It always draws
``curves.png`` (training and every ``classification`` entry), then, for each evaluator
entry whose type has a figure function in ``FIGURES``, that entry's figures. A figure
function draws ONE entry::

    fn(records, key, out_dir, *, title, num_classes) -> list[Path]

from the metrics records of the run (``dsb.metrics.read_metrics``), reading the metrics
the trainer logged for the entry (named ``<key>/...``), writing into ``out_dir``.
``register_figure`` adds one for a new evaluator type.

Layering (no import cycle): ``dsb.plot_helpers`` (shared helpers) <- ``dsb.stats.plots``,
``dsb.lm.plots``, ``dsb.polyapprox.plots`` (per-evaluator figures) <- this module. Nothing
here selects a matplotlib backend: the figures are ``matplotlib.figure.Figure`` objects,
saved to files.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from dsb.curvature.plots import sharpness_figures
from dsb.lm.plots import ngram_probe_figures
from dsb.metrics import read_metrics
from dsb.plot_helpers import setup_step_axis
from dsb.polyapprox.plots import poly_figures
from dsb.registry import Registry
from dsb.stats.plots import dsb_probe_figures

__all__ = [
    "FIGURES",
    "figures_for",
    "plot_curves",
    "plot_probe_figures",
    "plot_run",
    "register_figure",
    "run_evals",
]

RunFigures = Callable[..., list[Path]]

# Figure functions by evaluator type (the ``type`` of an ``evals`` entry).
FIGURES: Registry[RunFigures] = Registry("figure for evaluator type")
FIGURES.register("dsb_probes", dsb_probe_figures)
FIGURES.register("ngram_probes", ngram_probe_figures)
FIGURES.register("poly_approx", poly_figures)
FIGURES.register("sharpness", sharpness_figures)

# Entries of this type are lines of curves.png, not figures of their own.
CURVES_TYPE = "classification"


def register_figure(type_name: str) -> Callable[[RunFigures], RunFigures]:
    """Decorator: ``fn`` draws the figures of every evaluator entry of type ``type_name``
    (signature in the module docstring)."""
    if type_name == CURVES_TYPE:
        raise ValueError(
            f"{FIGURES.kind} {type_name!r} is already registered: its entries are lines of "
            "curves.png"
        )
    return FIGURES.register(type_name)


def plot_curves(
    records: list[dict],
    groups: list[str],
    out_png: str | Path,
    num_classes: int | None = None,
    title: str = "",
) -> Path:
    """Rows accuracy and loss, one line per metric group (``<group>/accuracy`` and
    ``<group>/loss``), dashed chance lines at 1/K and ln K."""
    fig = Figure(figsize=(7, 6.5))
    axes = fig.subplots(2, 1, sharex=True)
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
    return out_png


def run_evals(run_dir: str | Path) -> dict[str, str]:
    """``{key: type}`` of the ``evals`` entries in ``<run_dir>/config.yaml``."""
    from dsb.config import read_run_config

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such file; pass evals={{key: type}} to say which evaluators ran"
        )
    evals = read_run_config(run_dir, raw=True).get("evals") or {}
    out = {}
    for key, entry in evals.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            raise ValueError(f"{path}: evals.{key} must be a mapping with a 'type' string")
        out[key] = entry["type"]
    return out


def _num_classes(run_dir: Path) -> int:
    from dsb.config import read_run_config
    from dsb.data.registry import get_dataset_spec

    return get_dataset_spec(read_run_config(run_dir, raw=True)["data"]["name"]).num_classes


def _entry_figures(
    records: Sequence[dict],
    evals: Mapping[str, str],
    out_dir: Path,
    run_name: str,
    num_classes: int | None,
) -> list[Path]:
    """The ``FIGURES`` of each entry of ``evals``: into ``out_dir`` when its type has one
    entry, else into ``out_dir/<key>`` (the file names are the type's)."""
    count = Counter(evals.values())
    paths = []
    for key, type_name in evals.items():
        if type_name not in FIGURES:
            continue
        alone = count[type_name] == 1
        paths += FIGURES.get(type_name)(
            records,
            key,
            out_dir if alone else out_dir / key,
            title=run_name if alone else f"{run_name} ({key})",
            num_classes=num_classes,
        )
    return paths


def _check_evals(evals: Mapping[str, str]) -> dict[str, str]:
    bad = {k: t for k, t in evals.items() if not (isinstance(k, str) and isinstance(t, str))}
    if bad:
        raise TypeError(f"evals must map entry keys to type names (strings), got {bad}")
    return dict(evals)


def _as_records(metrics: Any) -> list[dict]:
    """``metrics.jsonl`` records as they are; a DataFrame (``dsb.analysis.reevaluate``) as
    the same kind of records: one per row, without its missing (NaN) cells."""
    if not hasattr(metrics, "to_dict"):
        return list(metrics)
    if "step" not in metrics.columns:
        raise ValueError("metrics: a DataFrame needs a 'step' column")
    out = []
    for row in metrics.to_dict("records"):
        rec = {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
        out.append(rec | {"step": int(row["step"])})
    return out


def figures_for(
    metrics: Any,
    evals: Mapping[str, str],
    out_dir: str | Path,
    *,
    title: str = "",
    num_classes: int | None = None,
    curves: bool = True,
) -> list[Path]:
    """The figures of the evaluator entries ``evals`` (``{key: evaluator type}``) from
    ``metrics``, written to ``out_dir``; the one function behind ``plot_run``.

    ``metrics``: ``metrics.jsonl`` records (``dsb.metrics.read_metrics``), or a DataFrame
    with a ``step`` column and ``<key>/<name>`` columns (``dsb.analysis.reevaluate``).
    ``curves.png`` (unless ``curves`` is False) shows training and every
    ``classification`` entry; each entry whose type is in ``FIGURES`` adds its figures
    (``dsb_probes``: ``maxent_across_time.png``, ``ot_across_time.png``;
    ``ngram_probes``: ``ngram_probes.png``; ``poly_approx``: ``poly_across_time.png``,
    ``poly_eigenvectors.png``), in a subfolder named by the key when several
    entries share a type. ``title`` (e.g. the run's name) heads the figure titles;
    ``num_classes`` (K) places the chance lines. Returns the paths written (none
    without metrics).
    """
    records = _as_records(metrics)
    if not records:
        return []
    evals = _check_evals(evals)
    out_dir = Path(out_dir)
    figures = []
    if curves:
        classification = sorted(k for k, t in evals.items() if t == CURVES_TYPE)
        figures.append(
            plot_curves(
                records,
                ["train", *classification],
                out_dir / "curves.png",
                num_classes,
                title=f"{title}: training and evaluation" if title else "training and evaluation",
            )
        )
    return figures + _entry_figures(records, evals, out_dir, title, num_classes)


def plot_run(
    run_dir: str | Path,
    evals: Mapping[str, str] | None = None,
    num_classes: int | None = None,
    *,
    metrics: Any = None,
    out_dir: str | Path | None = None,
    title: str | None = None,
) -> list[Path]:
    """All standard figures of a run directory (``figures_for``), by default from its
    ``metrics.jsonl`` into ``<run_dir>/figures/``.

    ``evals``: ``{key: evaluator type}`` of the run's evaluator entries (default: the
    ``evals`` of ``<run_dir>/config.yaml``). ``num_classes`` (K) places the chance lines;
    default: the dataset's, from config.yaml. ``metrics``: records or a
    ``dsb.analysis.reevaluate`` DataFrame to draw instead of ``metrics.jsonl``;
    ``out_dir``: where instead of ``<run_dir>/figures``; ``title``: heads the figure
    titles (default: the run directory's name). Returns the paths written (none without
    metrics).
    """
    run_dir = Path(run_dir)
    records = _as_records(read_metrics(run_dir) if metrics is None else metrics)
    if not records:
        return []
    evals = _check_evals(run_evals(run_dir) if evals is None else evals)
    if num_classes is None and (run_dir / "config.yaml").is_file():
        num_classes = _num_classes(run_dir)
    return figures_for(
        records,
        evals,
        run_dir / "figures" if out_dir is None else out_dir,
        title=run_dir.name if title is None else title,
        num_classes=num_classes,
    )


def plot_probe_figures(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    num_classes: int | None = None,
    records: list[dict] | None = None,
) -> list[Path]:
    """ "max-ent sets across time" and "OT-edited sets across time" of each ``dsb_probes``
    entry in ``<run_dir>/config.yaml``, into ``out_dir`` (default ``<run_dir>/figures``),
    as ``plot_run`` draws them."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir) if records is None else records
    evals = {k: t for k, t in run_evals(run_dir).items() if t == "dsb_probes"}
    num_classes = num_classes or _num_classes(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "figures"
    return figures_for(
        records, evals, out_dir, title=run_dir.name, num_classes=num_classes, curves=False
    )
