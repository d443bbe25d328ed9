"""SVD attack on the closed-form linear approximant (Loftus et al., "Converting MLPs into
Polynomials in Closed Form"): project inputs off the top-k singular directions of the
linear approximant and watch the network's accuracy fall.

A one-hidden-layer MLP (64-256-10, ReLU; the depth at which the closed forms are exact)
is trained on UCI digits (Adam, full batch, float64). Under x ~ N(mu, Sigma) (the train
split's mean and rank-61 covariance) its least-squares linear approximant is
``f ~ alpha + B x`` with ``B [10, 64]`` from ``dsb.polyapprox.mlp_approximants``. With
``B = U S V'``, the input-space directions are the columns of V (the "left singular
vectors" of the paper's ``beta = B' [64, 10]``). The attack edits each test image to
``x - V_k V_k' (x - mu)`` (its component along the top-k directions replaced by the mean's)
for k = 0..10, against two controls that remove as many directions: the top-k principal
components of the data, and k random directions in the data's support (mean of 10 draws).

    python experiments/poly_approx/adversarial_svd.py --out experiments/poly_approx

writes ``adversarial_svd.png`` and ``adversarial_svd.json``. ~20 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.figure import Figure

from dsb.data.digits import digits_arrays
from dsb.polyapprox import gaussian_input, mlp_approximants, mlp_function


def train_mlp(x, y, width: int, steps: int, seed: int):
    k1, k2 = jax.random.split(jax.random.key(seed))
    d = x.shape[1]
    params = [
        (jax.random.normal(k1, (width, d)) / np.sqrt(d), jnp.zeros(width)),
        (jax.random.normal(k2, (10, width)) / np.sqrt(width), jnp.zeros(10)),
    ]
    opt = optax.adamw(3e-3, weight_decay=1e-4)
    state = opt.init(params)
    xj, yj = jnp.asarray(x), jnp.asarray(y)

    def loss(p):
        logits = jax.vmap(mlp_function(p, "relu"))(xj)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yj).mean()

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    for _ in range(steps):
        params, state = step(params, state)
    return params


def accuracy(fn, x, y) -> float:
    return float((np.asarray(jax.vmap(fn)(jnp.asarray(x))).argmax(1) == y).mean())


def project_off(x, mu, V):
    """``x - V V' (x - mu)`` for orthonormal columns V."""
    return x - (x - mu) @ V @ V.T


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="experiments/poly_approx")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)
    d = digits_arrays()
    (x, y), (xt, yt) = d["train"], d["test"]
    x = x.reshape(len(x), -1).astype(np.float64)
    xt = xt.reshape(len(xt), -1).astype(np.float64)
    params = train_mlp(x, y, args.width, args.steps, args.seed)
    fn = mlp_function(params, "relu")
    mu, cov = x.mean(0), np.cov(x.T)
    gauss = gaussian_input(jnp.asarray(mu), jnp.asarray(cov))
    lin, _ = mlp_approximants(params, gauss, "relu")
    B = np.asarray(lin.B)
    _, S, Vt = np.linalg.svd(B, full_matrices=False)
    V_svd = Vt.T  # [64, 10]: input directions, by singular value
    _, vec = np.linalg.eigh(cov)
    V_pca = vec[:, ::-1]
    basis = np.asarray(gauss.basis)
    rng = np.random.default_rng(args.seed)
    ks = list(range(0, 11))
    res = {"k": ks, "svd": [], "pca": [], "random": [], "linear_approximant_svd": []}
    for k in ks:
        res["svd"].append(accuracy(fn, project_off(xt, mu, V_svd[:, :k]), yt))
        res["linear_approximant_svd"].append(
            accuracy(lambda v: lin(v[None])[0], project_off(xt, mu, V_svd[:, :k]), yt)
        )
        res["pca"].append(accuracy(fn, project_off(xt, mu, V_pca[:, :k]), yt))
        accs = []
        for _ in range(10):
            Q, _ = np.linalg.qr(basis @ rng.standard_normal((basis.shape[1], max(k, 1))))
            accs.append(accuracy(fn, project_off(xt, mu, Q[:, :k]), yt))
        res["random"].append(float(np.mean(accs)))
    res["singular_values"] = S.tolist()
    res["clean_accuracy"] = res["svd"][0]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(ks, res["svd"], "o-", label="network: top-k SVD directions of B removed")
    ax.plot(ks, res["linear_approximant_svd"], "o:", label="linear approximant, same edit")
    ax.plot(ks, res["pca"], "s--", label="network: top-k principal components removed")
    ax.plot(ks, res["random"], "^--", label="network: k random directions removed (mean of 10)")
    ax.axhline(0.1, color="gray", ls="--", lw=1, label="chance")
    ax.set_xlabel("k (directions projected off, each test image)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("digits MLP 64-256-10: attack along the linear approximant's SVD", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "adversarial_svd.png", dpi=120)
    (out / "adversarial_svd.json").write_text(json.dumps(res, indent=1))
    print(json.dumps({k: res[k] for k in ("svd", "pca", "random")}, indent=None))
    return res


if __name__ == "__main__":
    main()
