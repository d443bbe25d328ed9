"""The training-Jacobian study of Belrose & Scherlis (2024, arXiv 2412.07003) on digits.

The reference run (``reference_run``) from the public notebook's exact theta_0
(EleutherAI/training-jacobian, ``experiments.ipynb``; ``init="notebook"``) or dsb's own
draw (``init="dsb"``), its controls (the notebook's shuffled labels and white-noise inputs,
and its Adam variant), dense J's and their SVDs cached on disk (``spectrum``), the headline
numbers (``headline``) and the analyses and figures of ``experiments/training_jacobian``:

* ``run_study``: spectrum, alignment, perturbation, KL of every direction, restricted
  training, J forming across training, controls, seed overlap; each stage a function
  (``stage_*``) that adds its numbers and writes its figure, ``numbers.json`` saved after
  each.
* ``float64_check``: how much of the bulk count is float32 rounding.
* ``notebook_check``: the notebook's own computation (linen, ``TrainState``,
  ``jax.jacfwd``) against dsb's J.

Figures are drawn with ``matplotlib.pyplot``; the caller chooses the backend.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dsb.jacobian.dense import SVDResult, jacobian_forward, load_spectrum, robust_svd
from dsb.jacobian.dense import save_spectrum as save_svd
from dsb.jacobian.directions import (
    alignment,
    bulk_counts,
    closest_to_one,
    max_kl_directions,
    perturbation_sweep,
    random_subspace_overlap,
    restricted_training,
    spectrum_regions,
    update_projection,
)
from dsb.jacobian.training import reference_optimizer, reference_run

__all__ = [
    "INITS",
    "NUM_STEPS",
    "PAPER",
    "Study",
    "checkpoint_steps",
    "control_data",
    "float64_check",
    "headline",
    "merge_numbers",
    "notebook_check",
    "rows_overlap",
    "run_study",
    "setup",
    "spectrum",
]

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
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def checkpoint_steps(conf_dir: Path = CONF_DIR) -> list[int]:
    """The ``when`` list of the ``jacobian_digits`` experiment's ``training_jacobian``
    evaluator."""
    import yaml

    cfg = yaml.safe_load((Path(conf_dir) / "experiment/jacobian_digits.yaml").read_text())
    return [int(t) for t in cfg["evals"]["jac"]["when"]]


def control_data(variant: str, init: str) -> tuple[np.ndarray, np.ndarray]:
    """The digits train split ``(x, y)`` for ``variant`` in real / shuffled_labels /
    white_noise: with ``init="notebook"`` the notebook's controls (both drawn from
    ``jax.random.key(1)``), with ``init="dsb"`` from ``np.random.default_rng(1234)``."""
    from dsb.data.digits import digits_arrays

    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    x, y = digits_arrays()["train"]
    if init == "notebook":
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
    return x, y


def setup(
    seed: int,
    *,
    variant: str = "real",
    init: str = "notebook",
    opt: str = "sgd",
    dtype=jnp.float32,
) -> dict[str, Any]:
    """The reference run for ``seed`` (``reference_run``) on ``control_data(variant,
    init)``; ``opt`` sgd (the reference) or adam (the notebook's variant: lr cosine 3e-3 ->
    0, ``eps_root=1e-8``); ``dtype`` of the whole run (float64 needs x64 enabled). Returns
    ``run``, ``theta0``, ``apply``, ``loss`` and the train (``x``, ``y``) and test
    (``x_te``, ``y_te``) arrays."""
    from dsb.data.digits import digits_arrays

    x, y = control_data(variant, init)
    x_te, y_te = digits_arrays()["test"]
    if opt == "sgd":
        tx = reference_optimizer(NUM_STEPS)
    elif opt == "adam":
        tx = optax.adam(optax.cosine_decay_schedule(3e-3, NUM_STEPS), eps_root=1e-8)
    else:
        raise ValueError(f"opt must be sgd or adam, got {opt!r}")
    run, theta0, apply = reference_run(
        seed,
        num_steps=NUM_STEPS,
        dtype=dtype,
        init=init,
        data=(x, y),
        optimizer=tx,
        with_apply=True,
    )
    return dict(
        run=run, theta0=theta0, apply=apply, loss=run.loss_fn, x=x, y=y, x_te=x_te, y_te=y_te
    )


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
    save_svd(path, svd, save_vectors=vectors, seconds_jacobian=t_j, seconds_svd=t_svd)
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
    """Shade the chaotic, bulk and stable index ranges of ``s`` on ``ax``."""
    for k, c in REGION_COLORS.items():
        idx = spectrum_regions(s)[k]
        if len(idx):
            ax.axvspan(idx.min(), idx.max(), color=c, alpha=0.12, label=f"{k} ({len(idx)})")


def unravel_apply(s):
    """``(theta [P], x) -> logits`` of the run ``s`` (a ``setup`` dict)."""
    return lambda th, x: s["apply"](s["run"].unravel(th), jnp.asarray(x))


@dataclasses.dataclass
class Study:
    """What the stages of ``run_study`` share: the seed-0 run of ``init`` (``ref``, a
    ``setup`` dict), its SVD, ``theta_T``, the test batch and loss, and ``numbers`` (the
    whole ``numbers.json``) with ``out = numbers[init]``, saved by ``save``."""

    init: str
    out_dir: Path
    cache: Path
    smoke: bool
    numbers: dict
    svd0: SVDResult
    ref: dict
    theta_t: np.ndarray
    t_start: float

    @property
    def out(self) -> dict:
        return self.numbers[self.init]

    @property
    def s(self) -> np.ndarray:
        return self.svd0.s

    @property
    def p(self) -> int:
        return self.svd0.s.size

    @property
    def run(self):
        return self.ref["run"]

    @property
    def theta0(self) -> jax.Array:
        return self.ref["theta0"]

    @property
    def test_batch(self) -> dict:
        return {"image": jnp.asarray(self.ref["x_te"]), "label": jnp.asarray(self.ref["y_te"])}

    def save(self) -> None:
        """Write ``numbers`` to ``out_dir/numbers.json``."""
        (self.out_dir / "numbers.json").write_text(json.dumps(self.numbers, indent=1))

    def savefig(self, fig, name: str) -> None:
        import matplotlib.pyplot as plt

        fig.tight_layout()
        fig.savefig(self.out_dir / name, dpi=120)
        plt.close(fig)

    def log(self, what: str) -> None:
        print(f"[{time.perf_counter() - self.t_start:.0f}s] {what}", flush=True)


def stage_spectrum(st: Study) -> None:
    """1. The spectrum with its regions, and the histogram of ``log10 |s - 1|``."""
    import matplotlib.pyplot as plt

    s = st.s
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].semilogy(s, lw=1)
    ax[0].axhline(1, c="k", ls=":", lw=0.8)
    ax[0].set(
        xlabel="index i",
        ylabel="singular value",
        title=f"Training Jacobian spectrum ({st.init} init)",
    )
    shade_regions(ax[0], s)
    ax[0].legend()
    ax[1].hist(np.log10(np.abs(s - 1) + 1e-16), bins=100)
    ax[1].set(xlabel="log10 |sigma - 1|", ylabel="count", title="distance to 1")
    st.savefig(fig, "spectrum.png")


def stage_alignment(st: Study) -> None:
    """2. Alignment ``u_i . v_i`` and the projection of the update on the ``u_i``."""
    import matplotlib.pyplot as plt

    U, Vt = st.svd0.U, st.svd0.Vt
    align = alignment(U, Vt)
    proj = update_projection(st.theta_t - np.asarray(st.theta0, np.float64), U, Vt)
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].plot(align, ",", alpha=0.6)
    ax[0].set(xlabel="index i", ylabel="u_i . v_i", title="alignment of singular vectors")
    ax[1].semilogy(np.abs(proj["u"]), ",", label="|u_i . (theta_T - theta_0)|")
    ax[1].set(xlabel="index i", title="update projected on left singular vectors")
    st.savefig(fig, "alignment.png")
    bulk1000 = closest_to_one(st.s, 1000)
    st.out["update_norm_fraction_in_bulk1000"] = float(
        np.linalg.norm(proj["u"][bulk1000]) / np.linalg.norm(proj["u"])
    )


def eval_loss_fn(st: Study):
    """The jitted test loss of ``theta [P]``."""
    test_batch, loss, run = st.test_batch, st.ref["loss"], st.run
    return jax.jit(lambda th: loss(run.unravel(th), test_batch))


def stage_perturbation(st: Study) -> None:
    """3. Perturbation linearity: retrain from ``theta_0 + eps v_i`` for the top and two
    bulk directions."""
    import matplotlib.pyplot as plt

    U, Vt = st.svd0.U, st.svd0.Vt
    bulk1000 = closest_to_one(st.s, 1000)
    eval_loss = eval_loss_fn(st)
    eps = np.logspace(-3, 3, 2 if st.smoke else 7)
    dirs = {
        "top (i=0)": 0,
        "bulk (closest to 1)": int(bulk1000[0]),
        "bulk (#500)": int(bulk1000[500]),
    }
    sweeps = {
        name: perturbation_sweep(st.run, st.theta0, Vt[i], U[:, i], eps, eval_loss=eval_loss)
        for name, i in dirs.items()
    }
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for name, sw in sweeps.items():
        ax[0].semilogx(eps, sw["slope"], "o-", label=name)
        ax[1].semilogx(eps, sw["loss"], "o-", label=name)
    ax[0].set(xlabel="eps", ylabel="u_i . (theta_T(eps) - theta_T) / eps", title="linearity")
    ax[1].axhline(float(eval_loss(jnp.asarray(st.theta_t, st.theta0.dtype))), c="k", ls=":")
    ax[1].set(
        xlabel="eps", ylabel="test loss", yscale="log", title="retrained from theta_0 + eps v_i"
    )
    ax[0].legend()
    st.savefig(fig, "perturbation.png")
    st.out["perturbation"] = {
        name: {"eps": eps.tolist(), "slope": sw["slope"].tolist(), "test_loss": sw["loss"].tolist()}
        for name, sw in sweeps.items()
    }
    st.log("perturbation done")


def stage_kl(st: Study) -> None:
    """4. KL when ``v_i`` (every one of the P right singular vectors) is added to
    ``theta_T``, on train, test, N(0, 1) fake inputs shaped like the test set (the
    notebook's ``jax.random.normal(key(0), ...)``) and inverted test inputs ``1 - x``."""
    import matplotlib.pyplot as plt

    ref, s, Vt = st.ref, st.s, st.svd0.Vt
    x_te = ref["x_te"]
    f = unravel_apply(ref)
    fake = np.asarray(jax.random.normal(jax.random.key(0), (len(x_te), 64))).reshape(x_te.shape)
    sets = {"train": ref["x"], "test": x_te, "fake N(0,1)": fake, "inverted 1-x": 1.0 - x_te}
    th_t = jnp.asarray(st.theta_t, st.theta0.dtype)
    kl = {k: max_kl_directions(f, th_t, Vt, xs) for k, xs in sets.items()}
    fig, axs = plt.subplots(2, 2, figsize=(11, 7), sharex=True, sharey=True)
    for ax, (k, v) in zip(axs.flat, kl.items()):
        ax.scatter(np.arange(st.p), np.maximum(v, 1e-12), s=2, alpha=0.3, c="k", lw=0)
        shade_regions(ax, s)
        ax.set(yscale="log", ylim=(1e-10, 10), title=k)
    axs[0, 0].legend(fontsize=8, loc="lower left")
    for ax in axs[1]:
        ax.set_xlabel("singular vector index i")
    for ax in axs[:, 0]:
        ax.set_ylabel("max KL(theta_T || theta_T + v_i)")
    fig.suptitle("Effect of adding each right singular vector to theta_T (floored at 1e-12)")
    st.savefig(fig, "kl_all_directions.png")
    st.out["max_kl_median_by_region"] = {
        r: {k: float(np.median(v[idx])) if len(idx) else None for k, v in kl.items()}
        for r, idx in spectrum_regions(s).items()
    }
    st.log("KL done")


def stage_restricted(st: Study) -> None:
    """5. Restricted training ``theta = theta_0 + B p``: the notebook's 20 values of k,
    ``B`` the bulk, its complement, the top, the bottom or random directions."""
    import matplotlib.pyplot as plt

    s, Vt, p, run, theta0 = st.s, st.svd0.Vt, st.p, st.run, st.theta0
    eval_loss = eval_loss_fn(st)
    ks = [int(k) for k in np.linspace(100, p, 2 if st.smoke else 20).astype(int)]
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
                st.ref["loss"],
                run.unravel,
                theta0,
                basis(k),
                run.optimizer,
                run.batches,
                run.num_steps,
                st.test_batch,
            )
            restricted[name].append(float(loss))
        st.log(f"restricted k={k}")
    th_t = jnp.asarray(st.theta_t, theta0.dtype)
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
    st.savefig(fig, "restricted_training.png")
    st.out["restricted_training_test_loss"] = {"k": ks, **restricted}


