"""Reproduce the training-Jacobian analyses of Belrose & Scherlis (arXiv 2412.07003) on digits.

    python experiments/training_jacobian/run.py [--init notebook|dsb] [--cache DIR]
    python experiments/training_jacobian/run.py --notebook-check   # the notebook's own J vs dsb's
    python experiments/training_jacobian/run.py --float64-check    # float64 J vs float32

Reference setup (SCIENCE.md, and the public notebook EleutherAI/training-jacobian,
``experiments.ipynb``): MLP 64-GELU-10 with flax's default tanh GELU (P = 4810) on
sklearn digits / 16, 1600/197 split, 25 fixed minibatches of 64 in the same order every
epoch, SGD momentum 0.9, lr cosine 0.1 -> 0 over 625 steps, float32 training; J by dsb's
chunked forward mode, SVD in float64 on the host.

``--init notebook`` (the default) starts from the notebook's theta_0 bit for bit
(``notebook_mlp_init``: linen ``lecun_normal`` kernels, ``normal(64 ** -0.5)`` biases,
linen's key derivation from ``jax.random.key(seed)``) and draws the shuffled labels,
white-noise inputs and N(0, 1) fake inputs with the notebook's keys. ``--init dsb``
starts from dsb's own MLP draw (``nnx.Rngs(seed)``, biases N(0, 0.125^2)). The full
analyses and figures are made for ``--init``; the other init gets its seed-0 headline
numbers, so ``numbers.json`` holds both side by side with the paper's.

Dense J's and SVDs are cached in ``--cache`` (gitignored, one file per init and run); a
rerun redoes only the analyses. Figures (PNG) and ``numbers.json`` go next to this file.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
import yaml
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
    max_kl_directions,
    nnx_apply,
    notebook_mlp_init,
    perturbation_sweep,
    random_subspace_overlap,
    reference_optimizer,
    restricted_training,
    robust_svd,
    save_spectrum,
    spectrum_regions,
    update_projection,
)
from dsb.jacobian.dense import SVDResult
from dsb.models import build_model

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
# Rounded values read off the paper (arXiv 2412.07003).
PAPER = {
    "sigma_1": 20.5,
    "count_abs_sigma_minus_1_below": {"0.1": 2984, "0.01": 1752, "0.001": 998},
    "mean_u_dot_v_1000_closest_to_1": 0.9997,
    "seed_overlap_k1000": 0.86,
    "random_overlap_k1000": 0.40,
}
INITS = ("notebook", "dsb")
NUM_STEPS = 625
REGION_COLORS = {"chaotic": "tab:red", "bulk": "tab:green", "stable": "tab:blue"}


def checkpoint_steps() -> list[int]:
    """The ``when`` list of the ``jacobian_digits`` experiment's training_jacobian hook."""
    cfg = yaml.safe_load((ROOT / "conf/experiment/jacobian_digits.yaml").read_text())
    return [int(t) for t in cfg["evals"]["jac"]["when"]]


