"""Figures of the n-gram probes across training, from metrics.jsonl-like records.

Records are dicts such as ``{"step": 16, "ngram/bigram/loss": 3.1, ...}`` (the names the
``ngram_probes`` evaluator yields, behind any prefix: the prefix is detected). x = step on
a log2 axis (``symlog``, so step 0 is shown), shaded bands = bootstrap CIs where logged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["load_metrics", "plot_kl_curves", "plot_ngram_losses", "plot_ngram_probes"]

_ORDER = {"unigram": 1, "bigram": 2, "trigram": 3}
_LOSS = re.compile(r"^(?P<prefix>.*?)(?P<name>unigram|bigram|trigram|\d+gram)/loss$")


def load_metrics(path: str | Path) -> list[dict]:
    """Read a metrics.jsonl file (one JSON object per line)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _sort_key(name: str) -> int:
    return _ORDER.get(name, int(name.removesuffix("gram")) if name[0].isdigit() else 99)


def _find(records: Sequence[dict], pattern: re.Pattern) -> tuple[str, list[str]]:
    prefixes, names = set(), set()
    for r in records:
        for k in r:
            m = pattern.match(k)
            if m:
                prefixes.add(m["prefix"])
                names.add(m["name"])
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
    from dsb.plots import setup_step_axis

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

    found, names = _find(records, _LOSS)
    prefix = found if prefix is None else prefix
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
    found, names = _find(records, kl_pattern)
    prefix = found if prefix is None else prefix
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


def plot_ngram_probes(records: Sequence[dict], path: str | Path | None = None, **kw):
    """Both panels side by side; saved to ``path`` if given. Returns the figure."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    plot_ngram_losses(records, ax=a, **kw)
    plot_kl_curves(records, ax=b, **kw)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
