"""One command for a GPU machine: run dsb's main paths on the card and record what happened.

    python benchmarks/gpu_smoke.py                      # the full smoke run, for a GPU
    python benchmarks/gpu_smoke.py --quick              # every step shrunk: CPU minutes
    python benchmarks/gpu_smoke.py --only main_job jacobian_dense --out FILE.json

Steps, each timed, its status recorded (``ok``; ``failed`` with the tail of the error;
``skipped`` with the reason); a failed step does not stop the ones after it:

- ``main_job``: ``python -m dsb.main`` (the default experiment: MLP on digits with the
  held-out and DSB-probe evaluators) in a subprocess with a temporary ``hydra.run.dir``;
  records the wall time and the final metrics from ``summary.json``. ``--quick``: 64
  steps, no figures.
- ``cifar10_recipe``: ``experiment=dsb_cifar10`` (ResNet-18, AdamW, crop + flip +
  RandAugment, the full probe list) for 300 steps on mock CIFAR-shaped data
  (``tfds.testing.mock_data``: random 32x32x3 images and labels, so accuracies are at
  chance), in a subprocess. Reduced probe config: every max-ent set (box3 included) and
  OT edit, with ``num_samples=2000`` instead of 10^4; 5000 mock examples per split.
  ``--quick``: ResNet width 8, batch 16, 8 steps, probes ``ics``/``box1`` and
  ``mean_shift`` with 64 samples, 64 mock examples (RandAugment included).
- ``jacobian_dense``: the training Jacobian d theta_T / d theta_0 of the reference setup
  (MLP 64-GELU-10, P = 4810, T = 625; ``dsb.jacobian.study.setup``) by
  ``dsb.jacobian.jacobian_forward``, timed twice (first call includes compilation), then
  its float64 SVD on the host: sigma_1 and the bulk counts against the paper's
  (``study.PAPER``). ``--quick``: the same P, T = 4 steps, no SVD.
- ``model_throughput``: forward+backward examples/s of every model in
  ``benchmarks/model_throughput.py`` at 32x32x3 (its ``measure``), batch 128.
  ``--quick``: mlp and lenet5, batch 8, 2 timed steps.
- ``equivalence``: the default job on 1 and on N GPUs (``CUDA_VISIBLE_DEVICES``), with
  the 1-ulp control, compared by ``experiments/data_parallel/equivalence.py``'s
  ``check`` (512 steps). Skipped on a machine with one GPU. On a CPU backend it runs on
  1 and 2 simulated CPU devices instead, so the path is exercised here; ``--quick``: 64
  steps (8 warmup), held-out evaluator only.

The JSON result (default ``benchmarks/results/gpu_smoke_<device>.json``, the device kind
lower-cased with non-alphanumerics as ``_``) holds the device kind, device count, jax and
jaxlib versions, and per step its status, seconds and key numbers; a table is printed at
the end. Exit status 1 if any step failed.

``--fail-step NAME`` (repeatable) is for tests only: step NAME raises an error at its
start, to check that the failure is recorded and the other steps still run.

The parent process sets ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` for itself (so its own
steps do not take 75% of the card from the subprocess steps); subprocesses get the
environment as it was given.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import jax
import jaxlib
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("main_job", "cifar10_recipe", "jacobian_dense", "model_throughput", "equivalence")
TAIL_CHARS = 3000
CHILD_ENV = dict(os.environ)  # subprocesses get the environment the user gave


class Skip(Exception):
    """Raised by a step to be recorded as skipped, with the message as the reason."""


def load_script(relpath: str):
    """A repository script (not a package module) as a module."""
    path = ROOT / relpath
    name = "_gpu_smoke_" + re.sub(r"\W", "_", relpath)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def device_slug(kind: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", kind.lower()).strip("_") or "unknown"


def run_child(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    """A subprocess in the repository root with the user's environment; raises with the
    tail of its output when it fails or times out."""
    try:
        proc = subprocess.run(
            args, cwd=ROOT, env=CHILD_ENV, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        out = (e.stderr or b"")[-TAIL_CHARS:]
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
        raise RuntimeError(f"timed out after {timeout} s; output tail:\n{out}") from None
    if proc.returncode != 0:
        raise RuntimeError(
            f"exit {proc.returncode}; stderr tail:\n{(proc.stderr or proc.stdout)[-TAIL_CHARS:]}"
        )
    return proc


def read_summary(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    keep = ("final_step", "val/accuracy", "val/loss", "train/loss")
    return {k: summary[k] for k in keep if k in summary}


# ----------------------------------------------------------------------------- steps


def step_main_job(quick: bool) -> dict:
    extra = ["train.total_steps=64", "optim.warmup_steps=8", "figures=false"] if quick else []
    with tempfile.TemporaryDirectory(prefix="gpu_smoke_main_") as tmp:
        t0 = time.perf_counter()
        run_child(
            [
                sys.executable,
                "-m",
                "dsb.main",
                f"hydra.run.dir={tmp}",
                "train.progress_bar=false",
                *extra,
            ],
            timeout=600 if quick else 3600,
        )
        wall = time.perf_counter() - t0
        return {"overrides": extra, "wall_s": round(wall, 2), **read_summary(Path(tmp))}


# Runs dsb.main's Hydra app inside tfds.testing.mock_data: random CIFAR-shaped examples.
CIFAR_WORKER = r"""
import sys
import tensorflow_datasets as tfds
from dsb.main import main
num_examples, *overrides = sys.argv[1:]
sys.argv = ["dsb.main", *overrides]
with tfds.testing.mock_data(num_examples=int(num_examples)):
    main()
