"""Figures of the n-gram probes across training, from metrics.jsonl-like records.

Records are dicts such as ``{"step": 16, "ngram/bigram/loss": 3.1, ...}`` (the names the
``ngram_probes`` evaluator yields, behind any prefix: the prefix is detected unless
``prefix=`` is given). x = step on a log2 axis (``symlog``, so step 0 is shown), shaded
bands = bootstrap CIs where logged. ``ngram_probe_figures`` draws the run figure of one
``ngram_probes`` evaluator entry (what ``dsb.plots.plot_run`` calls for that type).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from dsb.figures import setup_step_axis

__all__ = ["ngram_probe_figures", "plot_kl_curves", "plot_ngram_losses", "plot_ngram_probes"]

_ORDER = {"unigram": 1, "bigram": 2, "trigram": 3}
_LOSS = re.compile(r"^(?P<prefix>.*?)(?P<name>unigram|bigram|trigram|\d+gram)/loss$")


def _sort_key(name: str) -> int:
    return _ORDER.get(name, int(name.removesuffix("gram")) if name[0].isdigit() else 99)


def _find(
    records: Sequence[dict], pattern: re.Pattern, prefix: str | None
) -> tuple[str, list[str]]:
    """The prefix (``prefix`` if given, else the only one found) and the n-gram names
    logged behind it."""
    prefixes, names = set(), set()
    for r in records:
        for k in r:
            m = pattern.match(k)
            if m and (prefix is None or m["prefix"] == prefix):
                prefixes.add(m["prefix"])
                names.add(m["name"])
    if prefix is not None:
        return prefix, sorted(names, key=_sort_key)
    if len(prefixes) > 1:
        raise ValueError(f"several n-gram probe prefixes {sorted(prefixes)}; pass prefix=")
    return (prefixes.pop() if prefixes else ""), sorted(names, key=_sort_key)


def _series(records: Iterable[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = sorted((r["step"], r[key]) for r in records if key in r and "step" in r)
    if not pts:
        return np.zeros(0), np.zeros(0)
    steps, vals = zip(*pts)
    return np.asarray(steps, float), np.asarray(vals, float)


def _last(records: Sequence[dict], key: str) -> float | None:
    vals = [r[key] for r in records if key in r]
    return float(vals[-1]) if vals else None


def _log_step_axis(ax, records: Iterable[dict]) -> None:
    setup_step_axis(ax, [r["step"] for r in records if "step" in r])


def _band(ax, records, key, steps, color):
    _, lo = _series(records, f"{key}_lo")
    _, hi = _series(records, f"{key}_hi")
    if len(lo) == len(steps) and len(hi) == len(steps) and len(steps):
        ax.fill_between(steps, lo, hi, color=color, alpha=0.2, linewidth=0)


def plot_ngram_losses(records: Sequence[dict], *, prefix: str | None = None, ax=None):
    """ "Loss on n-gram sequences across training": one line per n-gram set, its entropy
    floor dashed in the same colour, the real validation text in black if logged."""
    import matplotlib.pyplot as plt

    prefix, names = _find(records, _LOSS, prefix)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for i, name in enumerate(names):
        color = f"C{i}"
        steps, loss = _series(records, f"{prefix}{name}/loss")
        ax.plot(steps, loss, marker="o", ms=3, color=color, label=f"{name} sequences")
        _band(ax, records, f"{prefix}{name}/loss", steps, color)
        floor = _last(records, f"{prefix}{name}/floor")
        floor = _last(records, f"{prefix}entropy/{name}") if floor is None else floor
        if floor is not None:
            ax.axhline(floor, color=color, ls="--", lw=1, label=f"{name} entropy floor")
    steps, loss = _series(records, f"{prefix}text/loss")
    if len(steps):
        ax.plot(steps, loss, color="k", marker="o", ms=3, label="validation text")
    _log_step_axis(ax, records)
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title("Loss on n-gram sequences across training")
    ax.legend(fontsize=7)
    return ax


def plot_kl_curves(records: Sequence[dict], *, prefix: str | None = None, ax=None):
    """ "KL to n-gram models across training": KL(P_n || model) on validation text."""
    import matplotlib.pyplot as plt

    kl_pattern = re.compile(r"^(?P<prefix>.*?)kl/(?P<name>unigram|bigram|trigram|\d+gram)$")
    prefix, names = _find(records, kl_pattern, prefix)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for i, name in enumerate(names):
        key = f"{prefix}kl/{name}"
        steps, kl = _series(records, key)
        ax.plot(steps, kl, marker="o", ms=3, color=f"C{i}", label=f"KL({name} || model)")
        _band(ax, records, key, steps, f"C{i}")
    _log_step_axis(ax, records)
    ax.set_yscale("log")
    ax.set_ylabel("KL (nats)")
    ax.set_title("KL to n-gram models across training")
    ax.legend(fontsize=7)
    return ax


def plot_ngram_probes(
    records: Sequence[dict],
    path: str | Path | None = None,
    *,
    prefix: str | None = None,
    title: str = "",
) -> Figure:
    """Both panels side by side, under ``title`` if given; saved to ``path`` if given.
    Returns the figure (a ``matplotlib.figure.Figure``, not registered with pyplot)."""
    fig = Figure(figsize=(12, 4.2))
    a, b = fig.subplots(1, 2)
    plot_ngram_losses(records, ax=a, prefix=prefix)
    plot_kl_curves(records, ax=b, prefix=prefix)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def ngram_probe_figures(
    records: Sequence[dict],
    key: str,
    out_dir: str | Path,
    *,
    title: str = "",
    num_classes: int | None = None,
) -> list[Path]:
    """The figure of the ``ngram_probes`` evaluator entry ``key`` (metrics
    ``<key>/bigram/loss``, ``<key>/kl/bigram``, ...): ``<out_dir>/ngram_probes.png``, if
    anything was logged for it. ``title`` and ``num_classes`` are not used (each panel has
    its own title; no chance lines). Returns the paths written."""
    del title, num_classes
    prefix = f"{key}/"
    if not any(k.startswith(prefix) for r in records for k in r):
        return []
    path = Path(out_dir) / "ngram_probes.png"
    plot_ngram_probes(records, path, prefix=prefix)
    return [path]
