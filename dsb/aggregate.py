"""Collect run directories into one table: one row per (run, logged step).

    python -m dsb.aggregate multirun/dsb_digits_sweep/2026-01-01_00-00-00 --out table.parquet

Each row holds the run's flattened config (dotted keys: ``model.name``,
``optim.learning_rate``, ``seed``, ...), ``run_dir``, ``status``, ``step`` and every metric
logged at that step (``val/accuracy``, ``dsb/maxent/ics/loss``, ...). Missing values are NaN.

``status`` is, per run:

* ``finished``: ``summary.json`` exists (the trainer writes it last);
* ``failed``: no summary, and a job log holds a Python traceback: ``*.log`` in the run
  dir, or for SLURM jobs submitit's ``<sweep dir>/.submitit/<array id>_<job num>/*_log.err``
  (a local Hydra run prints its traceback to the terminal, not to ``main.log``, so a local
  crash reads as ``incomplete``);
* ``running``: no summary, no traceback, and ``metrics.jsonl`` was written less than
  ``running_within_s`` seconds ago;
* ``incomplete``: anything else (killed, preempted and not yet requeued, or a directory
  without metrics). A run without any metric still gets one row with ``step`` NaN, so
  crashed-before-start jobs stay visible.

Nothing here imports JAX: the aggregator runs on a login node in a second.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from dsb.config import read_run_config
from dsb.metrics import read_metrics

__all__ = [
    "STATUSES",
    "collect",
    "find_run_dirs",
    "flatten",
    "load_table",
    "make_reference",
    "over_seeds",
    "run_status",
    "save",
    "variant_columns",
]

STATUSES = ("finished", "failed", "running", "incomplete")
# Metric values the writer stores as strings (non-finite floats) become floats again.
_NON_FINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [1, 2]} -> {"a.b": 1, "c": "[1, 2]"}``: nested mappings become
    dotted keys; lists become their JSON text so every cell is a scalar (Parquet-safe)."""
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        if not tree and prefix:
            out[prefix] = "{}"
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(tree, list | tuple):
        out[prefix] = json.dumps(list(tree))
    else:
        out[prefix] = tree
    return out


_SKIP_DIRS = {".hydra", ".submitit", "checkpoints"}


def _is_run_dir(d: Path) -> bool:
    return (d / "config.yaml").is_file() or (d / "metrics.jsonl").is_file()


