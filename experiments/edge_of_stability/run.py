"""Edge of stability on digits: the committed sweep, figure and numbers.

    python experiments/edge_of_stability/run.py [--runs DIR] [--steps N] [overrides ...]

Trains ``experiment=edge_of_stability`` (full-batch gradient descent, tanh MLP 128-128,
constant step size) for each training loss and step size, one run directory each under
``--runs`` (default ``runs/edge_of_stability``; a finished run directory is reused, an unfinished
one resumes), then writes
``edge_of_stability.png`` and ``numbers.json`` into this folder. For each run the numbers
are read from ``metrics.jsonl`` (``sharp/eig_1`` is NaN wherever Lanczos did not converge,
and such checkpoints are counted, not used):

* ``sharpness_init``: the sharpness at step 0; ``sharpness_max`` and the step it is reached;
* ``sharpness_min_first_half`` and its step: the flattest checkpoint of the first half of
  the run (where the initialisation is sharper than 2 / eta, the first steps are unstable
  and fall to a flatter region first);
* ``first_step_at_90pct``: the first checkpoint from that minimum on with sharpness
  >= 0.9 * 2 / eta (null if never), i.e. when progressive sharpening reaches the threshold;
* ``late_mean_ratio``, ``late_min_ratio``, ``late_max_ratio``: sharpness / (2 / eta) over the
  checkpoints after ``first_step_at_90pct`` + 256 steps (the regime the paper calls the edge
  of stability), with ``late_checkpoints`` counting them;
* ``loss_increases``: how many of the logged training-loss values (every 32 steps) are above
  the previous one (non-monotone descent), and ``loss_final``;
* ``unconverged``: checkpoints whose top eigenvalue did not converge;
* ``diverged``: the run stopped on a NaN/Inf training loss (a step size too large for the
  initialisation); ``wall_s``: the run's wall time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

from dsb.metrics import read_metrics  # noqa: E402
from dsb.plot_helpers import save_figure  # noqa: E402

LOSSES = ("mse", "cross_entropy")


def run_one(run_dir: Path, loss: str, lr: float, steps: int, overrides: list[str]) -> float | None:
    cmd = [
        sys.executable, "-m", "dsb.main", "experiment=edge_of_stability",
        f"train.loss={loss}", f"optim.learning_rate={lr}", f"train.total_steps={steps}",
        "train.progress_bar=false", f"hydra.run.dir={run_dir}", *overrides,
    ]  # fmt: skip
    if (run_dir / "summary.json").is_file():  # finished: reused as it is
        return None
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT)
    if proc.returncode:  # e.g. the NaN/Inf stop of a step size past the catapult range
        print(f"run {run_dir.name} failed (exit {proc.returncode}); recorded as diverged")
        return -(time.time() - t0)
    return time.time() - t0


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _diverged(run_dir: Path) -> bool:
    """The run stopped on a NaN/Inf training loss (its main.log says so)."""
    log = run_dir / "main.log"
    return log.is_file() and "NonFiniteLossError" in log.read_text(errors="replace")


def sharp_steps(conv: list[tuple[int, float]]) -> int:
    return conv[-1][0] if conv else 0


def summarise(run_dir: Path, lr: float) -> dict:
    recs = read_metrics(run_dir)
    thr = 2.0 / lr
    sharp = [(r["step"], r["sharp/eig_1"]) for r in recs if "sharp/eig_1_ritz" in r]
    conv = [(s, v) for s, v in sharp if _finite(v)]
    loss = [(r["step"], r["train/loss"]) for r in recs if "train/loss" in r]
    smax = max(conv, key=lambda sv: sv[1]) if conv else (None, float("nan"))
    # Where the initialisation is already sharper than 2 / eta, the first steps are unstable
    # and throw the parameters to a flatter region (the sharpness falls); sharpening is
    # measured from the flattest checkpoint of the first half of the run.
    early = [(s, v) for s, v in conv if s <= sharp_steps(conv) // 2] or conv
    smin = min(early, key=lambda sv: sv[1]) if early else (None, float("nan"))
    first = next((s for s, v in conv if s >= (smin[0] or 0) and v >= 0.9 * thr), None)
    late = [v / thr for s, v in conv if first is not None and s >= first + 256]
    return {
        "learning_rate": lr,
        "threshold_2_over_lr": thr,
        "sharpness_init": conv[0][1] if conv and conv[0][0] == 0 else None,
        "sharpness_max": smax[1],
        "sharpness_max_step": smax[0],
        "sharpness_min_first_half": smin[1],
        "sharpness_min_step": smin[0],
        "first_step_at_90pct": first,
        "late_checkpoints": len(late),
        "late_mean_ratio": sum(late) / len(late) if late else None,
        "late_min_ratio": min(late) if late else None,
        "late_max_ratio": max(late) if late else None,
        "loss_increases": sum(b[1] > a[1] for a, b in itertools.pairwise(loss)),
        "loss_logged": len(loss),
        "loss_final": loss[-1][1] if loss else None,
        "unconverged": len(sharp) - len(conv),
        "checkpoints": len(sharp),
    }


def plot(runs: dict, out_dir: Path, lrs: list[float]) -> list[Path]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 7))
    axes = fig.subplots(2, len(LOSSES), sharex=True, squeeze=False)
    for j, loss in enumerate(LOSSES):
        ax_s, ax_l = axes[0, j], axes[1, j]
        for i, lr in enumerate(lrs):
            run_dir = runs.get((loss, lr))
            if run_dir is None:
                continue
            recs = read_metrics(run_dir)
            c = f"C{i}"
            if _diverged(run_dir):  # no curve: its values run off any scale
                last = max((r["step"] for r in recs), default=0)
                ax_s.plot([], [], "x", color=c, label=f"eta = {lr:g}: DIVERGED (by step {last})")
                ax_s.axhline(2 / lr, color=c, ls="--", lw=1.0)
                continue
            conv = [(r["step"], r["sharp/eig_1"]) for r in recs if _finite(r.get("sharp/eig_1"))]
            bad = [
                (r["step"], r["sharp/eig_1_ritz"])
                for r in recs
                if "sharp/eig_1_ritz" in r and not _finite(r.get("sharp/eig_1"))
            ]
            if conv:
                ax_s.plot(*zip(*conv), "-", color=c, lw=1.2, label=f"eta = {lr:g}")
            if bad:
                ax_s.plot(*zip(*bad), "o", mfc="none", color="C3", ms=5,
                          label="UNCONVERGED (Ritz lower bound)" if i == 0 else None)  # fmt: skip
            ax_s.axhline(2 / lr, color=c, ls="--", lw=1.0)
            loss_pts = [(r["step"], r["train/loss"]) for r in recs if "train/loss" in r]
            if loss_pts:
                ax_l.plot(*zip(*loss_pts), "-", color=c, lw=1.0)
        ax_s.set_title(f"{loss}: sharpness (solid) and 2 / eta (dashed)", fontsize=10)
        ax_s.set_ylabel("lambda_max of the loss Hessian")
        ax_s.set_yscale("log")
        ax_s.legend(fontsize=8)
        ax_l.set_yscale("log")
        ax_l.set_ylabel("training loss (full batch)")
        ax_l.set_xlabel("step")
        for ax in (ax_s, ax_l):
            ax.grid(alpha=0.3)
    fig.suptitle("Full-batch gradient descent on digits (tanh MLP 128-128)", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, out_dir, "edge_of_stability")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "edge_of_stability")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--steps", type=int, default=2048)
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2])
    ap.add_argument(
        "--summarise-only", action="store_true", help="redraw from existing runs, train none"
    )
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = ap.parse_args()
    old = args.out / "numbers.json"
    walls = {}
    if old.is_file():
        walls = {k: v.get("wall_s") for k, v in json.loads(old.read_text())["runs"].items()}
    runs, numbers = {}, {"steps": args.steps, "runs": {}}
    for loss in LOSSES:
        for lr in args.lrs:
            run_dir = args.runs / f"{loss}_lr{lr:g}"
            wall = None
            if not args.summarise_only:
                wall = run_one(run_dir, loss, lr, args.steps, args.overrides)
            if wall is None:  # not run now: the wall time recorded before, if any
                wall = walls.get(f"{loss}_lr{lr:g}")
            runs[(loss, lr)] = run_dir
            diverged = wall is not None and wall < 0
            numbers["runs"][f"{loss}_lr{lr:g}"] = summarise(run_dir, lr) | {
                "wall_s": abs(wall) if wall is not None else None,
                "diverged": diverged or _diverged(run_dir),
            }
            print(json.dumps(numbers["runs"][f"{loss}_lr{lr:g}"]), flush=True)
    paths = plot(runs, args.out, args.lrs)
    (args.out / "numbers.json").write_text(json.dumps(numbers, indent=2) + "\n")
    print("wrote", *paths, args.out / "numbers.json", sep="\n  ")


if __name__ == "__main__":
    main()
