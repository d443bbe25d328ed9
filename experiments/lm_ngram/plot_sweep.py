"""The language-model n-gram figure of a whole sweep: mean over seeds, bootstrap band.

    python experiments/lm_ngram/plot_sweep.py multirun/sweep_lm_ngram/<date> --out DIR
    python experiments/lm_ngram/plot_sweep.py table.parquet --out DIR   # a saved table

Inputs are run directories, sweep directories or globs (``dsb.aggregate.collect``) or one
table written by ``python -m dsb.aggregate``. Writes ``ngram_across_time.{png,pdf}``:
top row, the loss on unigram / bigram / trigram sequences (dashed: the set's entropy
floor) and on the validation text; below, KL(n-gram model || network) and, where
logged, JS(n-gram model, network) on the validation text. One line per variant (the
config values that differ between runs, seeds aside: depth, width, corpus, ...), x = step
on a log2 axis, all in nats. Bands: the
95% percentile bootstrap interval of the mean over seeds (runs resampled with replacement;
with 2-3 seeds it is close to the min-max range, so read it as a spread, not a CI).
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from dsb.aggregate import load_table, sweep_plot_args, variant_columns
from dsb.lm.ngram import bootstrap_ci
from dsb.plot_helpers import finish_sweep_figure, save_figure, setup_step_axis

ORDER = ["unigram", "bigram", "trigram"]


def _names(df: pd.DataFrame) -> list[str]:
    found = {m.group(1) for c in df.columns if (m := re.match(r"ngram/(\w+)/loss$", c))}
    found.discard("text")
    key = {n: i for i, n in enumerate(ORDER)}
    return sorted(found, key=lambda n: (key.get(n, len(ORDER)), n))


def seed_bootstrap(
    df: pd.DataFrame, metrics: list[str], by: list[str], num_resamples: int = 1000
) -> pd.DataFrame:
    """Per variant ``by`` and step: ``<metric>/{mean,lo,hi,n}`` over runs (seeds), ``lo`` /
    ``hi`` the 95% percentile bootstrap interval of the mean (``lo = hi = mean`` for one
    run)."""
    frame = df.dropna(subset=["step"]).assign(**{c: df[c].astype(str) for c in by})
    rows = []
    for key, g in frame.groupby([*by, "step"], sort=True):
        row = dict(zip([*by, "step"], key if isinstance(key, tuple) else (key,)))
        for m in metrics:
            v = g[m].dropna().to_numpy(float) if m in g else np.zeros(0)
            if not len(v):
                continue
            lo, hi = bootstrap_ci(v, num_resamples) if len(v) > 1 else (v[0], v[0])
            row.update({f"{m}/mean": v.mean(), f"{m}/lo": lo, f"{m}/hi": hi, f"{m}/n": len(v)})
        rows.append(row)
    return pd.DataFrame(rows)


def _seed_band(ax, summary: pd.DataFrame, metric: str, color, label: str) -> None:
    col = f"{metric}/mean"
    if col not in summary or summary[col].isna().all():
        return
    s = summary.dropna(subset=[col])
    x = s["step"].astype(float).clip(lower=0)
    ax.plot(x, s[col], "-", color=color, marker=".", ms=3, lw=1.2, label=label)
    if (s[f"{metric}/n"] > 1).any():
        ax.fill_between(x, s[f"{metric}/lo"], s[f"{metric}/hi"], color=color, alpha=0.2, lw=0)


def plot(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    names = _names(df)
    if not names:
        return []
    variants = variant_columns(df)
    loss_panels = [*names, "text"] if "ngram/text/loss" in df else names
    metrics = [f"ngram/{n}/loss" for n in loss_panels]
    metrics += [f"ngram/{n}/floor" for n in names if f"ngram/{n}/floor" in df]
    metrics += [f"ngram/kl/{n}" for n in names if f"ngram/kl/{n}" in df]
    metrics += [f"ngram/js/{n}" for n in names if f"ngram/js/{n}" in df]
    kinds = ["kl"] + (["js"] if any(f"ngram/js/{n}" in df for n in names) else [])
    summary = seed_bootstrap(df, metrics, variants)
    groups = [(None, summary)] if not variants else list(summary.groupby(variants, sort=True))
    ncols, nrows = len(loss_panels), 1 + len(kinds)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.2 * ncols, 2.8 * nrows), sharex=True, squeeze=False
    )
    steps = df["step"].dropna().astype(int).tolist()
    for i, (_, g) in enumerate(groups):
        label = ", ".join(f"{c.rsplit('.', 1)[-1]}={g.iloc[0][c]}" for c in variants) or "all"
        for j, name in enumerate(loss_panels):
            _seed_band(axes[0, j], g, f"ngram/{name}/loss", f"C{i}", label)
            floor = f"ngram/{name}/floor/mean"
            if floor in g and g[floor].notna().any():
                axes[0, j].axhline(g[floor].dropna().iloc[-1], color=f"C{i}", ls="--", lw=1)
            if name != "text":
                for row, kind in enumerate(kinds, start=1):
                    _seed_band(axes[row, j], g, f"ngram/{kind}/{name}", f"C{i}", label)
    for j, name in enumerate(loss_panels):
        axes[0, j].set_title(f"{name} sequences" if name != "text" else "validation text")
        for row, kind in enumerate(kinds, start=1):
            what = f"KL({name} || model)" if kind == "kl" else f"JS({name}, model)"
            axes[row, j].set_title(what if name != "text" else "")
        for ax in axes[:, j]:
            setup_step_axis(ax, steps)
            ax.set_xlabel("")
        axes[-1, j].set_xlabel("step")
        for row in range(1, nrows):
            if name == "text":
                axes[row, j].axis("off")
            elif axes[row, j].lines:
                axes[row, j].set_yscale("log")
    axes[0, 0].set_ylabel("cross-entropy (nats)")
    for row, kind in enumerate(kinds, start=1):
        axes[row, 0].set_ylabel(f"{kind.upper()} (nats)")
    title = (
        "n-gram probes across training: mean over seeds, 95% bootstrap band "
        f"({df['run_dir'].nunique()} runs; dashed: entropy floor)"
    )
    finish_sweep_figure(fig, axes[0, 0], title)
    return save_figure(fig, out_dir, "ngram_across_time")


def main(argv=None) -> list[Path]:
    args = sweep_plot_args(argv, __doc__)
    paths = plot(load_table(args.inputs, args.finished_only, args.all_steps), args.out)
    if not paths:
        raise SystemExit("no n-gram probe metrics (ngram/<set>/loss) in these runs")
    print(*paths, sep="\n")
    return paths


if __name__ == "__main__":
    main()
