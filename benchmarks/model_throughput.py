"""Forward + backward throughput (examples/s) of each image classifier at 32x32x3 on CPU.

One timed step is ``jax.value_and_grad`` of the mean cross-entropy with respect to the
parameters, in training mode (BatchNorm batch statistics, drop path active with a fixed
key), under ``jax.jit`` on the ``nnx.split`` state -- the shape of the trainer's step
without the optimizer update. Compilation is timed separately; throughput is
``batch_size / median step time`` over ``--steps`` timed steps after one warm-up step.

Models are the small-image 10-class variants the zoo recommends at 32 px (see each
module's docstring). The JSON records the machine's load average, because the shared
development box runs other jobs: numbers from a busy machine are lower bounds.

Usage: python benchmarks/model_throughput.py [--batch-size 32] [--steps 5]
       [--models resnet18 vit_tiny ...] [--out benchmarks/results/model_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from dsb.models import build_model
from dsb.models.layers import count_params

# name -> constructor options for 32x32 inputs.
MODELS: dict[str, dict] = {
    "mlp": {},
    "lenet5": {},
    "resnet18": {},
    "convnext_v2_atto": {"patch_size": 2, "drop_path_rate": 0.1},
    "regnet_y_400mf": {"stem_stride": 1},
    "vit_tiny": {"patch_size": 4, "drop_path_rate": 0.1},
    "swin_v2_d40": {"drop_path_rate": 0.1},
}


def measure(name: str, kwargs: dict, batch_size: int, steps: int, dtype=jnp.float32) -> dict:
    shape = (32, 32, 3)
    model = build_model(
        name, num_classes=10, input_shape=shape, rngs=nnx.Rngs(0), dtype=dtype, **kwargs
    )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    kx, ky = jax.random.split(jax.random.key(0))
    x = jax.random.uniform(kx, (batch_size, *shape))
    y = jax.random.randint(ky, (batch_size,), 0, 10)

    @jax.jit
    def step(params, rest, key):
        model = nnx.merge(graphdef, params, rest)

        def loss_fn(m):
            logits = m(x, rngs=nnx.Rngs(dropout=key))
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        # Gradients with respect to the parameters; BatchNorm statistics update in place.
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        return loss, grads, nnx.state(model, nnx.Not(nnx.Param))

    key = jax.random.key(1)
    t0 = time.perf_counter()
    compiled = step.lower(params, rest, key).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(params, rest, key))  # warm-up
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(params, rest, jax.random.fold_in(key, i)))
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {
        "model": name,
        "kwargs": kwargs,
        "dtype": jnp.dtype(dtype).name,
        "params": count_params(model),
        "batch_size": batch_size,
        "compile_s": round(compile_s, 2),
        "step_s_median": round(median, 4),
        "step_s_all": [round(t, 4) for t in times],
        "examples_per_s": round(batch_size / median, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--out", default="benchmarks/results/model_throughput.json")
    args = parser.parse_args()

    load_start = round(os.getloadavg()[0], 2)
    results = []
    for name in args.models:
        r = measure(name, MODELS[name], args.batch_size, args.steps)
        r["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
        print(
            f"{name:18s} P={r['params']:>10,d}  compile {r['compile_s']:6.1f}s  "
            f"step {r['step_s_median'] * 1e3:8.1f} ms  {r['examples_per_s']:8.1f} ex/s",
            flush=True,
        )
        results.append(r)
    record = {
        "what": "forward+backward (value_and_grad) throughput, training mode, 32x32x3, "
        "10 classes, float32",
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "jax": jax.__version__,
        "load_avg_1m_start": load_start,
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
