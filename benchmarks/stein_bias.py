"""Bias and spread of the Stein Monte Carlo R^2 (``linear_stein``, ``quadratic_stein`` of the
``poly_approx`` evaluator) on digits or MNIST, and how well its jackknife error bars track
them.

Set-up as in the evaluator: ``N(mu, Sigma)`` of the train images (float64 support: rank 61
of 64 on digits, 712 of 784 on MNIST), 2000 evaluation samples from ``key(0)`` (the
evaluator's ``seed: 0``), the Stein coefficients from ``n`` float32 draws with ``--groups``
jackknife groups; the R^2 is that of the network's logits on the evaluation samples. Each
fit-draw seed ``s`` gives ``R^2_s``:

- one hidden layer (``[512]``, ReLU, the MLP at its initialisation ``Rngs(0)``): the
  reference is the exact closed form (``mlp_approximants``, float64) on the same samples,
  so ``R^2_s - R^2_exact`` is the estimator's error;
- two hidden layers (``[512, 512]``, the ``dsb_digits`` model, ``Rngs(0)``): no closed
  form; the reference is the mean of the largest-``n`` estimates minus their mean
  jackknife bias (a Richardson-type check: the bias is O(1 / n)).

Reported per (network, approximant, n): the mean error (bias) and its standard error over
seeds, the standard deviation over seeds (spread), the mean jackknife standard error and
bias estimate, and the mean error after subtracting the jackknife bias.

    python benchmarks/stein_bias.py [--seeds 8] [--draws 2048 8192] [--groups 8]
        [--out benchmarks/results/stein_bias.json]
    python benchmarks/stein_bias.py --data mnist --nets one_hidden_512 --seeds 4 \
        --draws 2048 8192 32768 --chunk 4096    # -> benchmarks/results/stein_bias_mnist.json

MNIST (d = 784) needs the TFDS dataset (``python -m dsb.data.prepare mnist --from_idx
DIR``). There the quadratic has ~254k coefficients per logit on the rank-712 support
(digits: ~1900); at equal draws its measured bias is ~12x the digits one (bias x n is ~90
on MNIST, ~7.6 on digits). The [512, 512] reference (a jackknife-corrected estimate)
would need far more draws than its check is worth, so the MNIST command measures the
one-hidden-layer net against its exact closed form.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dsb.data.digits import digits_arrays
from dsb.data.sources import load_split
from dsb.evals.poly_approx import r2_score, stein_inputs
from dsb.models.mlp import MLP
from dsb.polyapprox import (
    gaussian_input,
    jackknife_se_bias,
    mlp_approximants,
    mlp_function,
    stein_mc_jackknife,
)

NETS = {"one_hidden_512": (512,), "two_hidden_512_512": (512, 512)}


def _train_images(data: str) -> np.ndarray:
    """The train images ``[n, h, w, 1]`` in [0, 1]."""
    if data == "digits":
        return np.asarray(digits_arrays()["train"][0])
    return np.asarray(load_split(data, "train")["image"])


def _layers(widths, input_shape):
    model = MLP(num_classes=10, input_shape=input_shape, rngs=nnx.Rngs(0), widths=widths)
    layers = [
        (
            np.asarray(lin.kernel.get_value(), np.float64).T,
            None if lin.bias is None else np.asarray(lin.bias.get_value(), np.float64),
        )
        for lin in model.layers
    ]
    return model, layers


def measure(
    seeds: int,
    draws: list[int],
    groups: int,
    num_samples: int,
    data: str = "digits",
    nets: list[str] | None = None,
    chunk: int | None = None,
) -> dict:
    x = _train_images(data)
    input_shape = x.shape[1:]
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    with jax.enable_x64(True):
        gauss = gaussian_input(jnp.asarray(x.mean(0)), jnp.asarray(np.cov(x.T)))
        x_eval = gauss.sample(jax.random.key(0), num_samples)
    out = {}
    for net in nets or list(NETS):
        widths = NETS[net]
        model, layers = _layers(widths, input_shape)
        f = np.asarray(model(jnp.asarray(x_eval, jnp.float32).reshape(-1, *input_shape)))
        g32, f32 = stein_inputs(gauss, layers)
        fn = mlp_function(f32, "relu")
        rows: dict = {}
        for n in draws:
            for s in range(seeds):
                key = jax.random.fold_in(jax.random.key(1000 + s), 1)
                with jax.enable_x64(True):
                    full, reps = stein_mc_jackknife(fn, g32, key, n, groups, chunk)
                    for i, name in enumerate(("linear", "quadratic")):
                        r2 = r2_score(f, np.asarray(full[i](x_eval)))
                        r2s = [r2_score(f, np.asarray(r[i](x_eval))) for r in reps]
                        se, bias = jackknife_se_bias(r2, r2s)
                        rows.setdefault((name, n), []).append((r2, se, bias))
        ref = {}
        if len(widths) == 1:
            with jax.enable_x64(True):
                exact = mlp_approximants(layers, gauss, "relu")
                for i, name in enumerate(("linear", "quadratic")):
                    ref[name] = r2_score(f, np.asarray(exact[i](x_eval)))
            ref_kind = "exact closed form"
        else:
            for name in ("linear", "quadratic"):
                r = np.asarray(rows[(name, max(draws))])
                ref[name] = float((r[:, 0] - r[:, 2]).mean())
            ref_kind = f"mean jackknife-corrected estimate at n = {max(draws)}"
        res = {
            "widths": list(widths),
            "d": int(x.shape[1]),
            "support_rank": gauss.rank,
            "reference": ref_kind,
            "reference_r2": ref,
            "rows": [],
        }
        for (name, n), r in sorted(rows.items()):
            r = np.asarray(r)
            err = r[:, 0] - ref[name]
            res["rows"].append(
                {
                    "approximant": f"{name}_stein",
                    "num_fit": n,
                    "seeds": len(r),
                    "mean_r2": float(r[:, 0].mean()),
                    "bias": float(err.mean()),
                    "bias_se": float(err.std(ddof=1) / np.sqrt(len(err))),
                    "spread_sd": float(r[:, 0].std(ddof=1)),
                    "jackknife_se_mean": float(r[:, 1].mean()),
                    "jackknife_bias_mean": float(r[:, 2].mean()),
                    "bias_after_jackknife_correction": float((err - r[:, 2]).mean()),
                }
            )
        out[net] = res
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--draws", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--num_samples", type=int, default=2000)
    ap.add_argument("--data", default="digits", choices=["digits", "mnist", "fashion_mnist"])
    ap.add_argument("--nets", nargs="+", choices=list(NETS), default=None)
    ap.add_argument("--chunk", type=int, default=None, help="draws per Jacobian batch")
    ap.add_argument("--out", default=None, help="default: results/stein_bias[_DATA].json")
    args = ap.parse_args()
    out = (
        args.out
        or "benchmarks/results/stein_bias"
        + ("" if args.data == "digits" else f"_{args.data}")
        + ".json"
    )
    load0 = os.getloadavg()[0]
    t0 = time.time()
    res = measure(
        args.seeds, args.draws, args.groups, args.num_samples, args.data, args.nets, args.chunk
    )
    record = {
        "command": "python benchmarks/stein_bias.py "
        + (f"--data {args.data} " if args.data != "digits" else "")
        + (f"--nets {' '.join(args.nets)} " if args.nets else "")
        + f"--seeds {args.seeds} --draws {' '.join(map(str, args.draws))} "
        f"--groups {args.groups} --num_samples {args.num_samples}"
        + (f" --chunk {args.chunk}" if args.chunk else ""),
        "groups": args.groups,
        "wall_s": round(time.time() - t0, 1),
        "load_average": [round(load0, 1), round(os.getloadavg()[0], 1)],
        "results": res,
    }
    Path(out).write_text(json.dumps(record, indent=1) + "\n")
    for net, r in res.items():
        print(net, r["reference"], r["reference_r2"])
        for row in r["rows"]:
            print(" ", {k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()})


if __name__ == "__main__":
    main()
