"""Reproduce the training-Jacobian figures of Belrose & Scherlis (arXiv 2412.07003) on digits.

    python experiments/training_jacobian/run.py [--cache runs/training_jacobian] [--float64-check]

Reference setup (SCIENCE.md): MLP 64-GELU-10 (P = 4810, biases N(0, 0.125^2)) on sklearn
digits / 16, 1600/197 split, 25 fixed minibatches of 64 in the same order every epoch,
SGD momentum 0.9, lr cosine 0.1 -> 0 over 625 steps, float32 training; J by dsb's chunked
forward mode, SVD in float64 on the host. Dense J's and SVDs are cached in ``--cache``
(gitignored); figures (PNG) and ``numbers.json`` go next to this file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from flax import nnx

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from dsb.data.digits import digits_arrays
from dsb.jacobian import (
    alignment,
    bulk_counts,
    closest_to_one,
    cross_entropy_loss,
    fixed_minibatches,
    jacobian_forward,
    load_spectrum,
    make_training_run,
    max_kl,
    nnx_apply,
    ood_inputs,
    perturbation_sweep,
    random_subspace_overlap,
    reference_optimizer,
    restricted_training,
    robust_svd,
    save_spectrum,
    spectrum_regions,
    subspace_overlap,
    update_projection,
)
from dsb.models import build_model

HERE = Path(__file__).parent
REFERENCE = {
    "sigma_1": 20.5,
    "count_abs_sigma_minus_1_below": {"0.1": 2984, "0.01": 1752, "0.001": 998},
    "mean_u_dot_v_1000_closest_to_1": 0.9997,
    "seed_overlap_k1000": 0.86,
    "random_overlap_k1000": 0.40,
}


def setup(seed: int, *, variant: str = "real", dtype=jnp.float32):
    """The reference run for ``seed``; ``variant`` in real / shuffled_labels / white_noise;
    ``dtype`` of the whole run (float64 needs x64 enabled)."""
    (x, y), (x_te, y_te) = digits_arrays()["train"], digits_arrays()["test"]
    rng = np.random.default_rng(1234)
    if variant == "shuffled_labels":
        y = rng.permutation(y)
    elif variant == "white_noise":
        x = rng.uniform(size=x.shape).astype(np.float32)
    model = build_model(
        "mlp",
        num_classes=10,
        input_shape=(8, 8, 1),
        rngs=nnx.Rngs(seed),
        widths=(64,),
        activation="gelu",
        bias_init_std=0.125,
        dtype=dtype,
    )
    apply, params = nnx_apply(model)
    loss = cross_entropy_loss(apply)
    run, theta0 = make_training_run(
        loss,
        params,
        reference_optimizer(625),
        fixed_minibatches(x, y, 64),
        num_epochs=25,
        dtype=dtype,
    )
    return dict(run=run, theta0=theta0, apply=apply, loss=loss, x=x, y=y, x_te=x_te, y_te=y_te)


def spectrum(cache: Path, name: str, seed: int, variant: str, *, vectors: bool, dtype=jnp.float32):
    path = cache / f"{name}.npz"
    if path.exists():
        return load_spectrum(path)
    s = setup(seed, variant=variant, dtype=dtype)
    t0 = time.perf_counter()
    jac = np.asarray(jacobian_forward(s["run"], s["theta0"]))
    t_j = time.perf_counter() - t0
    svd = robust_svd(jac, compute_uv=vectors)
    t_svd = time.perf_counter() - t0 - t_j
    print(f"[{name}] J {t_j:.0f}s, SVD {t_svd:.0f}s, sigma_1 {svd.s[0]:.3f}", flush=True)
    save_spectrum(path, svd, save_vectors=vectors, seconds_jacobian=t_j, seconds_svd=t_svd)
    return svd


def unravel_apply(s):
    return lambda th, x: s["apply"](s["run"].unravel(th), jnp.asarray(x))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default="runs/training_jacobian")
    ap.add_argument(
        "--float64-check",
        action="store_true",
        help="only compare seed 0's spectrum from a float64 run with the float32 one",
    )
    args = ap.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    if args.float64_check:
        return float64_check(cache)
    numbers: dict = {"reference": REFERENCE}

    svd0 = spectrum(cache, "seed0", 0, "real", vectors=True)
    s, U, Vt = svd0.s, svd0.U, svd0.Vt
    p = s.size
    ref = setup(0)
    run, theta0 = ref["run"], ref["theta0"]
    theta_t = np.asarray(jax.jit(run)(theta0), np.float64)
    counts = bulk_counts(s)
    bulk1000 = closest_to_one(s, 1000)
    align = alignment(U, Vt)
    numbers["dsb"] = {
        "num_params": int(p),
        "sigma_1": float(s[0]),
        "count_abs_sigma_minus_1_below": {str(k): v for k, v in counts.items()},
        "mean_u_dot_v_1000_closest_to_1": float(align[bulk1000].mean()),
        "regions_tol_0.1": {k: len(v) for k, v in spectrum_regions(s).items()},
    }
    print(json.dumps(numbers["dsb"], indent=1), flush=True)

    # 1. Spectrum.
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].semilogy(s, lw=1)
    ax[0].axhline(1, c="k", ls=":", lw=0.8)
    ax[0].set(
        xlabel="index i", ylabel="singular value", title="Training Jacobian spectrum (seed 0)"
    )
    for k, c in zip(("chaotic", "bulk", "stable"), ("tab:red", "tab:green", "tab:blue")):
        idx = spectrum_regions(s)[k]
        if len(idx):
            ax[0].axvspan(idx.min(), idx.max(), color=c, alpha=0.12, label=f"{k} ({len(idx)})")
    ax[0].legend()
    ax[1].hist(np.log10(np.abs(s - 1) + 1e-16), bins=100)
    ax[1].set(xlabel="log10 |sigma - 1|", ylabel="count", title="distance to 1")
    fig.tight_layout()
    fig.savefig(HERE / "spectrum.png", dpi=120)

    # 2. Alignment and projection of the update.
    proj = update_projection(theta_t - np.asarray(theta0, np.float64), U, Vt)
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].plot(align, ",", alpha=0.6)
    ax[0].set(xlabel="index i", ylabel="u_i . v_i", title="alignment of singular vectors")
    ax[1].semilogy(np.abs(proj["u"]), ",", label="|u_i . (theta_T - theta_0)|")
    ax[1].set(xlabel="index i", title="update projected on left singular vectors")
    fig.tight_layout()
    fig.savefig(HERE / "alignment.png", dpi=120)
    numbers["dsb"]["update_norm_fraction_in_bulk1000"] = float(
        np.linalg.norm(proj["u"][bulk1000]) / np.linalg.norm(proj["u"])
    )

    # 3. Perturbation linearity: bulk vs top directions.
    (x_te, y_te) = ref["x_te"], ref["y_te"]
    test_batch = {"image": jnp.asarray(x_te), "label": jnp.asarray(y_te)}
    eval_loss = jax.jit(lambda th: ref["loss"](run.unravel(th), test_batch))
    eps = np.logspace(-3, 3, 7)
    dirs = {
        "top (i=0)": 0,
        "bulk (closest to 1)": int(bulk1000[0]),
        "bulk (#500)": int(bulk1000[500]),
    }
    sweeps = {
        name: perturbation_sweep(run, theta0, Vt[i], U[:, i], eps, eval_loss=eval_loss)
        for name, i in dirs.items()
    }
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for name, sw in sweeps.items():
        ax[0].semilogx(eps, sw["slope"], "o-", label=name)
        ax[1].semilogx(eps, sw["loss"], "o-", label=name)
    ax[0].set(xlabel="eps", ylabel="u_i . (theta_T(eps) - theta_T) / eps", title="linearity")
    ax[1].axhline(float(eval_loss(jnp.asarray(theta_t, theta0.dtype))), c="k", ls=":")
    ax[1].set(
        xlabel="eps", ylabel="test loss", yscale="log", title="retrained from theta_0 + eps v_i"
    )
    ax[0].legend()
    fig.tight_layout()
    fig.savefig(HERE / "perturbation.png", dpi=120)
    numbers["dsb"]["perturbation"] = {
        name: {"eps": eps.tolist(), "slope": sw["slope"].tolist(), "test_loss": sw["loss"].tolist()}
        for name, sw in sweeps.items()
    }

    # 4. KL in- vs out-of-distribution when v_i is added to theta_T.
    f = jax.jit(unravel_apply(ref))
    sets = {"train": ref["x"], "test": x_te, **ood_inputs(ref["x"])}
    th_t = jnp.asarray(theta_t, theta0.dtype)
    groups = {"bulk (50 closest to 1)": bulk1000[:50], "chaotic (top 50)": np.arange(50)}
    kl = {g: {k: [] for k in sets} for g in groups}
    for g, idx in groups.items():
        for i in idx:
            th = th_t + jnp.asarray(Vt[i], theta0.dtype)
            for k, xs in sets.items():
                kl[g][k].append(max_kl(lambda t, x: f(t, x), th_t, th, xs))
    fig, ax = plt.subplots(figsize=(7, 4))
    for j, (g, d) in enumerate(kl.items()):
        pos = np.arange(len(sets)) + (j - 0.5) * 0.35
        bp = ax.boxplot([np.maximum(d[k], 1e-12) for k in sets], positions=pos, widths=0.3)
        for el in bp["boxes"]:
            el.set_color(("tab:green", "tab:red")[j])
        ax.plot([], c=("tab:green", "tab:red")[j], label=g)
    ax.set(
        xticks=range(len(sets)),
        xticklabels=list(sets),
        yscale="log",
        ylabel="max KL(theta_T || theta_T + v_i)",
        title="in- vs out-of-distribution effect",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "kl_ood.png", dpi=120)
    numbers["dsb"]["max_kl_median"] = {
        g: {k: float(np.median(v)) for k, v in d.items()} for g, d in kl.items()
    }

    # 5. Restricted training theta = theta_0 + B p.
    ks = [10, 100, 1000, 3000]
    order_far = np.argsort(-np.abs(s - 1), kind="stable")
    rng = np.random.default_rng(0)
    bases = {
        "bulk (closest to 1)": lambda k: Vt[closest_to_one(s, k)].T,
        "complement (farthest from 1)": lambda k: Vt[order_far[:k]].T,
        "chaotic (top)": lambda k: Vt[:k].T,
        "stable (bottom)": lambda k: Vt[p - k :].T,
        "random": lambda k: np.linalg.qr(rng.standard_normal((p, k)))[0],
    }
    restricted = {name: [] for name in bases}
    for name, basis in bases.items():
        for k in ks:
            loss, _ = restricted_training(
                ref["loss"],
                run.unravel,
                theta0,
                basis(k),
                run.optimizer,
                run.batches,
                run.num_steps,
                test_batch,
            )
            restricted[name].append(float(loss))
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, v in restricted.items():
        ax.semilogx(ks, v, "o-", label=name)
    ax.axhline(float(eval_loss(theta0)), c="k", ls=":", label="at init")
    ax.axhline(float(eval_loss(th_t)), c="k", ls="--", label="full training")
    ax.set(
        xlabel="subspace dimension k", ylabel="test loss", title="training restricted to a subspace"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "restricted_training.png", dpi=120)
    numbers["dsb"]["restricted_training_test_loss"] = {"k": ks, **restricted}

    # 6. Controls and 7. seed overlap.
    sh = spectrum(cache, "shuffled_labels", 0, "shuffled_labels", vectors=False)
    wn = spectrum(cache, "white_noise", 0, "white_noise", vectors=False)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, sv in (("real", s), ("shuffled labels", sh.s), ("white-noise inputs", wn.s)):
        ax.semilogy(sv, lw=1, label=f"{name}: #|s-1|<0.1 = {bulk_counts(sv)[0.1]}")
    ax.axhline(1, c="k", ls=":", lw=0.8)
    ax.set(xlabel="index i", ylabel="singular value", title="controls (seed 0)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "controls.png", dpi=120)
    numbers["dsb"]["controls"] = {
        "shuffled_labels": {
            "sigma_1": float(sh.s[0]),
            "counts": {str(k): v for k, v in bulk_counts(sh.s).items()},
        },
        "white_noise": {
            "sigma_1": float(wn.s[0]),
            "counts": {str(k): v for k, v in bulk_counts(wn.s).items()},
        },
    }

    svd1 = spectrum(cache, "seed1", 1, "real", vectors=True)
    kk = [100, 500, 1000, 2000, 3000, 4000]
    ov, rnd, rnd_sq = [], [], []
    for k in kk:
        a = Vt[closest_to_one(s, k)].T
        b = svd1.Vt[closest_to_one(svd1.s, k)].T
        ov.append(subspace_overlap(a, b))
        m, e = random_subspace_overlap(p, k, num_samples=1, seed=k)
        rnd.append(m)
        rnd_sq.append(e)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(kk, ov, "o-", label="bulk of seed 0 vs seed 1")
    ax.plot(kk, rnd, "s--", label="random k-subspaces")
    ax.set(
        xlabel="k (directions closest to 1)",
        ylabel="mean principal cosine",
        title="seed overlap of bulk subspaces",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "seed_overlap.png", dpi=120)
    numbers["dsb"]["seed_overlap"] = {
        "k": kk,
        "bulk": ov,
        "random": rnd,
        "random_expected_mean_cos_sq": rnd_sq,
    }
    numbers["dsb"]["seed_overlap_k1000"] = ov[kk.index(1000)]
    numbers["dsb"]["random_overlap_k1000"] = rnd[kk.index(1000)]
    numbers["dsb"]["seed1"] = {
        "sigma_1": float(svd1.s[0]),
        "counts": {str(k): v for k, v in bulk_counts(svd1.s).items()},
    }
    (HERE / "numbers.json").write_text(json.dumps(numbers, indent=1))
    print(json.dumps(numbers["dsb"], indent=1))


def float64_check(cache: Path) -> None:
    """Seed 0's J from a float64 run against the float32 one: how much of the bulk count
    is float32 rounding. Adds ``float64_check`` to ``numbers.json``."""
    jax.config.update("jax_enable_x64", True)
    s32 = spectrum(cache, "seed0", 0, "real", vectors=True).s
    s64 = spectrum(cache, "seed0_float64", 0, "real", vectors=False, dtype=jnp.float64).s
    c32, c64 = bulk_counts(s32), bulk_counts(s64)
    check = {
        "sigma_1": {"float32": float(s32[0]), "float64": float(s64[0])},
        "count_abs_sigma_minus_1_below": {
            str(k): {"float32": c32[k], "float64": c64[k]} for k in c32
        },
        "max_abs_diff_sorted_singular_values": float(np.abs(s32 - s64).max()),
        "median_abs_diff_sorted_singular_values": float(np.median(np.abs(s32 - s64))),
    }
    path = HERE / "numbers.json"
    numbers = json.loads(path.read_text()) if path.exists() else {}
    numbers["float64_check"] = check
    path.write_text(json.dumps(numbers, indent=1))
    print(json.dumps(check, indent=1))


if __name__ == "__main__":
    main()
