"""The MNIST reference of this folder, in one command (experiments/poly_approx/README.md).

    python -m dsb.data.prepare mnist --from_idx ~/.cache/dsb-raw   # once, offline
    python experiments/poly_approx/make_mnist.py                    # two runs, 2 CPU cores

Runs ``python -m dsb.main experiment=poly_mnist`` (seed 0) twice, with the MLP ``[512]``
(exact closed forms, and the Stein estimates next to them) and ``[512, 512]`` (Stein
estimates only), into ``runs/reference/poly_mnist/<net>`` (deleted first), and writes
``reference/mnist_<net>/``: ``poly_across_time.png``, ``poly_eigenvectors.png`` and
``poly_numbers.json`` (per checkpoint: the ``poly/`` metrics and the network's test
accuracy; with the run's wall time by phase), and ``reference/mnist_table.md`` (the
README's table, from those files); ~35 min on 2 loaded cores. ``--nets one_hidden``
(comma-separated) picks some of the two; ``--table_only`` rewrites the table from the
committed numbers; other arguments are Hydra overrides for both runs (e.g.
``train.total_steps=64`` for a quick look; do not commit that one).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
NETS = {"one_hidden": "[512]", "two_hidden": "[512,512]"}
TABLE_STEPS = (0, 16, 128, 512, 1024, 4096)


def collect(run_dir: Path, ref: Path) -> None:
    """Copy the run's poly figures into ``ref`` and write its numbers."""
    ref.mkdir(parents=True, exist_ok=True)
    for name in ("poly_across_time.png", "poly_eigenvectors.png"):
        shutil.copy(run_dir / "figures" / name, ref / name)
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        keep = {k: v for k, v in rec.items() if k.startswith("poly/") or k == "val/accuracy"}
        if any(k.startswith("poly/") for k in keep):
            rows.append({"step": rec["step"], **keep})
    summary = json.loads((run_dir / "summary.json").read_text())
    out = {"timings": summary.get("timings"), "checkpoints": rows}
    (ref / "poly_numbers.json").write_text(json.dumps(out, indent=1) + "\n")


def _fmt(rec: dict, key: str, digits: int = 3) -> str:
    v = rec.get(f"poly/{key}")
    return "-" if v is None else f"{v:.{digits}f}"


def _stein_vs_exact(rows: list[dict]) -> str:
    """The Stein estimates' R^2 minus the exact closed form's over all checkpoints, raw and
    after subtracting the jackknife ``r2_bias``: their range per approximant and set."""
    out = []
    for a in ("linear", "quadratic"):
        for set_name in ("val", "gauss"):
            st, ex = f"poly/{a}_stein/{set_name}/r2", f"poly/{a}/{set_name}/r2"
            raw = [r[st] - r[ex] for r in rows]
            cor = [r[st] - r[f"poly/{a}_stein/{set_name}/r2_bias"] - r[ex] for r in rows]
            out.append(
                f"`{a}_stein` {set_name}: {min(raw):+.4f} to {max(raw):+.4f} raw, "
                f"{min(cor):+.4f} to {max(cor):+.4f} after the jackknife correction"
            )
    return (
        f"Stein estimate minus exact closed form, R^2 over the {len(rows)} checkpoints: "
        + "; ".join(out)
        + "."
    )


def table(ref: Path) -> str:
    """Markdown, per net and step in ``TABLE_STEPS``: the network's test accuracy; R^2 of
    the logits (val / gauss), KL (val, nats) and test accuracy of the linear and quadratic
    approximants (the exact ones where they exist, else the Stein estimates); and the
    Stein quadratic's gauss R^2 with its jackknife ``r2_bias`` and ``r2_se``."""
    lines = []
    for net, widths in NETS.items():
        f = ref / f"mnist_{net}" / "poly_numbers.json"
        if not f.exists():
            continue
        data = json.loads(f.read_text())
        total = data["timings"]["total_s"] / 60 if data.get("timings") else float("nan")
        sfx = "" if net == "one_hidden" else "_stein"
        lines += [
            f"MLP {widths}, approximants `linear{sfx}` / `quadratic{sfx}` "
            f"(run wall time {total:.1f} min):",
            "",
            "| step | net acc | R^2 lin val / gauss | R^2 quad val / gauss | KL lin / quad "
            "| acc lin / quad | quadratic_stein gauss R^2 | its r2_bias (r2_se) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        by_step = {r["step"]: r for r in data["checkpoints"]}
        for step in (s for s in TABLE_STEPS if s in by_step):
            rec = by_step[step]

            def pair(a, b, digits=3, rec=rec):
                return f"{_fmt(rec, a, digits)} / {_fmt(rec, b, digits)}"

            q = "quadratic_stein/gauss"
            cells = [
                str(step),
                f"{rec.get('val/accuracy', float('nan')):.3f}",
                pair(f"linear{sfx}/val/r2", f"linear{sfx}/gauss/r2"),
                pair(f"quadratic{sfx}/val/r2", f"quadratic{sfx}/gauss/r2"),
                pair(f"linear{sfx}/val/kl", f"quadratic{sfx}/val/kl", 4),
                pair(f"linear{sfx}/val/accuracy", f"quadratic{sfx}/val/accuracy"),
                _fmt(rec, f"{q}/r2", 4),
                f"{_fmt(rec, f'{q}/r2_bias', 4)} ({_fmt(rec, f'{q}/r2_se', 4)})",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if net == "one_hidden":
            lines += [_stein_vs_exact(data["checkpoints"]), ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Comma-separated, not nargs="+": that would swallow the Hydra overrides after it.
    ap.add_argument("--nets", default=",".join(NETS), help=f"some of {','.join(NETS)}")
    ap.add_argument("--table_only", action="store_true")
    args, overrides = ap.parse_known_args(sys.argv[1:] if argv is None else argv)
    nets = args.nets.split(",")
    if unknown := set(nets) - set(NETS):
        ap.error(f"--nets: unknown {sorted(unknown)}; choose from {','.join(NETS)}")
    for net in [] if args.table_only else nets:
        run_dir = ROOT / "runs" / "reference" / "poly_mnist" / net
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = [
            sys.executable, "-m", "dsb.main", "experiment=poly_mnist",
            f"model.kwargs.widths={NETS[net]}", f"hydra.run.dir={run_dir}",
        ]  # fmt: skip
        subprocess.run(cmd + overrides, check=True, cwd=ROOT)
        collect(run_dir, HERE / "reference" / f"mnist_{net}")
    (HERE / "reference" / "mnist_table.md").write_text(table(HERE / "reference"))


if __name__ == "__main__":
    main()
