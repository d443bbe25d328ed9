"""The DSB paper's claims, measured on a sweep: one number per claim, run and probe set.

    python experiments/dsb_probes/findings.py RUNS_OR_TABLE --out DIR

Inputs as for ``plot_sweep.py`` (run or sweep directories, globs, or a table from
``python -m dsb.aggregate``). Writes ``DIR/findings.json`` (every per-run number) and
``DIR/findings.md`` (the per-variant summary over seeds, the table the experiment READMEs
quote). Only log-spaced checkpoints are used (as in the figures).

Claims of Belrose et al. (ICML 2024), and what is measured for each (over the logged
checkpoints ``s_0 < ... < s_T`` of one run):

* **Max-ent sets: the loss falls early and rises later** (a minimum before the end).
  ``min_step`` = the checkpoint of the smallest loss; ``rise`` = final loss - smallest
  loss (nats). The claim holds in a run when ``min_step < s_T`` and ``rise > 0``; in a
  variant when it holds in every seed and the mean rise exceeds twice its standard error
  over seeds (``rise_sem`` = sd / sqrt(n)). With one seed it is reported as "1 seed".
* **Higher orders later**: the median over seeds of ``min_step`` per set, per order
  (ics, box1: order 1; gaussian, box2: order 2; box3: order 3); the claim holds when the
  order-3 minimum is not earlier than the order-2 minima, nor those than the order-1 ones.
* **OT-edited sets: classified as the target class early, then as the source.**
  ``target_peak`` = the largest target-class accuracy and ``target_peak_step`` its
  checkpoint; ``final_target``/``final_source`` = the two accuracies at ``s_T``;
  ``cross_step`` = the first checkpoint after the peak where source accuracy exceeds target
  accuracy (None: never). Holds in a run when the peak exceeds 2/K (twice chance) and
  exceeds the source accuracy at that checkpoint, and ``final_source > final_target``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from dsb.aggregate import load_table, variant_columns
from dsb.data.registry import get_dataset_spec

ORDER = {"ics": 1, "box1": 1, "gaussian": 2, "box2": 2, "box3": 3, "truncnorm": 2}


def _sets(df: pd.DataFrame, kind: str) -> list[str]:
    return sorted({c.split("/")[2] for c in df.columns if c.startswith(f"dsb/{kind}/")})


def maxent_run(run: pd.DataFrame, name: str) -> dict | None:
    """Loss minimum and rise of max-ent set ``name`` in one run (rows sorted by step)."""
    loss = run[["step", f"dsb/maxent/{name}/loss"]].dropna()
    if len(loss) < 2:
        return None
    steps, values = loss["step"].to_numpy(int), loss.iloc[:, 1].to_numpy(float)
    i = int(np.argmin(values))
    rise = float(values[-1] - values[i])
    return {
        "set": name,
        "order": ORDER.get(name),
        "min_step": int(steps[i]),
        "min_loss": float(values[i]),
        "final_loss": float(values[-1]),
        "final_step": int(steps[-1]),
        "rise": rise,
        "holds": bool(i < len(values) - 1 and rise > 0),
    }


def ot_run(run: pd.DataFrame, name: str, num_classes: int) -> dict | None:
    """Target-then-source classification of OT set ``name`` in one run."""
    cols = [f"dsb/ot/{name}/target_accuracy", f"dsb/ot/{name}/source_accuracy"]
    acc = run[["step", *cols]].dropna()
    if len(acc) < 2:
        return None
    steps = acc["step"].to_numpy(int)
    tgt, src = acc[cols[0]].to_numpy(float), acc[cols[1]].to_numpy(float)
    p = int(np.argmax(tgt))
    after = [k for k in range(p + 1, len(steps)) if src[k] > tgt[k]]
    return {
        "set": name,
        "target_peak": float(tgt[p]),
        "target_peak_step": int(steps[p]),
        "source_at_peak": float(src[p]),
        "final_target": float(tgt[-1]),
        "final_source": float(src[-1]),
        "cross_step": int(steps[after[0]]) if after else None,
        "holds": bool(tgt[p] > 2 / num_classes and tgt[p] > src[p] and src[-1] > tgt[-1]),
    }


def per_run(df: pd.DataFrame) -> list[dict]:
    """Every per-run number: ``[{run_dir, seed, variant..., maxent: [...], ot: [...]}]``."""
    variants = variant_columns(df)
    out = []
    for run_dir, run in df.groupby("run_dir", sort=True):
        run = run.sort_values("step")
        first = run.iloc[0]
        k = get_dataset_spec(first["data.name"]).num_classes
        rec = {"run_dir": _shown(run_dir), "seed": _plain(first.get("seed"))}
        rec.update({c: _plain(first[c]) for c in variants if c != "seed"})
        rec["data.name"] = first["data.name"]
        rec["model.name"] = first.get("model.name")
        rec["final_val_accuracy"] = _last(run, "val/accuracy")
        rec["maxent"] = [r for s in _sets(df, "maxent") if (r := maxent_run(run, s))]
        rec["ot"] = [r for s in _sets(df, "ot") if (r := ot_run(run, s, k))]
        out.append(rec)
    return out


def _shown(run_dir) -> str:
    """A run directory relative to the repository when it lies inside it (so committed
    findings do not name one machine's paths)."""
    root = Path(__file__).resolve().parent.parent.parent
    p = Path(str(run_dir)).resolve()
    return str(p.relative_to(root)) if p.is_relative_to(root) else str(run_dir)


def _plain(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _last(run: pd.DataFrame, col: str) -> float | None:
    if col not in run:
        return None
    s = run[col].dropna()
    return float(s.iloc[-1]) if len(s) else None


def summarize(runs: list[dict], keys: list[str]) -> list[dict]:
    """Per variant (``keys``) and probe set: the claims over seeds (module docstring)."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(tuple(str(r.get(k)) for k in keys), []).append(r)
    rows = []
    for key, rs in sorted(groups.items()):
        base = dict(zip(keys, key, strict=True))
        base["seeds"] = len(rs)
        base["final_val_accuracy"] = float(np.mean([r["final_val_accuracy"] for r in rs]))
        for name in sorted({m["set"] for r in rs for m in r["maxent"]}, key=_order_key):
            ms = [m for r in rs for m in r["maxent"] if m["set"] == name]
            rise = np.array([m["rise"] for m in ms])
            sem = float(rise.std(ddof=1) / math.sqrt(len(rise))) if len(rise) > 1 else None
            all_hold = all(m["holds"] for m in ms)
            if sem is None:
                verdict = "1 seed: " + ("yes" if all_hold else "no")
            else:
                verdict = "yes" if all_hold and rise.mean() > 2 * sem else "no"
            rows.append(
                {
                    **base,
                    "kind": "maxent",
                    "set": name,
                    "order": ORDER.get(name),
                    "min_step_median": float(np.median([m["min_step"] for m in ms])),
                    "min_steps": [m["min_step"] for m in ms],
                    "rise_mean": float(rise.mean()),
                    "rise_sem": sem,
                    "min_loss_mean": float(np.mean([m["min_loss"] for m in ms])),
                    "final_loss_mean": float(np.mean([m["final_loss"] for m in ms])),
                    "seeds_holding": sum(m["holds"] for m in ms),
                    "holds": verdict,
                }
            )
        for name in sorted({o["set"] for r in rs for o in r["ot"]}):
            os_ = [o for r in rs for o in r["ot"] if o["set"] == name]
            rows.append(
                {
                    **base,
                    "kind": "ot",
                    "set": name,
                    "target_peak_mean": float(np.mean([o["target_peak"] for o in os_])),
                    "target_peak_steps": [o["target_peak_step"] for o in os_],
                    "final_target_mean": float(np.mean([o["final_target"] for o in os_])),
                    "final_source_mean": float(np.mean([o["final_source"] for o in os_])),
                    "cross_steps": [o["cross_step"] for o in os_],
                    "seeds_holding": sum(o["holds"] for o in os_),
                    "holds": f"{sum(o['holds'] for o in os_)}/{len(os_)} seeds",
                }
            )
    return rows


def _order_key(name: str):
    return (ORDER.get(name, 9), name)


def higher_orders_later(rows: list[dict], keys: list[str]) -> list[dict]:
    """Per variant: median loss-minimum step per order, and whether it is non-decreasing."""
    out = []
    variants = {tuple(r[k] for k in keys) for r in rows}
    for v in sorted(variants):
        ms = [r for r in rows if r["kind"] == "maxent" and tuple(r[k] for k in keys) == v]
        by_order: dict[int, list[float]] = {}
        for r in ms:
            if r["order"] is not None:
                by_order.setdefault(r["order"], []).append(r["min_step_median"])
        orders = sorted(by_order)
        # Every set of a higher order has its minimum no earlier than every lower-order one.
        ok = all(min(by_order[b]) >= max(by_order[a]) for a, b in itertools.pairwise(orders))
        out.append({**dict(zip(keys, v, strict=True)), "min_step_by_order": by_order, "holds": ok})
    return out


def _fmt(x, nd=3):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def markdown(rows: list[dict], order_rows: list[dict], keys: list[str]) -> str:
    head = [*keys, "seeds"]
    lines = ["### Max-ent sets: loss minimum before the end, then a rise", ""]
    cols = [*head, "set", "order", "min step (median)", "min steps", "min loss",
            "final loss", "rise (mean +- sem)", "holds"]  # fmt: skip
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if r["kind"] != "maxent":
            continue
        rise = _fmt(r["rise_mean"]) + (f" +- {_fmt(r['rise_sem'])}" if r["rise_sem"] else "")
        vals = [*(r[k] for k in head), r["set"], r["order"], _fmt(r["min_step_median"], 0),
                ",".join(map(str, r["min_steps"])), _fmt(r["min_loss_mean"]),
                _fmt(r["final_loss_mean"]), rise, r["holds"]]  # fmt: skip
        lines.append("| " + " | ".join(map(str, vals)) + " |")
    lines += ["", "### Higher orders later (median loss-minimum step per order)", ""]
    cols = [*keys, "order: steps", "holds"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in order_rows:
        by_order = sorted(r["min_step_by_order"].items())
        steps = "; ".join(f"{o}: {','.join(_fmt(s, 0) for s in v)}" for o, v in by_order)
        lines.append("| " + " | ".join([*(str(r[k]) for k in keys), steps, str(r["holds"])]) + " |")
    lines += ["", "### OT-edited sets: target class early, then source", ""]
    cols = [*head, "set", "target peak (mean)", "peak steps", "final target", "final source",
            "source > target from", "holds"]  # fmt: skip
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if r["kind"] != "ot":
            continue
        vals = [*(r[k] for k in head), r["set"], _fmt(r["target_peak_mean"]),
                ",".join(map(str, r["target_peak_steps"])), _fmt(r["final_target_mean"]),
                _fmt(r["final_source_mean"]), ",".join(map(_fmt, r["cross_steps"])),
                r["holds"]]  # fmt: skip
        lines.append("| " + " | ".join(map(str, vals)) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("inputs", nargs="+", help="run/sweep dirs, globs, or one .parquet/.csv")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--finished-only", action="store_true", help="skip unfinished runs")
    args = ap.parse_args(argv)
    df = load_table(args.inputs, args.finished_only, False)
    if df.empty:
        raise SystemExit(f"no runs found in {args.inputs}")
    runs = per_run(df)
    keys = ["data.name", "model.name"]
    rows = summarize(runs, keys)
    order_rows = higher_orders_later(rows, keys)
    result = {"claims": rows, "higher_orders_later": order_rows, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "findings.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    md = markdown(rows, order_rows, keys)
    (args.out / "findings.md").write_text(md)
    print(md)
    return result


if __name__ == "__main__":
    main()
