"""Aggregate prequential MDL runs (``mdl.json`` files) over seeds: a table and a figure.

``python -m dsb.mdl.aggregate ROOT [--out DIR]`` finds every ``ROOT/**/mdl.json`` and
groups them by (dataset, model, erasure, shrinkage, ``mdl.validation``; a strict run's
method name ends in ``_strict``). The interval is a two-sided 95%
Student-t interval over seeds, mean +- t_{0.975, s-1} sd / sqrt(s) (s seeds; none for
one seed): with 3-5 seeds a bootstrap interval is too narrow to trust, the t-interval
states its normality assumption. Writes ``mdl_table.csv``, ``mdl_table.md`` and
``mdl.png`` (bars: MDL with intervals; curves: each chunk's code length per example
against the prefix size that coded it, mean over seeds). A root holding several datasets
gets one figure per dataset, ``mdl_<dataset>.png``: their uniform codes (log2 K) differ.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

__all__ = ["collect", "plot", "summarize", "t_interval"]

METHOD_ORDER = {"control": 0, "leace": 1, "qleace": 2}


def t_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi) of the two-sided Student-t interval; lo = hi = mean for one value."""
    from scipy import stats

    v = np.asarray(values, np.float64)
    m = float(v.mean())
    if len(v) < 2:
        return m, m, m
    half = stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return m, m - half, m + half


def _method(rec: dict) -> str:
    name = rec["erasure"] or "control"
    if rec.get("erasure_shrinkage"):
        name += "_shrunk"
    if rec.get("validation", "holdout") != "holdout":
        name += f"_{rec['validation']}"  # strict: a different measure, never pooled
    return name


def collect(root: str | Path) -> list[dict]:
    """Every ``mdl.json`` under ``root`` with its ``method`` name and path."""
    out = []
    for p in sorted(Path(root).rglob("mdl.json")):
        rec = json.loads(p.read_text())
        out.append(rec | {"method": _method(rec), "path": str(p.parent)})
    if not out:
        raise FileNotFoundError(f"no mdl.json under {root}")
    return out


def summarize(records: list[dict]) -> list[dict]:
    """One row per (dataset, model, method): seeds, MDL mean and 95% t-interval (bits per
    sample), the per-seed values and the mean chunk code lengths per example."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["model"], r["method"]), []).append(r)
    rows = []
    for (dataset, model, method), rs in groups.items():
        if len({tuple(r["bounds"]) for r in rs}) != 1:
            raise ValueError(f"{dataset}/{model}/{method}: runs with different chunk schedules")
        mdl = [r["mdl_bits_per_sample"] for r in sorted(rs, key=lambda r: r["seed"])]
        mean, lo, hi = t_interval(mdl)
        b = np.asarray(rs[0]["bounds"])
        per_chunk = np.mean([np.asarray(r["chunk_bits"]) / np.diff(b) for r in rs], axis=0)
        rows.append(
            {
                "dataset": dataset,
                "model": model,
                "method": method,
                "seeds": len(rs),
                "mdl_bits_per_sample": mean,
                "ci95_lo": lo,
                "ci95_hi": hi,
                "per_seed": mdl,
                "bounds": b.tolist(),
                "chunk_bits_per_example": per_chunk.tolist(),
                "log2_num_classes": rs[0]["log2_num_classes"],
            }
        )
    rows.sort(
        key=lambda r: (r["dataset"], r["model"], METHOD_ORDER.get(r["method"], 9), r["method"])
    )
    return rows


def write_tables(rows: list[dict], out: Path) -> tuple[Path, Path]:
    cols = ["dataset", "model", "method", "seeds", "mdl_bits_per_sample", "ci95_lo", "ci95_hi"]
    csv = out / "mdl_table.csv"
    lines = [",".join([*cols, "per_seed"])]
    lines += [
        ",".join(
            [
                *(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols),
                " ".join(f"{v:.4f}" for v in r["per_seed"]),
            ]
        )
        for r in rows
    ]
    csv.write_text("\n".join(lines) + "\n")
    md = out / "mdl_table.md"
    text = [
        "| dataset | model | method | seeds | MDL (bits/sample) | 95% t-interval | per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    text += [
        f"| {r['dataset']} | {r['model']} | {r['method']} | {r['seeds']} | "
        f"{r['mdl_bits_per_sample']:.4f} | [{r['ci95_lo']:.4f}, {r['ci95_hi']:.4f}] | "
        + ", ".join(f"{v:.4f}" for v in r["per_seed"])
        + " |"
        for r in rows
    ]
    md.write_text("\n".join(text) + "\n")
    return csv, md


def plot(rows: list[dict], path: Path) -> Path:
    """Bars of MDL with 95% t-intervals and the per-chunk code-length curves, for the rows
    of one dataset (their log2 K is the figure's uniform-code line)."""
    datasets = sorted({r["dataset"] for r in rows})
    if len(datasets) != 1:
        raise ValueError(f"plot: one dataset per figure, got {datasets}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
    labels = [
        f"{r['method']}\n{r['model']}" if len({x["model"] for x in rows}) > 1 else r["method"]
        for r in rows
    ]
    means = np.array([r["mdl_bits_per_sample"] for r in rows])
    err = np.array([[m - r["ci95_lo"], r["ci95_hi"] - m] for m, r in zip(means, rows)]).T
    colors = [f"C{i}" for i in range(len(rows))]
    ax0.bar(range(len(rows)), means, yerr=err, capsize=5, color=colors)
    for i, r in enumerate(rows):
        ax0.plot([i] * len(r["per_seed"]), r["per_seed"], "k.", ms=4)
    ax0.axhline(rows[0]["log2_num_classes"], color="gray", ls=":", label="log2 K")
    ax0.legend(fontsize=8, loc="upper left")
    ax0.set_xticks(range(len(rows)), labels)
    ax0.set_ylabel("prequential MDL (bits / sample)")
    ax0.set_title("MDL, mean and 95% t-interval over seeds (dots: seeds)")
    for i, r in enumerate(rows):
        b = np.asarray(r["bounds"])
        # Chunk j is coded by the model trained on the first b[j] examples (j = 0: uniform).
        ax1.plot(
            np.maximum(b[:-1], 1),
            r["chunk_bits_per_example"],
            "o-",
            color=colors[i],
            label=labels[i].replace("\n", " "),
        )
    ax1.axhline(rows[0]["log2_num_classes"], color="gray", ls=":", label="uniform code (log2 K)")
    ax1.set_xscale("log")
    ax1.set_xlabel("training examples of the coding model (chunk start; 1: uniform code)")
    ax1.set_ylabel("code length of the next chunk (bits / example)")
    ax1.set_title("per-chunk code length (mean over seeds)")
    ax1.legend(fontsize=8)
    fig.suptitle(f"prequential MDL: {rows[0]['dataset']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", help="directory holding the MDL runs (searched for mdl.json)")
    ap.add_argument("--out", default=None, help="output directory (default: root)")
    args = ap.parse_args(argv)
    out = Path(args.out or args.root)
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(collect(args.root))
    csv, md = write_tables(rows, out)
    (out / "mdl_summary.json").write_text(json.dumps(rows, indent=1))
    datasets = sorted({r["dataset"] for r in rows})
    figs = [
        plot(
            [r for r in rows if r["dataset"] == d],
            out / ("mdl.png" if len(datasets) == 1 else f"mdl_{d}.png"),
        )
        for d in datasets
    ]
    print(md.read_text())
    print(f"table: {csv}, {md}\nfigure: {', '.join(map(str, figs))}")


if __name__ == "__main__":
    main()
