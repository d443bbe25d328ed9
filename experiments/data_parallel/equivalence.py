"""N simulated devices train the parameters of 1 device: the experiments, end to end.

    python experiments/data_parallel/equivalence.py                   # all, 1/2/4/8 devices
    python experiments/data_parallel/equivalence.py --experiments default --devices 1 4
    python experiments/data_parallel/equivalence.py --steps 256 --out FILE.json

Each (experiment, device count) is a fresh interpreter with exactly that many simulated
CPU devices (``--xla_force_host_platform_device_count``), so the XLA:CPU client, its thread
pool and its collectives are those a user gets. Each run trains the experiment's own
model, optimizer, data and evaluators for ``--steps`` steps with the default logging
window (128 steps unless the experiment sets one), so several windows, checkpoints and
evaluations happen after step 128, where an unbounded dispatch queue used to deadlock.

Parameters (and BatchNorm statistics) of each N-device run are compared with the 1-device
run by the relative Frobenius norm over all of them, ``rel_fro = ||a - b|| / ||a||`` (the
worst per-leaf ``max |a - b| / max |a|`` is reported beside it). Both runs compute the same
global-batch gradient; they differ only in the order of float32 additions (a mean of
per-device means against one mean), ~1e-7 relative per step. Training amplifies such
differences, by an amount that depends on the experiment, so there are two criteria:

- at the step-32 checkpoint and at the last step, ``rel_fro <= max(1e-5, 2 x control)``
  at that step, where the control is a second 1-device run from parameters one float32
  ulp away. It measures how far this experiment carries a rounding-level perturbation:
  at step 512, ~1e-2 for the MLPs and LeNet, 0.2 for the BatchNorm ResNet (Adam turns
  rounding noise on near-zero gradients into full-size updates, and BatchNorm chains
  it; already 2e-3 at step 32), 4e-5 for the small LM, 3e-7 for the SGD Jacobian run.
- Where the control is large the criterion is weak; the step-32 check, where the
  control is still small for every experiment but the ResNet, carries the weight.

Planted bugs fail the early criterion: ``psum`` for ``pmean`` of the gradients (which Adam
almost normalises away) gave 1e-4 at step 32 on the default job, per-device gradients with
no reduction 2e-2. Results go to a JSON file and a table on stdout; a failure exits
non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dsb.parallel import simulated_devices_env

ROOT = Path(__file__).resolve().parent.parent.parent

# Each experiment as a user would run it, shortened to --steps; the language model is
# also narrowed (its full size takes ~15 minutes per 512 steps on 2 cores).
EXPERIMENTS = {
    "default": [],
    "dsb_digits": ["experiment=dsb_digits", "optim.warmup_steps=64"],
    "digits_lenet5": ["experiment=digits_lenet5"],
    "digits_resnet18": ["experiment=digits_resnet18"],
    # The training-Jacobian evaluator replays the run (P = 610) under the same mesh.
    "jacobian_digits": [
        "experiment=jacobian_digits",
        "model.kwargs.widths=[8]",
        "evals.jac.when=[0,256,512]",
        "+evals.jac.num_bulk=100",
    ],
    "lm_ngram_default": [
        "experiment=lm_ngram_default",
        "model.kwargs.num_layers=1",
        "model.kwargs.d_model=64",
        "data.text.context_length=64",
        "data.batch_size=32",
        "evals.ngram.num_sequences=32",
        "+evals.ngram.max_val_sequences=32",
        "+evals.ngram.num_bootstrap=50",
    ],
}

WORKER = r"""
import json, sys, time
import jax, numpy as np
from dsb.config import compose, to_config
from dsb.train import train
overrides, run_dir, out, ndev, perturb = json.loads(sys.argv[1])
assert jax.device_count() == ndev, (jax.device_count(), ndev)
cfg = to_config(compose(overrides))
t0 = time.perf_counter()
if perturb:  # the control: the same run from parameters one float32 ulp away
    import dsb.train as T
    init = T.init_model
    def nudged(*a, **k):
        m = init(*a, **k)
        m.params = jax.tree.map(lambda p: np.nextafter(p, np.inf, dtype=p.dtype)
                                if np.issubdtype(p.dtype, np.floating) else p, m.params)
        m.params = jax.device_put(m.params, k.get("sharding"))
        return m
    T.init_model = nudged
