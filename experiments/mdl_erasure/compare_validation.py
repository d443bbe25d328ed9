"""Holdout against strict prequential MDL on digits (``mdl.validation``), same seeds.

    python -m dsb.mdl -m experiment=mdl_erasure_local mdl.validation=holdout \
        hydra.sweep.dir=multirun/mdl_val_holdout
    python -m dsb.mdl -m experiment=mdl_erasure_local mdl.validation=strict \
        hydra.sweep.dir=multirun/mdl_val_strict
    python experiments/mdl_erasure/compare_validation.py multirun/mdl_val_holdout \
        multirun/mdl_val_strict

Writes ``experiments/mdl_erasure/validation_modes.json`` (per method: both summaries from
``dsb.mdl.aggregate.summarize`` and the per-seed differences strict - holdout with their
95% t-interval) and prints a markdown table. Every ``mdl.json`` is first checked against
its ``mdl_code_lengths.npy`` (``math.fsum`` of the bits equals ``total_bits``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from dsb.mdl.aggregate import collect, summarize, t_interval

HERE = Path(__file__).resolve().parent


def _checked(root: str) -> list[dict]:
    recs = collect(root)
    for r in recs:
        table = np.load(Path(r["path"]) / r["code_lengths_file"])
        if math.fsum(table["bits"]) != r["total_bits"]:
            raise ValueError(f"{r['path']}: mdl_code_lengths.npy does not sum to total_bits")
    return recs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("holdout")
    ap.add_argument("strict")
    ap.add_argument("--out", default=str(HERE / "validation_modes.json"))
    args = ap.parse_args()
    recs = {"holdout": _checked(args.holdout), "strict": _checked(args.strict)}
    rows = {mode: {r["method"]: r for r in summarize(rs)} for mode, rs in recs.items()}
    out, lines = {}, []
    lines.append(
        "| method | holdout | strict | strict - holdout (per seed) | mean difference [95% t] |"
    )
    lines.append("|---|---|---|---|---|")
    for method, h in rows["holdout"].items():
        s = rows["strict"][f"{method}_strict"]
        diff = np.asarray(s["per_seed"]) - np.asarray(h["per_seed"])
        mean, lo, hi = t_interval(diff)
        out[method] = {
            "holdout": h,
            "strict": s,
            "difference_per_seed": diff.tolist(),
            "difference_mean_ci95": [mean, lo, hi],
        }
        lines.append(
            f"| {method} | {h['mdl_bits_per_sample']:.3f} [{h['ci95_lo']:.3f}, "
            f"{h['ci95_hi']:.3f}] | {s['mdl_bits_per_sample']:.3f} [{s['ci95_lo']:.3f}, "
            f"{s['ci95_hi']:.3f}] | "
            + ", ".join(f"{d:+.3f}" for d in diff)
            + f" | {mean:+.3f} [{lo:+.3f}, {hi:+.3f}] |"
        )
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print("\n".join(lines))
    for method in out:
        for mode in ("holdout", "strict"):
            r = out[method][mode]
            per = ", ".join(f"{v:.2f}" for v in r["chunk_bits_per_example"])
            print(f"{method} {mode}: bounds {r['bounds']}\n  bits/example per chunk: {per}")


if __name__ == "__main__":
    main()
