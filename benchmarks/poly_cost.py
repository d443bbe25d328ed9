"""What the ``poly_approx`` evaluator costs per checkpoint at MNIST's d = 784, and how its
pieces scale with the input dimension d, the width H and the Stein draws n.

Inputs ``x ~ N(mu, Sigma)`` of the MNIST train images (float64 support, rank 712 of 784);
``d = 196`` is the same data average-pooled to 14x14 (for the d scaling). K = 10 logits,
ReLU MLPs at initialisation (``Rngs(0)``; the cost does not depend on the weights' values).
Timed, one call each after a warm-up, on the CPU the command runs on:

- ``closed_form``: the exact ``(linear, quadratic)`` coefficients of a one-hidden-layer
  MLP ``[H]`` (``mlp_approximants``, float64): ``K H d^2`` for ``M``, ``H d^2`` for
  ``W1 Sigma W1'``;
- ``stein``: the Stein Monte Carlo coefficients of ``[H, H]`` with ``G = 8`` jackknife
  replicates (``stein_mc_jackknife``, float32, Jacobians 4096 draws at a time): ``n K``
  backward passes, ``n K d^2`` for the per-group sums of ``dx J'``, ``(G + 1) K d^3`` for
  the ``G + 1`` estimates (``Sigma^+`` times a ``[K, d, d]`` array each);
- ``eval_quadratic``: one quadratic approximant on 1000 samples (``N K d^2``), float64 and
  float32; a checkpoint evaluates ``(1 + G)`` of them on ``val + gauss`` samples;
- ``eigen``: the top eigenvectors of the K whitened forms (K eigendecompositions, r^3).

Memory: ``M`` is ``K d^2`` numbers (784: 6.1e6, 49 MB in float64) per approximant; the
Stein path holds ``G K d^2`` per-group sums, ``G`` replicate forms and one Jacobian chunk
(``chunk K d``). The process's peak RSS is recorded.

    python benchmarks/poly_cost.py        # ~5 min on 2 CPU cores -> results/poly_cost.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from procmem import maxrss  # benchmarks/procmem.py (the script directory is on sys.path)

from dsb.data.sources import load_split
from dsb.evals.poly_approx import stein_inputs
from dsb.models.mlp import MLP
from dsb.polyapprox import (
    gaussian_input,
    mlp_approximants,
    mlp_function,
    quadratic_eigen,
    stein_mc_jackknife,
)

K = 10
GROUPS = 8
CHUNK = 4096


def _block(obj):
    """Wait for every array in ``obj`` (arrays, Approximants, nested tuples and lists)."""
    if isinstance(obj, (list, tuple)):
        for o in obj:
            _block(o)
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            _block(getattr(obj, f.name))
    elif isinstance(obj, jax.Array):
        obj.block_until_ready()
    return obj


def _time(fn, *args):
    t0 = time.perf_counter()
    out = _block(fn(*args))
    return time.perf_counter() - t0, out


def _layers(widths, d):
    model = MLP(num_classes=K, input_shape=(d, 1, 1), rngs=nnx.Rngs(0), widths=widths)
    return [
        (np.asarray(lin.kernel.get_value(), np.float64).T, np.asarray(lin.bias.get_value()))
        for lin in model.layers
    ]


def _gaussian(x_NxD):
    with jax.enable_x64(True):
        t, g = _time(
            lambda: gaussian_input(jnp.asarray(x_NxD.mean(0)), jnp.asarray(np.cov(x_NxD.T)))
        )
    return t, g


def measure(widths_closed, widths_stein, draws, stein_width, eval_n) -> dict:
    img = np.asarray(load_split("mnist", "train")["image"], np.float64)[..., 0]
    data = {784: img.reshape(len(img), -1), 196: img.reshape(-1, 14, 2, 14, 2).mean((2, 4))}
    data[196] = data[196].reshape(len(img), -1)
    rows = []
    for d, x in data.items():
        t_fit, gauss = _gaussian(x)
        rows.append({"piece": "gaussian_fit", "d": d, "rank": gauss.rank, "s": t_fit})
        with jax.enable_x64(True):
            x_eval = gauss.sample(jax.random.key(0), eval_n)
            _block(mlp_approximants(_layers((64,), d), gauss, "relu"))  # warm-up
            for H in widths_closed if d == 784 else [512]:
                t, (_, quad) = _time(mlp_approximants, _layers((H,), d), gauss, "relu")
                rows.append({"piece": "closed_form", "d": d, "H": H, "s": t})
            for dt in (jnp.float64, jnp.float32):
                q = dataclasses.replace(
                    quad, **{k: getattr(quad, k).astype(dt) for k in ("mu", "offset", "B", "M")}
                )
                xe = jnp.asarray(x_eval, dt)
                _block(q(xe[:8]))  # warm-up
                t, _ = _time(q, xe)
                rows.append(
                    {"piece": "eval_quadratic", "d": d, "N": eval_n, "dtype": dt.__name__, "s": t}
                )
            L = jnp.asarray(gauss.basis * jnp.sqrt(gauss.evals))
            t, _ = _time(quadratic_eigen, jnp.einsum("ia,kij,jb->kab", L, quad.M, L), 4)
            rows.append({"piece": "eigen", "d": d, "rank": gauss.rank, "s": t})
            stein_cases = [(H, n) for H in widths_stein for n in [min(draws)]]
            stein_cases += [(stein_width, n) for n in draws if n != min(draws)]
            if d != 784:
                stein_cases = [(stein_width, min(draws))]
            g32, small = stein_inputs(gauss, _layers((8, 8), d))
            warm = mlp_function(small, "relu")
            _block(stein_mc_jackknife(warm, g32, jax.random.key(1), 256, GROUPS, CHUNK))
            for H, n in stein_cases:
                fn = mlp_function(stein_inputs(gauss, _layers((H, H), d))[1], "relu")
                t, _ = _time(stein_mc_jackknife, fn, g32, jax.random.key(1), n, GROUPS, CHUNK)
                rows.append({"piece": "stein", "d": d, "H": H, "n": n, "G": GROUPS, "s": t})
        print(rows[-1], flush=True)
    return {"rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--widths_closed", type=int, nargs="+", default=[256, 512, 1024, 2048])
    ap.add_argument("--widths_stein", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--draws", type=int, nargs="+", default=[2048, 8192, 32768])
    ap.add_argument("--stein_width", type=int, default=512)
    ap.add_argument("--eval_n", type=int, default=1000)
    ap.add_argument("--out", default="benchmarks/results/poly_cost.json")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    t0 = time.time()
    res = measure(args.widths_closed, args.widths_stein, args.draws, args.stein_width, args.eval_n)
    record = {
        "command": "python benchmarks/poly_cost.py "
        f"--widths_closed {' '.join(map(str, args.widths_closed))} "
        f"--widths_stein {' '.join(map(str, args.widths_stein))} "
        f"--draws {' '.join(map(str, args.draws))} --stein_width {args.stein_width} "
        f"--eval_n {args.eval_n}",
        "cpu_count": os.cpu_count(),
        "wall_s": round(time.time() - t0, 1),
        "load_average": [round(load0, 1), round(os.getloadavg()[0], 1)],
        "peak_rss_gb": round(maxrss() / 2**30, 2),
        **res,
    }
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    for r in res["rows"]:
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()})


if __name__ == "__main__":
    main()