def setup(
    seed: int,
    *,
    variant: str = "real",
    init: str = "notebook",
    opt: str = "sgd",
    dtype=jnp.float32,
):
    """The reference run for ``seed``; ``variant`` in real / shuffled_labels / white_noise;
    ``init`` in notebook / dsb; ``opt`` sgd (the reference) or adam (the notebook's
    variant: lr cosine 3e-3 -> 0, ``eps_root=1e-8``); ``dtype`` of the whole run (float64
    needs x64 enabled)."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    (x, y), (x_te, y_te) = digits_arrays()["train"], digits_arrays()["test"]
    if init == "notebook":  # the notebook's controls: both drawn from jax.random.key(1)
        key = jax.random.key(1)
        if variant == "shuffled_labels":
            y = np.asarray(jax.random.permutation(key, jnp.asarray(y)))
        elif variant == "white_noise":
            flat = jax.random.uniform(key, (len(x), int(np.prod(x.shape[1:]))))
            x = np.asarray(flat).reshape(x.shape)
    else:
        rng = np.random.default_rng(1234)
        if variant == "shuffled_labels":
            y = rng.permutation(y)
        elif variant == "white_noise":
            x = rng.uniform(size=x.shape).astype(np.float32)
    if variant not in ("real", "shuffled_labels", "white_noise"):
        raise ValueError(f"unknown variant {variant!r}")
    model = build_model(
        "mlp",
        num_classes=10,
        input_shape=(8, 8, 1),
        rngs=nnx.Rngs(seed),
        widths=(64,),
        activation="gelu_tanh",
        bias_init_std=0.125,
        dtype=dtype,
    )
    if init == "notebook":
        notebook_mlp_init(model, seed)
    if opt == "sgd":
        tx = reference_optimizer(NUM_STEPS)
    elif opt == "adam":
        tx = optax.adam(optax.cosine_decay_schedule(3e-3, NUM_STEPS), eps_root=1e-8)
    else:
        raise ValueError(f"opt must be sgd or adam, got {opt!r}")
    apply, params = nnx_apply(model)
    loss = cross_entropy_loss(apply)
    run, theta0 = make_training_run(
        loss, params, tx, fixed_minibatches(x, y, 64), num_epochs=25, dtype=dtype
    )
    return dict(run=run, theta0=theta0, apply=apply, loss=loss, x=x, y=y, x_te=x_te, y_te=y_te)


def spectrum(
    cache: Path,
    init: str,
    name: str,
    seed: int,
    variant: str = "real",
    *,
    vectors: bool,
    opt: str = "sgd",
    steps: int | None = None,
    dtype=jnp.float32,
) -> SVDResult:
    """SVD of the dense J of one run, from ``cache/<init>-<name>.npz`` when there."""
    path = cache / f"{init}-{name}.npz"
    if path.exists():
        return load_spectrum(path)
    s = setup(seed, variant=variant, init=init, opt=opt, dtype=dtype)
    run = s["run"] if steps is None else s["run"].with_steps(steps)
    t0 = time.perf_counter()
    jac = np.asarray(jacobian_forward(run, s["theta0"]))
    t_j = time.perf_counter() - t0
    svd = robust_svd(jac, compute_uv=vectors)
    t_svd = time.perf_counter() - t0 - t_j
    print(f"[{init}-{name}] J {t_j:.0f}s, SVD {t_svd:.0f}s, sigma_1 {svd.s[0]:.3f}", flush=True)
    save_spectrum(path, svd, save_vectors=vectors, seconds_jacobian=t_j, seconds_svd=t_svd)
    return svd


def headline(svd: SVDResult) -> dict:
    """sigma_1, the bulk counts and the mean u.v over the 1000 values closest to 1."""
    s = svd.s
    out = {
        "num_params": int(s.size),
        "sigma_1": float(s[0]),
        "count_abs_sigma_minus_1_below": {str(k): v for k, v in bulk_counts(s).items()},
        "regions_tol_0.1": {k: len(v) for k, v in spectrum_regions(s).items()},
    }
    if svd.U is not None:
        out["mean_u_dot_v_1000_closest_to_1"] = float(
            alignment(svd.U, svd.Vt)[closest_to_one(s, 1000)].mean()
        )
    return out


def rows_overlap(va_KxP: np.ndarray, vb_LxP: np.ndarray) -> float:
    """``subspace_overlap`` for row sets that are already orthonormal (right singular
    vectors): the mean of the singular values of ``Va Vb^T``, in float32, no QR. A set
    of all ``P`` rows spans R^P, which contains the other: every cosine is 1."""
    if va_KxP.shape[0] == va_KxP.shape[1] or vb_LxP.shape[0] == vb_LxP.shape[1]:
        return 1.0
    m = va_KxP.astype(np.float32) @ vb_LxP.astype(np.float32).T
    return float(np.clip(np.linalg.svd(m, compute_uv=False), 0, 1).mean())


def shade_regions(ax, s):
    for k, c in REGION_COLORS.items():
        idx = spectrum_regions(s)[k]
        if len(idx):
            ax.axvspan(idx.min(), idx.max(), color=c, alpha=0.12, label=f"{k} ({len(idx)})")


def unravel_apply(s):
    return lambda th, x: s["apply"](s["run"].unravel(th), jnp.asarray(x))


def main():
    global HERE
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default="runs/training_jacobian")
    ap.add_argument("--init", choices=INITS, default="notebook")
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
    HERE = Path(args.out)
    HERE.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    if args.float64_check:
        return float64_check(cache, args.init)
    if args.notebook_check:
        return notebook_check(cache)
    smoke = args.smoke
    t_start = time.perf_counter()
    init = args.init
    path = HERE / "numbers.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    numbers: dict = {"paper": PAPER}
    if "notebook_check" in old:
        numbers["notebook_check"] = old["notebook_check"]

    svd0 = spectrum(cache, init, "seed0", 0, vectors=True)
    s, U, Vt = svd0.s, svd0.U, svd0.Vt
    p = s.size
    ref = setup(0, init=init)
    run, theta0 = ref["run"], ref["theta0"]
    theta_t = np.asarray(jax.jit(run)(theta0), np.float64)
    bulk1000 = closest_to_one(s, 1000)
    align = alignment(U, Vt)
    regions = spectrum_regions(s)
    out = numbers[init] = headline(svd0)

    def save():  # after every stage, so that an interrupted run keeps what it has
        path.write_text(json.dumps(numbers, indent=1))

    print(json.dumps(out, indent=1), flush=True)

    # 1. Spectrum.
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].semilogy(s, lw=1)
    ax[0].axhline(1, c="k", ls=":", lw=0.8)
    ax[0].set(
        xlabel="index i", ylabel="singular value", title=f"Training Jacobian spectrum ({init} init)"
    )
    shade_regions(ax[0], s)
    ax[0].legend()
    ax[1].hist(np.log10(np.abs(s - 1) + 1e-16), bins=100)
    ax[1].set(xlabel="log10 |sigma - 1|", ylabel="count", title="distance to 1")
    fig.tight_layout()
    fig.savefig(HERE / "spectrum.png", dpi=120)
    plt.close(fig)

    # 2. Alignment and projection of the update.
    proj = update_projection(theta_t - np.asarray(theta0, np.float64), U, Vt)
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].plot(align, ",", alpha=0.6)
    ax[0].set(xlabel="index i", ylabel="u_i . v_i", title="alignment of singular vectors")
    ax[1].semilogy(np.abs(proj["u"]), ",", label="|u_i . (theta_T - theta_0)|")
    ax[1].set(xlabel="index i", title="update projected on left singular vectors")
    fig.tight_layout()
    fig.savefig(HERE / "alignment.png", dpi=120)
    plt.close(fig)
    out["update_norm_fraction_in_bulk1000"] = float(
        np.linalg.norm(proj["u"][bulk1000]) / np.linalg.norm(proj["u"])
    )

    # 3. Perturbation linearity: bulk vs top directions.
    (x_te, y_te) = ref["x_te"], ref["y_te"]
    test_batch = {"image": jnp.asarray(x_te), "label": jnp.asarray(y_te)}
    eval_loss = jax.jit(lambda th: ref["loss"](run.unravel(th), test_batch))
    eps = np.logspace(-3, 3, 2 if smoke else 7)
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
    plt.close(fig)
    out["perturbation"] = {
        name: {"eps": eps.tolist(), "slope": sw["slope"].tolist(), "test_loss": sw["loss"].tolist()}
        for name, sw in sweeps.items()
    }
    print(f"[{time.perf_counter() - t_start:.0f}s] perturbation done", flush=True)

    save()

    # 4. KL when v_i (every one of the P right singular vectors) is added to theta_T, on
    # train, test, N(0, 1) fake inputs shaped like the test set (the notebook's
    # jax.random.normal(key(0), ...)) and inverted test inputs 1 - x.
    f = unravel_apply(ref)
    fake = np.asarray(jax.random.normal(jax.random.key(0), (len(x_te), 64))).reshape(x_te.shape)
    sets = {"train": ref["x"], "test": x_te, "fake N(0,1)": fake, "inverted 1-x": 1.0 - x_te}
    th_t = jnp.asarray(theta_t, theta0.dtype)
    kl = {k: max_kl_directions(f, th_t, Vt, xs) for k, xs in sets.items()}
    fig, axs = plt.subplots(2, 2, figsize=(11, 7), sharex=True, sharey=True)
    for ax, (k, v) in zip(axs.flat, kl.items()):
        ax.scatter(np.arange(p), np.maximum(v, 1e-12), s=2, alpha=0.3, c="k", lw=0)
        shade_regions(ax, s)
        ax.set(yscale="log", ylim=(1e-10, 10), title=k)
    axs[0, 0].legend(fontsize=8, loc="lower left")
    for ax in axs[1]:
        ax.set_xlabel("singular vector index i")
    for ax in axs[:, 0]:
        ax.set_ylabel("max KL(theta_T || theta_T + v_i)")
    fig.suptitle("Effect of adding each right singular vector to theta_T (floored at 1e-12)")
    fig.tight_layout()
    fig.savefig(HERE / "kl_all_directions.png", dpi=120)
    plt.close(fig)
    out["max_kl_median_by_region"] = {
        r: {k: float(np.median(v[idx])) if len(idx) else None for k, v in kl.items()}
        for r, idx in regions.items()
    }
    print(f"[{time.perf_counter() - t_start:.0f}s] KL done", flush=True)

    save()

    # 5. Restricted training theta = theta_0 + B p: the notebook's 20 values of k.
    ks = [int(k) for k in np.linspace(100, p, 2 if smoke else 20).astype(int)]
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
    for k in ks:
        for name, basis in bases.items():
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
        print(f"[{time.perf_counter() - t_start:.0f}s] restricted k={k}", flush=True)
    fig, ax = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    groups = (
        ("bulk (closest to 1)", "complement (farthest from 1)", "random"),
        ("chaotic (top)", "stable (bottom)", "random"),
    )
    for a, names in zip(ax, groups):
        for name in names:
            a.plot(ks, restricted[name], "o-", ms=3, label=name)
        a.axhline(float(eval_loss(theta0)), c="k", ls=":", label="at init")
        a.axhline(float(eval_loss(th_t)), c="k", ls="--", label="full training")
        a.set(xlabel="subspace dimension k", yscale="log")
        a.legend(fontsize=8)
    ax[0].set(ylabel="test loss (nats)")
    fig.suptitle("Training restricted to theta_0 + B p, B = k right singular vectors")
    fig.tight_layout()
    fig.savefig(HERE / "restricted_training.png", dpi=120)
    plt.close(fig)
    out["restricted_training_test_loss"] = {"k": ks, **restricted}

    save()

    # 6. J forming across training: the jacobian_digits hook's checkpoints, replayed.
    steps = checkpoint_steps()
    evo = {}
    for t in steps:
        if t == 0:  # theta_0 -> theta_0: J = I exactly
            evo[t] = SVDResult(s=np.ones(p), U=np.eye(p), Vt=np.eye(p))
        elif t == run.num_steps:
            evo[t] = svd0
        else:
            evo[t] = spectrum(cache, init, f"t{t}", 0, vectors=True, steps=t)
    evolution = {"t": steps, "sigma_1": [], "chaotic": [], "bulk": [], "stable": []}
    for t in steps:
        evolution["sigma_1"].append(float(evo[t].s[0]))
        for r, idx in spectrum_regions(evo[t].s).items():
            evolution[r].append(len(idx))
    evolution["counts_abs_sigma_minus_1_below"] = [
        {str(k): v for k, v in bulk_counts(evo[t].s).items()} for t in steps
    ]
    evolution["bulk_overlap_consecutive"] = []
    for a, b in itertools.pairwise(steps):
        ba, bb = spectrum_regions(evo[a].s)["bulk"], spectrum_regions(evo[b].s)["bulk"]
        evolution["bulk_overlap_consecutive"].append(rows_overlap(evo[a].Vt[ba], evo[b].Vt[bb]))
    out["evolution"] = evolution
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.2))
    cmap = plt.get_cmap("viridis")
    for j, t in enumerate(steps):
        ax[0].semilogy(evo[t].s, lw=1, color=cmap(j / max(1, len(steps) - 1)), label=f"t = {t}")
    ax[0].axhline(1, c="k", ls=":", lw=0.8)
    ax[0].set(xlabel="index i", ylabel="singular value", title="spectrum of d theta_t / d theta_0")
    ax[0].legend(fontsize=8)
    pos = np.arange(len(steps))
    for r, c in REGION_COLORS.items():
        ax[1].plot(pos, evolution[r], "o-", c=c, label=f"{r} (|s-1| tol 0.1)")
    ax[1].set(xticks=pos, xticklabels=steps, xlabel="step t", ylabel="count")
    a2 = ax[1].twinx()
    a2.plot(pos, evolution["sigma_1"], "k^--", label="sigma_1")
    a2.set(ylabel="sigma_1", yscale="log")
    ax[1].legend(fontsize=8, loc="center left")
    a2.legend(fontsize=8, loc="center right")
    ax[1].set_title("regions and sigma_1 against t")
    ax[2].plot(pos[1:], evolution["bulk_overlap_consecutive"], "o-")
    ax[2].set(
        xticks=pos[1:],
        xticklabels=[f"{a}->{b}" for a, b in itertools.pairwise(steps)],
        ylabel="mean principal cosine",
        title="bulk (|s-1|<0.1) overlap, consecutive t",
    )
    fig.tight_layout()
    fig.savefig(HERE / "training_evolution.png", dpi=120)
    plt.close(fig)

    save()

    # 7. Controls (the notebook's shuffled labels and white-noise inputs) and Adam.
    ctrl = {
        "shuffled_labels": spectrum(
            cache, init, "shuffled_labels", 0, "shuffled_labels", vectors=False
        ),
        "white_noise": spectrum(cache, init, "white_noise", 0, "white_noise", vectors=False),
        "adam": spectrum(cache, init, "adam", 0, vectors=False, opt="adam"),
    }
    labels = {
        "shuffled_labels": "shuffled labels",
        "white_noise": "white-noise inputs",
        "adam": "Adam (lr 3e-3 cosine)",
    }
    fig, ax = plt.subplots(1, 2, figsize=(12, 4))
    for name, sv in (("real (SGD)", s), *((labels[k], v.s) for k, v in ctrl.items())):
        lab = f"{name}: sigma_1 {sv[0]:.1f}, #|s-1|<0.1 = {bulk_counts(sv)[0.1]}"
        ax[0].semilogy(sv, lw=1, label=lab)
        ax[1].semilogy(np.abs(sv - 1), lw=1, label=name)
    ax[0].axhline(1, c="k", ls=":", lw=0.8)
    ax[0].set(xlabel="index i", ylabel="singular value", title=f"controls ({init} init, seed 0)")
    ax[1].set(xlabel="index i", ylabel="|sigma_i - 1|", title="distance from 1")
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "controls.png", dpi=120)
    plt.close(fig)
    out["controls"] = {k: headline(v) for k, v in ctrl.items()}

    save()

    # 8. Seed overlap.
    svd1 = spectrum(cache, init, "seed1", 1, vectors=True)
    kk = [100, 500, 1000, 2000, 3000, 4000]
    ov, rnd, rnd_sq = [], [], []
    for k in kk:
        ov.append(rows_overlap(Vt[closest_to_one(s, k)], svd1.Vt[closest_to_one(svd1.s, k)]))
        m, e = random_subspace_overlap(p, k, num_samples=1, seed=k)
        rnd.append(m)
        rnd_sq.append(e)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(kk, ov, "o-", label="bulk of seed 0 vs seed 1")
    ax.plot(kk, rnd, "s--", label="random k-subspaces")
    ax.set(
        xlabel="k (directions closest to 1)",
        ylabel="mean principal cosine",
        title=f"seed overlap of bulk subspaces ({init} init)",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "seed_overlap.png", dpi=120)
    plt.close(fig)
    out["seed_overlap"] = {
        "k": kk,
        "bulk": ov,
        "random": rnd,
        "random_expected_mean_cos_sq": rnd_sq,
    }
    out["seed_overlap_k1000"] = ov[kk.index(1000)]
    out["random_overlap_k1000"] = rnd[kk.index(1000)]
    out["seed1"] = headline(svd1)

    save()

    # The other init's headline numbers, beside these.
    other = INITS[1 - INITS.index(init)]
    numbers[other] = headline(spectrum(cache, other, "seed0", 0, vectors=True))
    numbers[other]["note"] = "seed-0 headline only; run.py --init " + other + " for the rest"
    save()

    out["seconds_total_this_run"] = time.perf_counter() - t_start
    path.write_text(json.dumps(numbers, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "perturbation"}, indent=1))


def _merge_numbers(key: str, value: dict) -> None:
    path = HERE / "numbers.json"
    numbers = json.loads(path.read_text()) if path.exists() else {}
    numbers[key] = value
    path.write_text(json.dumps(numbers, indent=1))
    print(json.dumps(value, indent=1))


def float64_check(cache: Path, init: str) -> None:
    """Seed 0's J from a float64 run against the float32 one: how much of the bulk count
    is float32 rounding. Adds ``float64_check`` to ``numbers.json``."""
    jax.config.update("jax_enable_x64", True)
    s32 = spectrum(cache, init, "seed0", 0, vectors=True).s
    s64 = spectrum(cache, init, "seed0_float64", 0, vectors=False, dtype=jnp.float64).s
    c32, c64 = bulk_counts(s32), bulk_counts(s64)
    _merge_numbers(
        "float64_check",
        {
            "init": init,
            "sigma_1": {"float32": float(s32[0]), "float64": float(s64[0])},
            "count_abs_sigma_minus_1_below": {
                str(k): {"float32": c32[k], "float64": c64[k]} for k in c32
            },
            "max_abs_diff_sorted_singular_values": float(np.abs(s32 - s64).max()),
            "median_abs_diff_sorted_singular_values": float(np.median(np.abs(s32 - s64))),
        },
    )


def notebook_check(cache: Path) -> None:
    """The notebook's own computation, written here with flax linen the way the notebook
    does it (linen MLP + ``nn.gelu``, ``model.init(jax.random.key(0), X_train)``, flat
    parameters in a ``TrainState``, epochs x batches ``lax.scan``, ``jax.jacfwd`` of the
    whole run, ``jnp.linalg.svd``), against dsb's cached ``--init notebook`` J. Adds
    ``notebook_check`` to ``numbers.json``."""
    from flax import linen as nn
    from flax.training.train_state import TrainState
    from jax.flatten_util import ravel_pytree

    class LinenMLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            init = nn.initializers.normal(stddev=64**-0.5)
            x = nn.gelu(nn.Dense(64, bias_init=init)(x))
            return nn.Dense(10, bias_init=init)(x)

    (x, y) = digits_arrays()["train"]
    x = x.reshape(len(x), 64)
    lmodel = LinenMLP()
    flat0, unravel = ravel_pytree(lmodel.init(jax.random.key(0), x))
    xb, yb = jnp.reshape(x, (-1, 64, 64)), jnp.reshape(y, (-1, 64))
    tx = optax.sgd(optax.cosine_decay_schedule(0.1, NUM_STEPS), momentum=0.9)

    def loss(params, xs, ys):
        logits = lmodel.apply(unravel(params["p"]), xs)
        return optax.softmax_cross_entropy_with_integer_labels(logits, ys).mean()

    def train(flat):
        state = TrainState.create(apply_fn=None, params={"p": flat}, tx=tx)

        def step(st, b):
            return st.apply_gradients(grads=jax.grad(loss)(st.params, *b)), None

        def epoch(st, _):
            return jax.lax.scan(step, st, (xb, yb))[0], None

        return jax.lax.scan(epoch, state, jnp.arange(25))[0].params["p"]

    dsb = setup(0, init="notebook")
    t0 = time.perf_counter()
    theta_t_nb = np.asarray(jax.jit(train)(flat0))
    theta_t = np.asarray(jax.jit(dsb["run"])(dsb["theta0"]))
    s_nb = np.asarray(jnp.linalg.svd(jax.jit(jax.jacfwd(train))(flat0), compute_uv=False))
    t_nb = time.perf_counter() - t0
    s = spectrum(cache, "notebook", "seed0", 0, vectors=True).s
    c_nb, c = bulk_counts(s_nb), bulk_counts(s)
    diff = np.abs(s - s_nb.astype(np.float64))
    _merge_numbers(
        "notebook_check",
        {
            "theta0_bit_identical": bool(np.array_equal(np.asarray(dsb["theta0"]), flat0)),
            "theta_T_max_abs_diff": float(np.abs(theta_t - theta_t_nb).max()),
            "theta_T_rel_diff": float(
                np.linalg.norm(theta_t - theta_t_nb) / np.linalg.norm(theta_t_nb)
            ),
            "sigma_1": {"notebook": float(s_nb[0]), "dsb": float(s[0])},
            "count_abs_sigma_minus_1_below": {
                str(k): {"notebook": c_nb[k], "dsb": c[k]} for k in c
            },
            "max_abs_diff_sorted_singular_values": float(diff.max()),
            "max_rel_diff_sorted_singular_values": float((diff / s).max()),
            "seconds_notebook_jacfwd_and_svd": t_nb,
        },
    )


if __name__ == "__main__":
    main()