def stage_evolution(st: Study) -> None:
    """6. J forming across training: the ``jacobian_digits`` evaluator's checkpoints,
    replayed from this init (``t = 0`` is ``J = I`` exactly)."""
    import matplotlib.pyplot as plt

    p = st.p
    steps = checkpoint_steps()
    evo = {}
    for t in steps:
        if t == 0:  # theta_0 -> theta_0: J = I exactly
            evo[t] = SVDResult(s=np.ones(p), U=np.eye(p), Vt=np.eye(p))
        elif t == st.run.num_steps:
            evo[t] = st.svd0
        else:
            evo[t] = spectrum(st.cache, st.init, f"t{t}", 0, vectors=True, steps=t)
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
    st.out["evolution"] = evolution
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
    st.savefig(fig, "training_evolution.png")


def stage_controls(st: Study) -> None:
    """7. Controls (the notebook's shuffled labels and white-noise inputs) and Adam."""
    import matplotlib.pyplot as plt

    cache, init, s = st.cache, st.init, st.s
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
    st.savefig(fig, "controls.png")
    st.out["controls"] = {k: headline(v) for k, v in ctrl.items()}


def stage_seed_overlap(st: Study) -> None:
    """8. Overlap of the k-bulks (right vectors) of seeds 0 and 1, against random
    k-subspaces."""
    import matplotlib.pyplot as plt

    s, Vt, p, out = st.s, st.svd0.Vt, st.p, st.out
    svd1 = spectrum(st.cache, st.init, "seed1", 1, vectors=True)
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
        title=f"seed overlap of bulk subspaces ({st.init} init)",
    )
    ax.legend()
    st.savefig(fig, "seed_overlap.png")
    out["seed_overlap"] = {
        "k": kk,
        "bulk": ov,
        "random": rnd,
        "random_expected_mean_cos_sq": rnd_sq,
    }
    out["seed_overlap_k1000"] = ov[kk.index(1000)]
    out["random_overlap_k1000"] = rnd[kk.index(1000)]
    out["seed1"] = headline(svd1)