def find_run_dirs(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Run directories under ``paths``: each path may be a run directory, a parent (a
    multirun sweep directory, ``runs/``) searched recursively, or a glob pattern."""
    if isinstance(paths, str | Path):
        paths = [paths]
    found: list[Path] = []
    for p in paths:
        matches = [Path(m) for m in sorted(glob.glob(str(p)))] or [Path(p)]
        for m in matches:
            if not m.is_dir():
                continue
            if _is_run_dir(m):
                found.append(m)
                continue
            # A parent: walk it, stopping at each run directory (its checkpoints can
            # hold thousands of files) and skipping Hydra's and submitit's own folders.
            for dirpath, dirnames, _ in os.walk(m):
                d = Path(dirpath)
                if _is_run_dir(d):
                    found.append(d)
                    dirnames.clear()
                else:
                    dirnames[:] = sorted(n for n in dirnames if n not in _SKIP_DIRS)
    unique: dict[Path, None] = {}
    for d in found:
        unique.setdefault(d.resolve(), None)
    return list(unique)


def _has_traceback(run_dir: Path) -> bool:
    # hydra-submitit-launcher keeps job logs in <sweep dir>/.submitit/<array id>_<job num>/
    # (and the job's own output dir is <sweep dir>/<job num>).
    logs = [
        *run_dir.glob("*.log"),
        *run_dir.glob(".submitit/**/*_log.err"),
        *run_dir.parent.glob(f".submitit/*_{run_dir.name}/*_log.err"),
    ]
    for log in logs:
        try:
            if "Traceback (most recent call last)" in log.read_text(errors="replace"):
                return True
        except OSError:
            continue
    return False


def run_status(run_dir: str | Path, running_within_s: float = 600.0) -> str:
    """One of ``STATUSES`` (see the module docstring)."""
    run_dir = Path(run_dir)
    if (run_dir / "summary.json").is_file():
        return "finished"
    if _has_traceback(run_dir):
        return "failed"
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file() and time.time() - metrics.stat().st_mtime < running_within_s:
        return "running"
    return "incomplete"


def _load_config(run_dir: Path) -> dict[str, Any]:
    """The run's config, flattened; ``{}`` if config.yaml is missing or unreadable."""
    if not (run_dir / "config.yaml").is_file():
        return {}
    try:
        cfg = read_run_config(run_dir, raw=True)
    except Exception:  # a half-written file of a job killed at start-up
        return {}
    return flatten(cfg) if isinstance(cfg, dict) else {}


def _metric(v: Any) -> Any:
    return _NON_FINITE.get(v.lower(), v) if isinstance(v, str) else v


def _rows(run_dir: Path, running_within_s: float) -> list[dict[str, Any]]:
    base = {"run_dir": str(run_dir), "status": run_status(run_dir, running_within_s)}
    base.update(_load_config(run_dir))
    try:
        records = read_metrics(run_dir)
    except (OSError, KeyError, TypeError, AttributeError):  # unreadable or foreign lines
        records = []
    if not records:
        return [{**base, "step": float("nan")}]
    return [{**base, **{k: _metric(v) for k, v in r.items()}} for r in records]


def collect(
    paths: str | Path | Iterable[str | Path], running_within_s: float = 600.0
) -> pd.DataFrame:
    """One row per (run, logged step) of every run directory found under ``paths``
    (run directories, parents or glob patterns), sorted by ``run_dir`` and ``step``.

    Columns: ``run_dir``, ``status``, the flattened config, ``step``, then the metrics.
    """
    rows = [row for d in find_run_dirs(paths) for row in _rows(d, running_within_s)]
    if not rows:
        return pd.DataFrame(columns=["run_dir", "status", "step"])
    df = pd.DataFrame(rows)
    metric_cols = sorted(c for c in df.columns if "/" in c)
    config_cols = sorted(c for c in df.columns if c not in metric_cols and c not in _FIRST)
    df = df[[*_FIRST, *config_cols, *metric_cols]]
    df["step"] = pd.to_numeric(df["step"]).astype("Int64")
    for c in metric_cols:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df.sort_values(["run_dir", "step"], kind="stable").reset_index(drop=True)


_FIRST = ["run_dir", "status", "step"]


# Config keys that differ between runs of one variant without defining it.
_NOT_VARIANT = ("seed", "data.shuffle_seed", "data.data_dir", "data.text.corpus_dir")
# Where and how a run reports (TensorBoard, W&B names and tags) does not change what it
# computes, so runs differing only there are seeds of one variant.
_NOT_VARIANT_PREFIXES = ("logging.",)


def variant_columns(df: pd.DataFrame) -> list[str]:
    """The config columns that vary across the runs of ``df``, except seeds, paths and
    ``logging.*``: what tells one variant of a sweep (dataset, model, size, ...) from
    another."""
    runs = df.drop_duplicates("run_dir")
    config = [
        c
        for c in df.columns
        if c not in _FIRST
        and "/" not in c
        and c not in _NOT_VARIANT
        and not c.startswith(_NOT_VARIANT_PREFIXES)
    ]
    return [c for c in config if runs[c].astype(str).nunique() > 1]


def over_seeds(df: pd.DataFrame, metrics: list[str], by: list[str] | None = None) -> pd.DataFrame:
    """Mean, standard deviation, min, max and count over runs (seeds) of each ``metric``,
    per variant ``by`` (default ``variant_columns(df)``) and step.

    Returns one row per (variant, step) with columns ``by``, ``step`` and
    ``<metric>/{mean,std,min,max,n}``; steps where a metric was not logged are skipped.
    """
    by = variant_columns(df) if by is None else list(by)
    keys = [*by, "step"]
    # Group keys as text: lists are JSON strings already, and NaN configs stay grouped.
    frame = df.dropna(subset=["step"]).assign(**{c: df[c].astype(str) for c in by})
    parts = []
    for m in metrics:
        g = frame.dropna(subset=[m]).groupby(keys, sort=True)[m]
        stats = g.agg(["mean", "std", "min", "max", "count"])
        stats.columns = [f"{m}/{c}" if c != "count" else f"{m}/n" for c in stats.columns]
        parts.append(stats)
    if not parts:
        return pd.DataFrame(columns=keys)
    return pd.concat(parts, axis=1).reset_index()


def save(df: pd.DataFrame, path: str | Path) -> Path:
    """Write ``df`` as Parquet (``.parquet``) or CSV (``.csv``), by the file's suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        # Config columns can mix types across runs (null in one, a number in another):
        # store those as text so pyarrow accepts the table.
        out = df.copy()
        for c in out.columns:
            if out[c].dtype == object:
                kinds = {type(v) for v in out[c].dropna()}
                if len(kinds) > 1:
                    out[c] = out[c].map(lambda v: None if v is None else str(v))
        out.to_parquet(path, index=False)
    elif path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        raise ValueError(f"{path}: use a .parquet or .csv file name")
    return path


def load_table(
    inputs: list[str], finished_only: bool = False, all_steps: bool = False
) -> pd.DataFrame:
    """The aggregated table of ``inputs``; unless ``all_steps``, only the log-spaced
    evaluation steps (``dsb.schedule.log_spaced_steps`` of each run's total), so runs that
    also checkpoint every N steps (``ckpt=log_spaced_and_interval``) plot the same."""
    from dsb.schedule import log_spaced_steps

    if len(inputs) == 1 and inputs[0].endswith((".parquet", ".csv")):
        df = (
            pd.read_parquet(inputs[0]) if inputs[0].endswith(".parquet") else pd.read_csv(inputs[0])
        )
    else:
        df = collect(inputs)
    if finished_only:
        df = df[df["status"] == "finished"]
    if not all_steps and "train.total_steps" in df:
        keep = df.apply(
            lambda r: (
                pd.isna(r["train.total_steps"])
                or pd.isna(r["step"])
                or int(r["step"]) in log_spaced_steps(int(r["train.total_steps"]))
            ),
            axis=1,
        )
        df = df[keep.astype(bool)]
    return df


def make_reference(
    experiment: str,
    sweep_dir: str | Path,
    plot: Callable[[list[str]], None],
    out: str | Path,
    overrides: Sequence[str] = (),
    reuse: bool = False,
) -> Path:
    """Run the local sweep ``experiment=<experiment>`` into ``sweep_dir`` (emptied first
    unless ``reuse``: then existing jobs resume), aggregate it into
    ``<sweep_dir>/table.parquet`` and call ``plot([table, "--out", out])``: the one command
    behind each ``experiments/<figure>/make_reference.py``."""
    import shutil
    import subprocess
    import sys

    sweep_dir = Path(sweep_dir)
    if sweep_dir.exists() and not reuse:
        shutil.rmtree(sweep_dir)
    cmd = [sys.executable, "-m", "dsb.main", "-m", f"experiment={experiment}",
           f"hydra.sweep.dir={sweep_dir}", *overrides]  # fmt: skip
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent, check=True)
    table = save(collect(sweep_dir), sweep_dir / "table.parquet")
    plot([str(table), "--out", str(out)])
    return table


def sweep_plot_args(argv: list[str] | None, doc: str | None) -> argparse.Namespace:
    """The command line of ``experiments/<figure>/plot_sweep.py``: ``inputs`` (run or sweep
    dirs, globs, or one table), ``--out``, ``--finished-only``, ``--all-steps``."""
    ap = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("inputs", nargs="+", help="run/sweep dirs, globs, or one .parquet/.csv")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--finished-only", action="store_true", help="skip unfinished runs")
    ap.add_argument("--all-steps", action="store_true", help="also interval checkpoints")
    return ap.parse_args(argv)


def make_reference_main(
    argv: list[str] | None,
    *,
    experiment: str,
    figure: str,
    plot: Callable[[list[str]], None],
    doc: str | None = None,
) -> Path:
    """The command line of ``experiments/<figure>/make_reference.py``: ``--sweep-dir``
    (default ``runs/reference/<figure>``), ``--out`` (default
    ``experiments/<figure>/reference``), ``--reuse`` and Hydra overrides, then
    ``make_reference``."""
    root = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sweep-dir", type=Path, default=root / "runs/reference" / figure)
    ap.add_argument("--out", type=Path, default=root / "experiments" / figure / "reference")
    ap.add_argument("--reuse", action="store_true", help="keep (resume) existing runs")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job")
    args = ap.parse_args(argv)
    return make_reference(experiment, args.sweep_dir, plot, args.out, args.overrides, args.reuse)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description="Collect dsb run directories into one table (one row per run and step)."
    )
    ap.add_argument("paths", nargs="+", help="run directories, parents (sweeps) or globs")
    ap.add_argument("--out", required=True, help="output .parquet or .csv file")
    ap.add_argument(
        "--running-within-s",
        type=float,
        default=600.0,
        help="an unfinished run whose metrics changed this recently counts as running",
    )
    args = ap.parse_args(argv)
    df = collect(args.paths, args.running_within_s)
    path = save(df, args.out)
    runs = df.drop_duplicates("run_dir")
    counts = runs["status"].value_counts().to_dict() if len(runs) else {}
    print(f"{len(runs)} runs, {len(df)} rows -> {path} ({counts})")


if __name__ == "__main__":
    main()
