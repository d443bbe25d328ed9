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

from dsb.plot_helpers import setup_step_axis

__all__ = [
    "ngram_probe_figures",
    "plot_kl_curves",
    "plot_ngram_losses",
    "plot_ngram_probes",
    "plot_position_losses",
]

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


def plot_kl_curves(
    records: Sequence[dict], *, prefix: str | None = None, ax=None, kind: str = "kl"
):
    """ "KL to n-gram models across training": KL(P_n || model) on validation text
    (``kind="js"``: the Jensen-Shannon divergence JS(P_n, model), bounded by log 2)."""
    import matplotlib.pyplot as plt

    kind_pattern = re.compile(rf"^(?P<prefix>.*?){kind}/(?P<name>unigram|bigram|trigram|\d+gram)$")
    prefix, names = _find(records, kind_pattern, prefix)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for i, name in enumerate(names):
        key = f"{prefix}{kind}/{name}"
        steps, div = _series(records, key)
        label = f"KL({name} || model)" if kind == "kl" else f"JS({name}, model)"
        ax.plot(steps, div, marker="o", ms=3, color=f"C{i}", label=label)
        _band(ax, records, key, steps, f"C{i}")
    _log_step_axis(ax, records)
    ax.set_yscale("log")
    what = "KL" if kind == "kl" else "JS divergence"
    ax.set_ylabel(f"{what} (nats)")
    ax.set_title(f"{what} to n-gram models across training")
    if kind == "js":
        ax.axhline(np.log(2), color="0.5", ls=":", lw=1, label="log 2 (maximum)")
    ax.legend(fontsize=7)
    return ax


def _has(records: Sequence[dict], prefix: str | None, kind: str) -> bool:
    pattern = re.compile(rf"^(?P<prefix>.*?){kind}/(?P<name>unigram|bigram|trigram|\d+gram)$")
    return bool(_find(records, pattern, prefix)[1])


def plot_ngram_probes(
    records: Sequence[dict],
    path: str | Path | None = None,
    *,
    prefix: str | None = None,
    title: str = "",
) -> Figure:
    """Loss, KL and (if logged) JS panels side by side, under ``title`` if given; saved to
    ``path`` if given. Bands: bootstrap CIs over sequences (``*_lo``, ``*_hi``). Returns
    the figure (a ``matplotlib.figure.Figure``, not registered with pyplot)."""
    with_js = _has(records, prefix, "js")
    fig = Figure(figsize=(18 if with_js else 12, 4.2))
    axes = fig.subplots(1, 3 if with_js else 2)
    plot_ngram_losses(records, ax=axes[0], prefix=prefix)
    plot_kl_curves(records, ax=axes[1], prefix=prefix)
    if with_js:
        plot_kl_curves(records, ax=axes[2], prefix=prefix, kind="js")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


_POS = re.compile(
    r"^(?P<prefix>.*?)(?P<name>unigram|bigram|trigram|\d+gram|text)/loss_t(?P<p>\d+)$"
)


def plot_position_losses(
    records: Sequence[dict], path: str | Path | None = None, *, prefix: str | None = None
) -> Figure | None:
    """Per-position loss: one panel per n-gram set (and the validation text), x = position
    ``p`` in the window (the prediction of token ``p + 1``, log2 axis), one line per
    checkpoint coloured by step (light: early, dark: late), dashed: the set's entropy floor.
    Uses the ``{name}/loss_t{p}`` summary positions. ``None`` if none were logged."""
    from matplotlib import colormaps

    found: dict[str, dict[str, set[int]]] = {}
    for r in records:
        for k in r:
            m = _POS.match(k)
            if m and (prefix is None or m["prefix"] == prefix):
                found.setdefault(m["prefix"], {}).setdefault(m["name"], set()).add(int(m["p"]))
    if not found:
        return None
    if len(found) > 1:
        raise ValueError(f"several n-gram probe prefixes {sorted(found)}; pass prefix=")
    prefix, by_name = next(iter(found.items()))
    names = sorted((n for n in by_name if n != "text"), key=_sort_key)
    names += ["text"] if "text" in by_name else []
    steps = sorted(
        {r["step"] for r in records if "step" in r and f"{prefix}{names[0]}/loss_t0" in r}
    )
    cmap = colormaps["viridis"]
    fig = Figure(figsize=(3.6 * len(names), 3.4))
    axes = np.atleast_1d(fig.subplots(1, len(names), sharey=True))
    for ax, name in zip(axes, names):
        pos = sorted(by_name[name])
        for i, step in enumerate(steps):
            r = next(r for r in records if r.get("step") == step and f"{prefix}{name}/loss_t0" in r)
            ys = [r.get(f"{prefix}{name}/loss_t{p}", np.nan) for p in pos]
            color = cmap(0.9 * (1 - i / max(len(steps) - 1, 1)))
            label = f"step {step}" if i in (0, len(steps) - 1) or len(steps) <= 6 else None
            ax.plot(pos, ys, marker="o", ms=2.5, lw=1, color=color, label=label)
        floor = _last(records, f"{prefix}{name}/floor")
        if floor is not None:
            ax.axhline(floor, color="k", ls="--", lw=1, label="entropy floor")
        ax.set_xscale("symlog", base=2, linthresh=1, linscale=0.5)
        ax.set_xlim(left=0, right=max(pos) * 1.1)
        ax.set_xlabel("position p (predicting token p + 1)")
        ax.set_title(f"{name} sequences" if name != "text" else "validation text")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cross-entropy (nats)")
    axes[0].legend(fontsize=7)
    fig.suptitle("Loss per position across training", fontsize=10)
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
    """The figures of the ``ngram_probes`` evaluator entry ``key`` (metrics
    ``<key>/bigram/loss``, ``<key>/kl/bigram``, ...): ``<out_dir>/ngram_probes.png`` (loss,
    KL, JS against step) and ``<out_dir>/ngram_positions.png`` (loss per position), if
    anything was logged for it. ``title`` and ``num_classes`` are not used (each panel has
    its own title; no chance lines). Returns the paths written."""
    del title, num_classes
    prefix = f"{key}/"
    if not any(k.startswith(prefix) for r in records for k in r):
        return []
    path = Path(out_dir) / "ngram_probes.png"
    plot_ngram_probes(records, path, prefix=prefix)
    paths = [path]
    pos_path = Path(out_dir) / "ngram_positions.png"
    if plot_position_losses(records, pos_path, prefix=prefix) is not None:
        paths.append(pos_path)
    return paths
