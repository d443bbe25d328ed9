"""A run's figures, chosen by the types of its evaluator entries.

``plot_run`` always draws ``curves.png`` (training and every ``classification`` entry),
then, for each evaluator entry whose type has a figure function in ``FIGURES``, that
entry's figures. A figure function draws ONE entry::

    fn(records, key, out_dir, *, title, num_classes) -> list[Path]

from the metrics records of the run (``dsb.metrics.read_metrics``), reading the metrics
the trainer logged for the entry (named ``<key>/...``), writing into ``out_dir``.
``register_figure`` adds one for a new evaluator type.

Layering (no import cycle): ``dsb.figures`` (shared helpers) <- ``dsb.stats.plots``,
``dsb.lm.plots`` (per-evaluator figures) <- this module. Nothing here selects a matplotlib
backend: the figures are ``matplotlib.figure.Figure`` objects, saved to files.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from dsb.figures import setup_step_axis
from dsb.lm.plots import ngram_probe_figures
from dsb.metrics import read_metrics
from dsb.polyapprox.plots import poly_figures
from dsb.stats.plots import dsb_probe_figures

__all__ = [
    "FIGURES",
    "plot_curves",
    "plot_probe_figures",
    "plot_run",
    "register_figure",
    "run_evals",
]

RunFigures = Callable[..., list[Path]]

# Figure functions by evaluator type (the ``type`` of an ``evals`` entry).
FIGURES: dict[str, RunFigures] = {
    "dsb_probes": dsb_probe_figures,
    "ngram_probes": ngram_probe_figures,
    "poly_approx": poly_figures,
}

# Entries of this type are lines of curves.png, not figures of their own.
CURVES_TYPE = "classification"


def register_figure(type_name: str) -> Callable[[RunFigures], RunFigures]:
    """Decorator: ``fn`` draws the figures of every evaluator entry of type ``type_name``
    (signature in the module docstring)."""

    def deco(fn: RunFigures) -> RunFigures:
        if type_name in FIGURES or type_name == CURVES_TYPE:
            raise ValueError(f"a figure for evaluator type {type_name!r} is already registered")
        FIGURES[type_name] = fn
        return fn

    return deco


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
    from omegaconf import OmegaConf

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such file; pass evals={{key: type}} to say which evaluators ran"
        )
    evals = OmegaConf.to_container(OmegaConf.load(path)).get("evals") or {}
    out = {}
    for key, entry in evals.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            raise ValueError(f"{path}: evals.{key} must be a mapping with a 'type' string")
        out[key] = entry["type"]
    return out


def _num_classes(run_dir: Path) -> int:
    from omegaconf import OmegaConf

    from dsb.data.registry import get_dataset_spec

    return get_dataset_spec(OmegaConf.load(run_dir / "config.yaml").data.name).num_classes


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
        fn = FIGURES.get(type_name)
        if fn is None:
            continue
        alone = count[type_name] == 1
        paths += fn(
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


def plot_run(
    run_dir: str | Path,
    evals: Mapping[str, str] | None = None,
    num_classes: int | None = None,
) -> list[Path]:
    """All standard figures of a run directory, written to ``<run_dir>/figures/``.

    ``evals``: ``{key: evaluator type}`` of the run's evaluator entries (default: the
    ``evals`` of ``<run_dir>/config.yaml``). ``curves.png`` shows training and every
    ``classification`` entry; each entry whose type is in ``FIGURES`` adds its figures
    (``dsb_probes``: ``maxent_across_time.png``, ``ot_across_time.png``;
    ``ngram_probes``: ``ngram_probes.png``; ``poly_approx``: ``poly_across_time.png``,
    ``poly_eigenvectors.png``), in a subfolder named by the key when several
    entries share a type. ``num_classes`` (K) places the chance lines; default: the
    dataset's, from config.yaml. Returns the paths written (none without metrics).
    """
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        return []
    evals = _check_evals(run_evals(run_dir) if evals is None else evals)
    if num_classes is None and (run_dir / "config.yaml").is_file():
        num_classes = _num_classes(run_dir)
    out_dir = run_dir / "figures"
    classification = sorted(k for k, t in evals.items() if t == CURVES_TYPE)
    figures = [
        plot_curves(
            records,
            ["train", *classification],
            out_dir / "curves.png",
            num_classes,
            title=f"{run_dir.name}: training and evaluation",
        )
    ]
    return figures + _entry_figures(records, evals, out_dir, run_dir.name, num_classes)


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
    return _entry_figures(records, evals, out_dir, run_dir.name, num_classes)
