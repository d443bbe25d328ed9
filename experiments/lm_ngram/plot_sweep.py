"""The language-model n-gram figure of a whole sweep: mean over seeds, min-max band.

    python experiments/lm_ngram/plot_sweep.py multirun/sweep_lm_ngram/<date> --out DIR
    python experiments/lm_ngram/plot_sweep.py table.parquet --out DIR   # a saved table

Inputs are run directories, sweep directories or globs (``dsb.aggregate.collect``) or one
table written by ``python -m dsb.aggregate``. Writes ``ngram_across_time.{png,pdf}``:
top row, the loss on unigram / bigram / trigram sequences (dashed: the set's entropy
floor) and on the validation text; bottom row, KL(n-gram model || network) on the
validation text. One line per variant (the config values that differ between runs, seeds
aside: depth, width, corpus, ...), x = step on a log2 axis, all in nats.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from dsb.aggregate import load_table, over_seeds, variant_columns
from dsb.plots import setup_step_axis

ORDER = ["unigram", "bigram", "trigram"]


def _names(df: pd.DataFrame) -> list[str]:
    found = {m.group(1) for c in df.columns if (m := re.match(r"ngram/(\w+)/loss$", c))}
    found.discard("text")
    key = {n: i for i, n in enumerate(ORDER)}
    return sorted(found, key=lambda n: (key.get(n, len(ORDER)), n))


def _line(ax, g, metric, color, ls, label):
    col = f"{metric}/mean"
    if col not in g or g[col].isna().all():
        return
    s = g.dropna(subset=[col])
    x = s["step"].astype(float)
    ax.plot(x, s[col], ls, color=color, marker=".", ms=3, lw=1.2, label=label)
    if (s[f"{metric}/n"] > 1).any():
        ax.fill_between(x, s[f"{metric}/min"], s[f"{metric}/max"], color=color, alpha=0.2, lw=0)


def plot(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    names = _names(df)
    if not names:
        return []
    variants = variant_columns(df)
    loss_panels = [*names, "text"] if "ngram/text/loss" in df else names
    metrics = [f"ngram/{n}/loss" for n in loss_panels]
    metrics += [f"ngram/{n}/floor" for n in names if f"ngram/{n}/floor" in df]
    metrics += [f"ngram/kl/{n}" for n in names if f"ngram/kl/{n}" in df]
    summary = over_seeds(df, metrics, by=variants)
    groups = [(None, summary)] if not variants else list(summary.groupby(variants, sort=True))
    ncols = len(loss_panels)
    fig, axes = plt.subplots(2, ncols, figsize=(3.2 * ncols, 5.6), sharex=True, squeeze=False)
    steps = df["step"].dropna().astype(int).tolist()
    for i, (_, g) in enumerate(groups):
        label = ", ".join(f"{c.rsplit('.', 1)[-1]}={g.iloc[0][c]}" for c in variants) or "all"
        for j, name in enumerate(loss_panels):
            _line(axes[0, j], g, f"ngram/{name}/loss", f"C{i}", "-", label)
            floor = f"ngram/{name}/floor/mean"
            if floor in g and g[floor].notna().any():
                axes[0, j].axhline(g[floor].dropna().iloc[-1], color=f"C{i}", ls="--", lw=1)
            if name != "text":
                _line(axes[1, j], g, f"ngram/kl/{name}", f"C{i}", "-", label)
    for j, name in enumerate(loss_panels):
        axes[0, j].set_title(f"{name} sequences" if name != "text" else "validation text")
        axes[1, j].set_title(f"KL({name} || model)" if name != "text" else "")
        for ax in axes[:, j]:
            setup_step_axis(ax, steps)
            ax.set_xlabel("")
        axes[1, j].set_xlabel("step")
        if name == "text":
            axes[1, j].axis("off")
        elif axes[1, j].lines:
            axes[1, j].set_yscale("log")
    axes[0, 0].set_ylabel("cross-entropy (nats)")
    axes[1, 0].set_ylabel("KL (nats)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8)
    fig.suptitle(
        "n-gram probes across training: mean over seeds, min-max band "
        f"({df['run_dir'].nunique()} runs; dashed: entropy floor)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.04 + 0.02 * math.ceil(len(labels) / 4), 1, 0.97))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"ngram_across_time.{ext}" for ext in ("png", "pdf")]
    for p in paths:
        fig.savefig(p, dpi=110)
    plt.close(fig)
    return paths


def main(argv=None) -> list[Path]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("inputs", nargs="+", help="run/sweep dirs, globs, or one .parquet/.csv")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--finished-only", action="store_true", help="skip unfinished runs")
    ap.add_argument("--all-steps", action="store_true", help="also interval checkpoints")
    args = ap.parse_args(argv)
    paths = plot(load_table(args.inputs, args.finished_only, args.all_steps), args.out)
    if not paths:
        raise SystemExit("no n-gram probe metrics (ngram/<set>/loss) in these runs")
    print(*paths, sep="\n")
    return paths


if __name__ == "__main__":
    main()
