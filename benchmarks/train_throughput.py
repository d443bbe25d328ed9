"""Training throughput: the dsb training loop against a minimal hand-written jit loop.

    python benchmarks/train_throughput.py [--steps 3000] [--out FILE.json]

Three comparisons, each measured in one run of this script:
- ``results``: dsb against a minimal hand-written jit loop (below);
- ``in_flight``: dsb's bounded dispatch (``train.max_steps_in_flight``, default 4) against
  an unbounded queue, one device, same process, interleaved: the bound must cost no more
  than noise;
- ``simulated_devices``: the same dsb run on 1 and on 4 simulated CPU devices (each in its own
  interpreter, since the device count is fixed at start-up). On a 2-core machine 4
  simulated devices share the 2 cores, so this measures the cost of the collectives and
  the per-device launches, not a speed-up.

The baseline trains the same model with the same optimizer and global batch on the digits
data. It is the least a JAX user would write: a jitted, donated optax step fed by numpy
batches through ``jax.device_put``. dsb adds the mesh and shard_map, the grain index
order, the bounded dispatch queue, metrics, NaN checks and the progress bar (checkpoints
and evaluators are off: they are not per-step costs). Speed is measured after compilation
in the same process, interleaved (baseline, dsb, baseline, dsb, ...), best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from dsb_testing import compose  # noqa: E402

from dsb.config import to_config  # noqa: E402
from dsb.data.digits import digits_arrays  # noqa: E402
from dsb.metrics import read_metrics  # noqa: E402
from dsb.models.registry import build_model  # noqa: E402
from dsb.optim import make_optimizer  # noqa: E402
from dsb.parallel import simulated_devices_env  # noqa: E402
from dsb.train import train  # noqa: E402

MODELS = {
    "mlp_512x2": ["model=mlp", "model.kwargs.widths=[512,512]"],
    "lenet5": ["model=lenet5"],
}


def baseline_steps_per_s(cfg, steps: int) -> float:
    x, y = digits_arrays()["train"]
    model = build_model(
        cfg.model.name, num_classes=10, input_shape=(8, 8, 1), rngs=nnx.Rngs(0), **cfg.model.kwargs
    )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(cfg.optim, cfg.train.total_steps)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, xb, yb):
        def loss_fn(p):
            logits = nnx.merge(graphdef, p, rest)(xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        loss, g = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(step, donate_argnums=(0, 1))
    rng = np.random.default_rng(0)
    b = cfg.data.batch_size
    idx = [rng.integers(0, len(y), b) for _ in range(steps + 10)]
    for i in range(10):  # compile and warm up
        params, opt_state, loss = step(
            params, opt_state, jax.device_put(x[idx[i]]), jax.device_put(y[idx[i]])
        )
    loss.block_until_ready()
    t0 = time.perf_counter()
    losses = []
    for i in range(10, steps + 10):
        params, opt_state, loss = step(
            params, opt_state, jax.device_put(x[idx[i]]), jax.device_put(y[idx[i]])
        )
        losses.append(loss)
    jax.block_until_ready(losses)
    return steps / (time.perf_counter() - t0)


def dsb_steps_per_s(cfg, run_dir: Path) -> float:
    train(cfg, run_dir)
    windows = [r["train/steps_per_s"] for r in read_metrics(run_dir) if "train/steps_per_s" in r]
    # Skip the first window (compilation) and the last (it ends at the final checkpoint).
    body = windows[1:-1]
    return float(len(body) / sum(1.0 / w for w in body))  # harmonic mean = total steps / time


def bench_config(overrides: list[str], steps: int):
    return to_config(
        compose(
            [
                *overrides,
                "evals={}",
                "ckpt.log_spaced=false",
                "ckpt.async_save=false",
                "figures=false",
                "train.progress_bar=true",
                f"train.total_steps={steps}",
                "train.log_every_steps=250",
                "data.batch_size=128",
            ]
        )
    )


def in_flight_rows(steps: int, repeats: int) -> dict:
    """Bounded (the default) against unbounded dispatch on one device, interleaved."""
    rows = {}
    for name, overrides in MODELS.items():
        runs: dict[str, list[float]] = {"bounded_4": [], "unbounded": []}
        for _ in range(repeats):
            for label, n in (("bounded_4", 4), ("unbounded", 10**9)):
                cfg = bench_config([*overrides, f"train.max_steps_in_flight={n}"], steps)
                with tempfile.TemporaryDirectory() as d:
                    runs[label].append(dsb_steps_per_s(cfg, Path(d) / "run"))
        b, u = max(runs["bounded_4"]), max(runs["unbounded"])
        rows[name] = {
            "bounded_4_steps_per_s": b,
            "unbounded_steps_per_s": u,
            "bounded_over_unbounded": b / u,
            "all": runs,
        }
        print(f"{name}: bounded/unbounded dispatch = {b / u:.3f} (1 device)", flush=True)
    return rows


def device_rows(steps: int, repeats: int) -> dict:
    """The same run on 1 and 4 simulated CPU devices, each in a fresh interpreter."""
    rows = {}
    for name in MODELS:
        per_n = {}
        for n in (1, 4):
            env = simulated_devices_env(n)
            cmd = [sys.executable, __file__, "--worker", name, "--steps", str(steps)]
            vals = []
            for _ in range(repeats):
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                line = next(ln for ln in out.stdout.splitlines() if ln.startswith("STEPS_PER_S"))
                vals.append(float(line.split()[1]))
            per_n[n] = vals
        one, four = max(per_n[1]), max(per_n[4])
        rows[name] = {
            "devices_1_steps_per_s": one,
            "devices_4_steps_per_s": four,
            "four_over_one": four / one,
            "all": {str(k): v for k, v in per_n.items()},
        }
        print(f"{name}: 4 simulated devices / 1 device = {four / one:.3f}", flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_throughput.json"
    )
    ap.add_argument("--worker", choices=MODELS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:  # one dsb run on however many devices this interpreter has
        with tempfile.TemporaryDirectory() as d:
            cfg = bench_config(MODELS[args.worker], args.steps)
            print("STEPS_PER_S", dsb_steps_per_s(cfg, Path(d) / "run"), flush=True)
        return
    results = {}
    for name, overrides in MODELS.items():
        cfg = bench_config(overrides, args.steps)
        base, ours = [], []
        for r in range(args.repeats):
            base.append(baseline_steps_per_s(cfg, args.steps))
            with tempfile.TemporaryDirectory() as d:
                ours.append(dsb_steps_per_s(cfg, Path(d) / "run"))
            print(
                f"{name} repeat {r}: baseline {base[-1]:.0f} steps/s, dsb {ours[-1]:.0f} steps/s",
                flush=True,
            )
        b, o = max(base), max(ours)
        results[name] = {
            "baseline_steps_per_s": b,
            "dsb_steps_per_s": o,
            "overhead_percent": 100.0 * (b / o - 1.0),
            "all_baseline": base,
            "all_dsb": ours,
        }
        print(f"{name}: dsb overhead {results[name]['overhead_percent']:+.1f}%", flush=True)
    out = {
        "benchmark": "train_throughput",
        "steps": args.steps,
        "batch_size": 128,
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": __import__("os").cpu_count(),
        "platform": platform.platform(),
        "jax": jax.__version__,
        "results": results,
        "in_flight": in_flight_rows(args.steps, args.repeats),
        "simulated_devices": device_rows(args.steps, args.repeats),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