"""

CIFAR_FULL = [
    "train.total_steps=300",
    "optim.warmup_steps=30",
    "evals.dsb.num_samples=2000",
]
CIFAR_QUICK = [
    "train.total_steps=8",
    "optim.warmup_steps=2",
    "model.kwargs.width=8",
    "data.batch_size=16",
    "train.eval_batch_size=64",
    "train.log_every_steps=4",
    "evals.dsb.maxent_sets=[ics,box1]",
    "evals.dsb.ot_sets=[mean_shift]",
    "evals.dsb.num_samples=64",
    "figures=false",
]


def step_cifar10_recipe(quick: bool) -> dict:
    overrides = ["experiment=dsb_cifar10", *(CIFAR_QUICK if quick else CIFAR_FULL)]
    num_examples = 64 if quick else 5000
    with tempfile.TemporaryDirectory(prefix="gpu_smoke_cifar_") as tmp:
        t0 = time.perf_counter()
        run_child(
            [
                sys.executable,
                "-c",
                CIFAR_WORKER,
                str(num_examples),
                f"hydra.run.dir={tmp}",
                "train.progress_bar=false",
                *overrides,
            ],
            timeout=600 if quick else 3600,
        )
        wall = time.perf_counter() - t0
        summary = json.loads((Path(tmp) / "summary.json").read_text())
        probes = sorted(k for k in summary if k.startswith("dsb/") and k.endswith("accuracy"))
        return {
            "data": f"tfds.testing.mock_data, {num_examples} random examples per split",
            "overrides": overrides,
            "wall_s": round(wall, 2),
            **read_summary(Path(tmp)),
            "probe_metrics": probes,
        }


def step_jacobian_dense(quick: bool) -> dict:
    from dsb.jacobian import bulk_counts, jacobian_forward, robust_svd, study

    bench = load_script("benchmarks/jacobian_dense.py")
    s = study.setup(0)
    run, theta0 = s["run"], s["theta0"]
    if quick:
        run = run.with_steps(4)
    first_s, jac = bench.timed(lambda: jacobian_forward(run, theta0))[:2]
    second_s, jac = bench.timed(lambda: jacobian_forward(run, theta0))[:2]
    jac = np.asarray(jac)
    out = {
        "num_params": int(theta0.size),
        "num_steps": int(run.num_steps),
        "dtype": str(theta0.dtype),
        "first_call_s": round(first_s, 3),
        "second_call_s": round(second_s, 3),
        "frobenius_norm": float(np.linalg.norm(jac.astype(np.float64))),
        "all_finite": bool(np.isfinite(jac).all()),
    }
    if not out["all_finite"]:
        raise FloatingPointError(f"the Jacobian has non-finite entries: {out}")
    if quick:
        out["svd"] = "skipped (--quick: T shortened, the reference numbers do not apply)"
        return out
    t0 = time.perf_counter()
    s_vals = robust_svd(jac, compute_uv=False).s
    out["svd_s"] = round(time.perf_counter() - t0, 2)
    out["sigma_1"] = float(s_vals[0])
    counts = {str(k): v for k, v in bulk_counts(s_vals).items()}
    out["count_abs_sigma_minus_1_below"] = counts
    out["reference"] = {k: study.PAPER[k] for k in ("sigma_1", "count_abs_sigma_minus_1_below")}
    return out


def step_model_throughput(quick: bool) -> dict:
    mt = load_script("benchmarks/model_throughput.py")
    names = ["mlp", "lenet5"] if quick else list(mt.MODELS)
    batch, steps = (8, 2) if quick else (128, 20)
    rows, failed = {}, {}
    for name in names:
        try:
            r = mt.measure(name, mt.MODELS[name], batch, steps)
        except Exception as e:  # one model failing is recorded; the others still run
            failed[name] = f"{type(e).__name__}: {e}"[-TAIL_CHARS:]
            continue
        rows[name] = {k: r[k] for k in ("params", "compile_s", "step_s_median", "examples_per_s")}
        print(f"  {name:18s} {r['examples_per_s']:10.1f} ex/s", flush=True)
    if failed:
        raise RuntimeError(f"models failed: {json.dumps(failed, indent=1)}; ok: {rows}")
    return {"batch_size": batch, "timed_steps": steps, "models": rows}


def equivalence_plan(platform_name: str, device_count: int) -> tuple[list[int], str]:
    """``(device counts, how)`` for the equivalence step; raises ``Skip`` on one GPU."""
    if platform_name == "cpu":
        return [1, 2], "simulated CPU devices (XLA_FLAGS)"
    if device_count < 2:
        raise Skip(f"needs at least 2 devices; this machine has {device_count} {platform_name}")
    return [1, device_count], f"{platform_name} devices selected by CUDA_VISIBLE_DEVICES"


def gpu_env(visible: list[str]):
    def env(n: int) -> dict[str, str]:
        return {**CHILD_ENV, "CUDA_VISIBLE_DEVICES": ",".join(visible[:n])}

    return env


def step_equivalence(quick: bool) -> dict:
    eq = load_script("experiments/data_parallel/equivalence.py")
    backend = jax.default_backend()
    devices, how = equivalence_plan(backend, jax.device_count())
    kw = {}
    if backend != "cpu":
        given = CHILD_ENV.get("CUDA_VISIBLE_DEVICES")
        visible = given.split(",") if given else [str(i) for i in range(jax.device_count())]
        kw["device_env"] = gpu_env(visible)
    steps = 64 if quick else 512
    extra = ["evals=classification", "optim.warmup_steps=8"] if quick else []
    result = eq.check(
        ["default"], devices, steps, control=True, timeout=600 if quick else 1800,
        extra_overrides=extra, **kw,
    )["default"]  # fmt: skip
    runs = result["runs"]
    n = str(devices[-1])
    out = {
        "how": how,
        "devices": devices,
        "steps": steps,
        "extra_overrides": extra,
        "status_by_devices": {k: r["status"] for k, r in runs.items()},
        f"early_rel_fro_{n}_vs_1": runs[n].get("early_diff_vs_1", {}).get("rel_fro"),
        f"final_rel_fro_{n}_vs_1": runs[n].get("final_diff_vs_1", {}).get("rel_fro"),
        "early_tolerance": result["early_tolerance_rel_fro"],
        "final_tolerance": result["final_tolerance_rel_fro"],
        "control": result["control_diff"],
    }
    if not all(r["ok"] for r in runs.values()):
        brief = "; ".join(f"{k} device(s): {r['status']}, ok={r['ok']}" for k, r in runs.items())
        detail = json.dumps(runs, indent=1)[-TAIL_CHARS:]
        raise RuntimeError(f"equivalence failed: {brief}\n{detail}")
    return out


STEP_FNS = {
    "main_job": step_main_job,
    "cifar10_recipe": step_cifar10_recipe,
    "jacobian_dense": step_jacobian_dense,
    "model_throughput": step_model_throughput,
    "equivalence": step_equivalence,
}


# ----------------------------------------------------------------------------- runner


def run_step(name: str, quick: bool, fail: bool) -> dict:
    print(f"== {name}", flush=True)
    t0 = time.perf_counter()
    try:
        if fail:
            raise RuntimeError(f"injected failure (--fail-step {name})")
        numbers = STEP_FNS[name](quick)
        rec = {"status": "ok", "numbers": numbers}
    except Skip as e:
        rec = {"status": "skipped", "reason": str(e)}
    except Exception:
        rec = {"status": "failed", "error": traceback.format_exc()[-TAIL_CHARS:]}
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    print(f"   {rec['status']} in {rec['seconds']:.1f} s", flush=True)
    if rec["status"] == "failed":
        print(rec["error"], flush=True)
    return rec


def key_numbers(rec: dict) -> str:
    """A short line of a step's scalar numbers for the summary table."""
    if rec["status"] == "skipped":
        return rec["reason"]
    if rec["status"] == "failed":
        lines = rec["error"].strip().splitlines()
        errors = [ln for ln in lines if re.match(r"\w+(Error|Exception|Expired)\b", ln)]
        return (errors or lines)[-1][:100]
    parts = []
    for k, v in rec["numbers"].items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        parts.append(f"{k}={v:.4g}")
    models = rec["numbers"].get("models")
    if models:
        parts += [f"{m}={r['examples_per_s']:.4g}ex/s" for m, r in models.items()]
    return ", ".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="shrink every step (CPU minutes)")
    ap.add_argument("--out", type=Path, help="default benchmarks/results/gpu_smoke_<device>.json")
    ap.add_argument("--only", nargs="+", choices=STEPS, help="run only these steps")
    ap.add_argument(
        "--fail-step", action="append", default=[], choices=STEPS, help="test only: fail NAME"
    )
    args = ap.parse_args(argv)

    # Before the backend starts (jax.devices below): this process's own steps allocate
    # GPU memory as they need it instead of taking 75% of it from the subprocess steps.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    dev = jax.devices()[0]
    kind = dev.device_kind
    out = args.out or ROOT / "benchmarks" / "results" / f"gpu_smoke_{device_slug(kind)}.json"
    record = {
        "device_kind": kind,
        "platform": dev.platform,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": platform.python_version(),
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "quick": args.quick,
        "argv": sys.argv[1:] if argv is None else list(argv),
        "steps": {},
    }
    t_all = time.perf_counter()
    for name in STEPS:
        if args.only and name not in args.only:
            rec = {"status": "skipped", "reason": "not selected by --only", "seconds": 0.0}
        else:
            rec = run_step(name, args.quick, name in args.fail_step)
        record["steps"][name] = rec
        # Written after every step, so a crash or a kill keeps what finished.
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    record["total_seconds"] = round(time.perf_counter() - t_all, 2)
    with contextlib.suppress(OSError):
        record["load_average_at_end"] = os.getloadavg()
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")

    print(f"\n{kind} ({dev.platform} x{jax.device_count()}), jax {jax.__version__}")
    print(f"{'step':<18}{'status':<9}{'seconds':>9}  key numbers")
    for name, rec in record["steps"].items():
        print(f"{name:<18}{rec['status']:<9}{rec['seconds']:>9.1f}  {key_numbers(rec)}")
    print(f"wrote {out}")
    failed = [n for n, r in record["steps"].items() if r["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