STAGES = (
    stage_spectrum,
    stage_alignment,
    stage_perturbation,
    stage_kl,
    stage_restricted,
    stage_evolution,
    stage_controls,
    stage_seed_overlap,
)


def run_study(out_dir: Path, cache: Path, init: str = "notebook", *, smoke: bool = False) -> dict:
    """The full study for ``init`` into ``out_dir`` (figures, ``numbers.json``), dense J's
    cached in ``cache``; the other init gets its seed-0 headline numbers. ``smoke``: 2
    values of k and of eps, for testing. ``notebook_check`` numbers already in
    ``numbers.json`` are kept. Returns ``numbers``."""
    out_dir, cache = Path(out_dir), Path(cache)
    t_start = time.perf_counter()
    path = out_dir / "numbers.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    numbers: dict = {"paper": PAPER}
    if "notebook_check" in old:
        numbers["notebook_check"] = old["notebook_check"]

    svd0 = spectrum(cache, init, "seed0", 0, vectors=True)
    ref = setup(0, init=init)
    theta_t = np.asarray(jax.jit(ref["run"])(ref["theta0"]), np.float64)
    numbers[init] = headline(svd0)
    st = Study(init, out_dir, cache, smoke, numbers, svd0, ref, theta_t, t_start)
    print(json.dumps(st.out, indent=1), flush=True)

    for stage in STAGES:
        stage(st)
        st.save()  # after every stage, so that an interrupted run keeps what it has

    # The other init's headline numbers, beside these.
    other = INITS[1 - INITS.index(init)]
    numbers[other] = headline(spectrum(cache, other, "seed0", 0, vectors=True))
    numbers[other]["note"] = "seed-0 headline only; run.py --init " + other + " for the rest"
    st.save()

    st.out["seconds_total_this_run"] = time.perf_counter() - t_start
    st.save()
    print(json.dumps({k: v for k, v in st.out.items() if k != "perturbation"}, indent=1))
    return numbers


