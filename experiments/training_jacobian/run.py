"""Reproduce the training-Jacobian analyses of Belrose & Scherlis (arXiv 2412.07003) on digits.

    python experiments/training_jacobian/run.py [--init notebook|dsb] [--cache DIR]
    python experiments/training_jacobian/run.py --notebook-check   # the notebook's own J vs dsb's
    python experiments/training_jacobian/run.py --float64-check    # float64 J vs float32

Reference setup (Belrose & Scherlis 2024, and the public notebook
EleutherAI/training-jacobian, ``experiments.ipynb``): MLP 64-GELU-10 with flax's default
tanh GELU (P = 4810) on sklearn digits / 16, 1600/197 split, 25 fixed minibatches of 64 in
the same order every epoch, SGD momentum 0.9, lr cosine 0.1 -> 0 over 625 steps, float32
training; J by dsb's chunked forward mode, SVD in float64 on the host.

``--init notebook`` (the default) starts from the notebook's theta_0 bit for bit
(``notebook_mlp_init``: linen ``lecun_normal`` kernels, ``normal(64 ** -0.5)`` biases,
linen's key derivation from ``jax.random.key(seed)``) and draws the shuffled labels,
white-noise inputs and N(0, 1) fake inputs with the notebook's keys. ``--init dsb``
starts from dsb's own MLP draw (``nnx.Rngs(seed)``, biases N(0, 0.125^2)). The full
analyses and figures are made for ``--init``; the other init gets its seed-0 headline
numbers, so ``numbers.json`` holds both side by side with the paper's.

Dense J's and SVDs are cached in ``--cache`` (gitignored, one file per init and run); a
rerun redoes only the analyses. Figures (PNG) and ``numbers.json`` go next to this file.
The study itself is ``dsb.jacobian.study``; this script parses the arguments.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from dsb.jacobian import study  # after the backend is chosen

HERE = Path(__file__).parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default="runs/training_jacobian")
    ap.add_argument("--init", choices=study.INITS, default="notebook")
    ap.add_argument(
        "--float64-check",
        action="store_true",
        help="only compare seed 0's spectrum from a float64 run with the float32 one",
    )
    ap.add_argument(
        "--notebook-check",
        action="store_true",
        help="only compare the notebook's own J (linen + jax.jacfwd) with dsb's --init notebook J",
    )
    ap.add_argument("--out", default=str(HERE), help="folder for the figures and numbers.json")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="a quick pass over the analysis code (2 values of k, 2 of eps); for testing",
    )
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    if args.float64_check:
        return study.float64_check(cache, args.init, out)
    if args.notebook_check:
        return study.notebook_check(cache, out)
    study.run_study(out, cache, args.init, smoke=args.smoke)


if __name__ == "__main__":
    main()