res = train(cfg, run_dir)
leaves = jax.tree.leaves((res.state.params, res.state.rest))
np.savez(out + ".final.npz", *[np.asarray(x) for x in leaves])
from dsb.analysis import load_checkpoint
early = load_checkpoint(run_dir, EARLY_STEP).state
leaves = jax.tree.leaves((early.params, early.rest))
np.savez(out + ".early.npz", *[np.asarray(x) for x in leaves])
print("RESULT", json.dumps({"seconds": time.perf_counter() - t0,
      "final_step": res.final_step, "train_loss": res.last_metrics.get("train/loss")}))
"""


def run_one(
    overrides,
    ndev: int,
    workdir: Path,
    tag: str,
    perturb: bool,
    timeout: int,
    device_env=simulated_devices_env,
):
    """One training run in a fresh interpreter: ``(info, {"early": leaves, "final": leaves})``
    or ``(info, None)`` when it did not finish. ``device_env(ndev)`` is the child's
    environment, which must show it exactly ``ndev`` devices (default: simulated CPU
    devices; ``benchmarks/gpu_smoke.py`` passes one that selects GPUs)."""
    out = workdir / tag
    env = device_env(ndev)
    args = json.dumps([overrides, str(workdir / tag), str(out), ndev, perturb])
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", WORKER.replace("EARLY_STEP", str(EARLY_STEP)), args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"status": f"timed out after {timeout} s"}, None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-1500:]
        return {"status": f"exit {proc.returncode}", "stderr_tail": tail}, None
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    info = {"status": "finished", **json.loads(line.split(" ", 1)[1])}
    info["wall_s"] = time.perf_counter() - t0
    leaves = {}
    for when in ("early", "final"):
        with np.load(f"{out}.{when}.npz") as z:
            leaves[when] = [z[k] for k in z.files]
    return info, leaves


EARLY_STEP = 32  # a log-spaced checkpoint of every run
TOLERANCE = 1e-5
CONTROL_FACTOR = 2.0


def param_diff(a_leaves, b_leaves) -> dict[str, float]:
    """``rel_fro``: ``||a - b|| / ||a||`` over every floating leaf; ``max_leaf``: the worst
    ``max |a - b| / max |a|`` of a single leaf. Unequal integer leaves count as infinite."""
    worst, num, den = 0.0, 0.0, 0.0
    for a, b in zip(a_leaves, b_leaves, strict=True):
        if not np.issubdtype(a.dtype, np.floating):
            if not np.array_equal(a, b):
                return {"rel_fro": float("inf"), "max_leaf": float("inf")}
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        num += float(np.sum((a64 - b64) ** 2))
        den += float(np.sum(a64**2))
        worst = max(worst, float(np.max(np.abs(a64 - b64))) / (float(np.max(np.abs(a64))) or 1.0))
    return {"rel_fro": float(np.sqrt(num / den)) if den else 0.0, "max_leaf": worst}


def check(
    experiments,
    devices,
    steps: int,
    control: bool = True,
    timeout: int = 1200,
    log=print,
    device_env=simulated_devices_env,
    extra_overrides=(),
) -> dict:
    """Run each experiment on 1 device and on each count in ``devices`` (and the 1-ulp
    control), and compare parameters; ``device_env`` as in ``run_one``;
    ``extra_overrides`` are appended to every run's overrides."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in experiments:
            overrides = [
                *EXPERIMENTS[name],
                f"train.total_steps={steps}",
                "train.progress_bar=false",
                "figures=false",
                *extra_overrides,
            ]
            workdir = Path(tmp) / name
            workdir.mkdir()
            runs, leaves = {}, {}
            for n in sorted(set([1, *devices])):
                runs[n], leaves[n] = run_one(
                    overrides, n, workdir, f"dev{n}", False, timeout, device_env
                )
                log(f"{name}: {n} device(s): {runs[n]['status']}", flush=True)
            ctrl = None
            if control and leaves[1] is not None:
                info, ctrl_leaves = run_one(
                    overrides, 1, workdir, "control", True, timeout, device_env
                )
                if ctrl_leaves is not None:
                    ctrl = {w: param_diff(leaves[1][w], ctrl_leaves[w]) for w in ctrl_leaves}
                log(f"{name}: 1-ulp control: {info['status']}, drift {ctrl}", flush=True)
            tol = {
                w: max(TOLERANCE, CONTROL_FACTOR * ctrl[w]["rel_fro"]) if ctrl else TOLERANCE
                for w in ("early", "final")
            }
            for n in devices:
                r = runs[n]
                if n == 1 or leaves[n] is None or leaves[1] is None:
                    r["ok"] = n == 1 and leaves[1] is not None
                    continue
                r["early_diff_vs_1"] = param_diff(leaves[1]["early"], leaves[n]["early"])
                r["final_diff_vs_1"] = param_diff(leaves[1]["final"], leaves[n]["final"])
                r["ok"] = (
                    r["early_diff_vs_1"]["rel_fro"] <= tol["early"]
                    and r["final_diff_vs_1"]["rel_fro"] <= tol["final"]
                )
            results[name] = {
                "overrides": overrides,
                "control_diff": ctrl,
                "early_step": EARLY_STEP,
                "early_tolerance_rel_fro": tol["early"],
                "final_tolerance_rel_fro": tol["final"],
                "runs": {str(n): runs[n] for n in devices},
            }
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS), choices=EXPERIMENTS)
    ap.add_argument("--devices", nargs="+", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--steps", type=int, default=512)
    ap.add_argument("--no-control", action="store_true", help="skip the 1-ulp control run")
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per run")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "experiments" / "data_parallel" / "equivalence.json"
    )
    args = ap.parse_args(argv)
    results = check(args.experiments, args.devices, args.steps, not args.no_control, args.timeout)
    print(
        f"\n{'experiment':<18}{'devices':>8}{'status':>10}{'seconds':>9}"
        f"{'step-32 rel_fro':>17}{'final rel_fro':>15}{'final max_leaf':>16}"
    )
    all_ok = True
    fmt = lambda d, k: "" if d is None else f"{d[k]:.1e}"
    for name, r in results.items():
        for n, run in r["runs"].items():
            e, f = run.get("early_diff_vs_1"), run.get("final_diff_vs_1")
            print(
                f"{name:<18}{n:>8}{run['status']:>10}{run.get('seconds', float('nan')):>9.1f}"
                f"{fmt(e, 'rel_fro'):>17}{fmt(f, 'rel_fro'):>15}{fmt(f, 'max_leaf'):>16}"
                f"{'' if run['ok'] else '  FAIL'}"
            )
            all_ok &= run["ok"]
        c = r["control_diff"] or {"early": None, "final": None}
        print(
            f"{'':<18}{'1-ulp control':>27}{fmt(c['early'], 'rel_fro'):>17}"
            f"{fmt(c['final'], 'rel_fro'):>15}{fmt(c['final'], 'max_leaf'):>16}"
        )
        print(
            f"{'':<18}{'tolerance':>27}{r['early_tolerance_rel_fro']:>17.1e}"
            f"{r['final_tolerance_rel_fro']:>15.1e}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"steps": args.steps, "cpu_count": os.cpu_count(), "results": results}, indent=2)
    )
    print(f"wrote {args.out}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