def merge_numbers(out_dir: Path, key: str, value: dict) -> None:
    """Set ``key`` of ``out_dir/numbers.json`` to ``value``, keeping the rest."""
    path = Path(out_dir) / "numbers.json"
    numbers = json.loads(path.read_text()) if path.exists() else {}
    numbers[key] = value
    path.write_text(json.dumps(numbers, indent=1))
    print(json.dumps(value, indent=1))


def float64_check(cache: Path, init: str, out_dir: Path) -> None:
    """Seed 0's J from a float64 run against the float32 one: how much of the bulk count
    is float32 rounding. Enables x64. Adds ``float64_check`` to ``numbers.json``."""
    jax.config.update("jax_enable_x64", True)
    s32 = spectrum(cache, init, "seed0", 0, vectors=True).s
    s64 = spectrum(cache, init, "seed0_float64", 0, vectors=False, dtype=jnp.float64).s
    c32, c64 = bulk_counts(s32), bulk_counts(s64)
    merge_numbers(
        out_dir,
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


def notebook_check(cache: Path, out_dir: Path) -> None:
    """The notebook's own computation, written here with flax linen the way the notebook
    does it (linen MLP + ``nn.gelu``, ``model.init(jax.random.key(0), X_train)``, flat
    parameters in a ``TrainState``, epochs x batches ``lax.scan``, ``jax.jacfwd`` of the
    whole run, ``jnp.linalg.svd``), against dsb's cached ``init="notebook"`` J. Adds
    ``notebook_check`` to ``numbers.json``."""
    from flax import linen as nn
    from flax.training.train_state import TrainState
    from jax.flatten_util import ravel_pytree

    from dsb.data.digits import digits_arrays

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
    merge_numbers(
        out_dir,
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
