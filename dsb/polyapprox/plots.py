"""Run figures of the ``poly_approx`` evaluator (``dsb.evals.poly_approx``).

``poly_figures`` (registered in ``dsb.plots.FIGURES``) writes, for one evaluator entry:

- ``poly_across_time.png``: R^2 (top) and KL(network || approximant) (bottom) of the linear
  and quadratic approximants against the step on the log2 axis of the max-ent figures
  (``dsb.plot_helpers.setup_step_axis``), solid on the real val split, dashed on the Gaussian
  samples; grey dotted: the in-sample linear least-squares R^2 on the Gaussian samples.
- ``poly_eigenvectors.png``: the top-2 eigenvectors (by |eigenvalue|) of each logit's
  quadratic form in whitened coordinates, shown as input-space displacements (images), at
  an early checkpoint (the first saved step >= 64, else the first) and the last one, from
  ``<run_dir>/poly_forms/step_<step>.npz``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from dsb.plot_helpers import save_figure, setup_step_axis

__all__ = ["collect_poly_curves", "plot_poly_curves", "plot_poly_eigenvectors", "poly_figures"]

_PATTERN = re.compile(
    r"(?:^|/)((?:linear|quadratic)(?:_prop|_stein)?|linear_ols)/(val|gauss)/(r2|kl)$"
)
EARLY_STEP = 64


def collect_poly_curves(records: Sequence[dict]) -> dict[tuple[str, str, str], list]:
    """``{(approximant, set, metric): [(step, value), ...]}`` sorted by step."""
    curves: dict[tuple[str, str, str], dict[int, float]] = {}
    for rec in records:
        if "step" not in rec:
            continue
        for key, val in rec.items():
            m = _PATTERN.search(key)
            if m is None or val is None:
                continue
            curves.setdefault(m.groups(), {})[int(rec["step"])] = float(val)
    return {k: sorted(v.items()) for k, v in curves.items()}


def plot_poly_curves(records: Sequence[dict], out_dir: str | Path, title: str = "") -> list[Path]:
    """``poly_across_time.png`` (and ``.pdf``) from metrics records of one entry (names
    without the entry key). Returns the paths, none if nothing was logged."""
    import matplotlib

    curves = collect_poly_curves(records)
    if not curves:
        return []
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {"linear": colours[0], "quadratic": colours[1]}
    fig = Figure(figsize=(6.5, 6.5))
    ax_r2, ax_kl = fig.subplots(2, 1, sharex=True)
    all_steps = {st for pts in curves.values() for st, _ in pts}
    kinds = {a.partition("_")[2] for a, _, _ in curves if a != "linear_ols"} - {""}
    has_exact = any(a in ("linear", "quadratic") for a, _, _ in curves)
    for (approx, set_name, metric), pts in sorted(curves.items()):
        ax = ax_r2 if metric == "r2" else ax_kl
        if approx == "linear_ols":
            ax.plot(*zip(*pts), ":", color="gray", marker=".", label="linear OLS fit (gauss)")
            continue
        base, _, kind = approx.partition("_")
        ls = "-" if set_name == "val" else "--"
        # Next to exact curves (stein_on_exact) an estimate is drawn thinner, with crosses.
        style = {"marker": "x", "lw": 0.8, "alpha": 0.8} if kind and has_exact else {}
        ax.plot(
            *zip(*pts), ls, color=colour[base], label=f"{approx} ({set_name})",
            **{"marker": ".", **style},
        )  # fmt: skip
    ax_r2.set_ylabel("R$^2$ of the logits")
    ax_kl.set_ylabel("KL(network || approximant)")
    ax_r2.axhline(0.95, color="gray", lw=0.8, ls="-", alpha=0.5)
    ax_r2.set_ylim(top=1.02)
    setup_step_axis(ax_kl, all_steps)
    ax_r2.legend(fontsize=7, ncol=2)
    how = {"stein": " (Stein Monte Carlo)", "prop": " (propagated)"}
    what = "polynomial approximants across time" + "".join(how[k] for k in sorted(kinds))
    if has_exact and kinds:
        what = what.replace(" (", " (exact, and ", 1)
    # Two lines: the run title and the method both fit the 6.5-inch figure (one line was cut).
    ax_r2.set_title(f"{title}\n{what}" if title else what, fontsize=10)
    for ax in (ax_r2, ax_kl):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, out_dir, "poly_across_time")


def _pick_early_late(files: Sequence[Path]) -> list[Path]:
    steps = [int(np.load(f)["step"]) for f in files]
    later = [i for i, s in enumerate(steps) if s >= EARLY_STEP]
    early = later[0] if later else 0
    return [files[early], files[-1]] if early != len(files) - 1 else [files[-1]]


def plot_poly_eigenvectors(
    files: Sequence[Path], out_dir: str | Path, title: str = "", top: int = 2
) -> list[Path]:
    """``poly_eigenvectors.png``: rows (checkpoint, eigenvector rank), one column per logit,
    each eigenvector shown as an image on a symmetric colour scale, its eigenvalue above."""
    files = _pick_early_late(sorted(files))
    data = [np.load(f) for f in files]
    K = data[0]["evecs"].shape[0]
    top = min(top, data[0]["evecs"].shape[1])
    shape = tuple(int(v) for v in data[0]["input_shape"])
    rows = len(data) * top
    fig = Figure(figsize=(1.1 * K + 0.8, 1.25 * rows + 0.6))
    axes = np.atleast_2d(fig.subplots(rows, K))
    for r, (d, rank) in enumerate((d, j) for d in data for j in range(top)):
        for k in range(K):
            ax = axes[r, k]
            v = d["evecs"][k, rank].reshape(shape)
            img = v.mean(-1) if v.ndim == 3 else v
            lim = float(np.abs(img).max()) or 1.0
            ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{d['evals'][k, rank]:.2g}", fontsize=6, pad=2)
            if k == 0:
                ax.set_ylabel(f"step {int(d['step'])}\n#{rank + 1}", fontsize=7)
    exact = bool(data[-1]["exact"])
    what = "top eigenvectors of each logit's quadratic form" + ("" if exact else " (Monte Carlo)")
    fig.suptitle(f"{title}: {what}" if title else what, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out_dir, "poly_eigenvectors")


def poly_figures(
    records: Sequence[dict],
    key: str,
    out_dir: str | Path,
    *,
    title: str = "",
    num_classes: int | None = None,
) -> list[Path]:
    """The figures of the ``poly_approx`` entry ``key`` (``dsb.plots`` figure signature):
    the PNG paths written. ``out_dir`` is ``<run_dir>/figures`` (or ``.../figures/<key>``);
    the eigenvector files are looked up in ``<run_dir>/poly_forms``."""
    prefix = f"{key}/"
    own = [
        {"step": r["step"], **{k[len(prefix) :]: v for k, v in r.items() if k.startswith(prefix)}}
        for r in records
        if "step" in r
    ]
    out_dir = Path(out_dir)
    paths = [p for p in plot_poly_curves(own, out_dir, title) if p.suffix == ".png"]
    for run_dir in (out_dir.parent, out_dir.parent.parent):
        files = sorted((run_dir / "poly_forms").glob("step_*.npz"))
        if files:
            written = plot_poly_eigenvectors(files, out_dir, title)
            paths += [p for p in written if p.suffix == ".png"]
            break
    return paths
