"""Closed-form polynomial approximants of an MLP's logits, traced across training.

Config entry (the trainer prefixes names with the entry key)::

    evals:
      poly: {type: poly_approx, split: test, num_samples: 2000, seed: 0}

At build time the mean ``mu`` and covariance ``Sigma`` of the flattened train images are
fitted (digits: rank 61 of 64; the approximants live on the support, see
``dsb.polyapprox.closed_form``), and ``num_samples`` Gaussian inputs ``x ~ N(mu, Sigma)`` are
drawn once. At each checkpoint the model is rebuilt from the snapshot, its least-squares
linear and quadratic approximants under ``N(mu, Sigma)`` are computed in closed form (float64)
and compared with the network's logits on the real ``split`` (``val``) and on the Gaussian
samples (``gauss``). It yields, for ``<a>`` in the approximant names and ``<set>`` in
``val, gauss``:

- ``<a>/<set>/r2`` and ``<a>/<set>/fvu``: ``FVU = sum (f - f_hat)^2 / sum (f - mean f)^2`` over
  samples and logits (mean over the set; ``r2 = 1 - fvu``);
- ``<a>/<set>/kl``: mean ``KL(softmax f || softmax f_hat)`` in nats;
- ``<a>/<set>/agreement``: fraction of samples where ``argmax f_hat = argmax f``;
  ``<a>/val/accuracy``: the approximant's accuracy against the labels;
- ``<a>_stein/<set>/r2_se`` and ``<a>_stein/<set>/r2_bias`` (deep MLPs only): the Monte
  Carlo standard error of the Stein estimate's ``r2`` and the estimate of its bias
  (``E[r2] - r2`` of the exact least-squares coefficients on the same samples; negative:
  the estimate reads low), by a delete-a-group jackknife over ``jackknife_groups`` groups
  of the fit draws (``dsb.polyapprox.stein_mc_jackknife``). Every checkpoint uses the
  same draws, so the error is shared along a curve: it shifts the curve, it does not
  scatter it. ``r2`` itself is not corrected;
- ``linear_ols/gauss/r2``: the in-sample R^2 of the linear least-squares fit on the Gaussian
  samples (the best linear R^2 there, up to O(d / num_samples)): the reference for the
  closed form's R^2 on the same samples, which shows the gap when the approximant is
  propagated.

Approximant names: an MLP with ONE hidden layer gets ``linear`` and ``quadratic``, the exact
least-squares approximants under ``N(mu, Sigma)`` in closed form. A deeper MLP has no closed
form for them (E[Jacobian] of a composition of nonlinearities under a Gaussian is no 1-D
integral), and the closed-form Gaussian propagation of ``dsb.polyapprox.mlp_approximants``
proved too rough on the trained digits MLP (R^2 -7.7 where least squares reaches 1.00); it
gets ``linear_stein`` and ``quadratic_stein``: Monte Carlo estimates of the exact
least-squares coefficients by Stein's lemma from Jacobians at ``num_fit`` Gaussian draws
(``dsb.polyapprox.stein_mc_approximants``; the same draws at every checkpoint, independent
of the ``gauss`` evaluation samples, so the ``gauss`` R^2 is out of sample). With
``stein_on_exact`` a one-hidden-layer MLP gets both: the exact ``linear`` / ``quadratic``
(which the figures' forms use) and their Stein estimates ``linear_stein`` /
``quadratic_stein``, which measures the estimates' error against the exact coefficients.

The top eigenvalues and eigenvectors of each logit's quadratic form in whitened coordinates,
``Gamma_k = L' M_k L`` with ``x = mu + L z`` (eigenvalue: curvature per unit standard
deviation; the eigenvector ``v`` saved as its input-space displacement ``L v``, e.g. an 8x8
image on digits; the raw pixel-space ``M_k`` is dominated by near-constant pixels) go to
``<run_dir>/<forms_dir>/step_<step>.npz`` at every checkpoint (main process only; keys
``evals [K, top]``, ``evecs [K, top, d]``, ``input_shape``,
``step``, ``exact``; ~10 kB each): ``dsb.polyapprox.plots`` draws an early and the last one.

Models: only ``dsb.models.mlp.MLP`` with an activation in
``dsb.polyapprox.SUPPORTED_ACTIVATIONS``. Anything else (conv nets, attention) is refused:
``on_unsupported="error"`` (the default) raises a ``ValueError`` naming the model;
``"skip"`` logs one warning and the entry yields nothing (``conf/evals/probes.yaml`` uses
``skip``, so experiments that swap the MLP for LeNet-5 or a ResNet keep running).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from dsb.evals.base import EvalContext, Snapshot, register_evaluator

__all__ = ["PolyApprox", "approximation_metrics", "r2_score", "stein_inputs"]

log = logging.getLogger(__name__)

ON_UNSUPPORTED = ("error", "skip")


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def r2_score(f_NxK: np.ndarray, fhat_NxK: np.ndarray) -> float:
    """``1 - FVU`` of ``fhat`` against ``f`` (``approximation_metrics``'s ``r2``)."""
    f = np.asarray(f_NxK, np.float64)
    sst = float(((f - f.mean(axis=0)) ** 2).sum())
    return 1.0 - float(((f - np.asarray(fhat_NxK, np.float64)) ** 2).sum()) / sst


def approximation_metrics(
    f_NxK: np.ndarray, fhat_NxK: np.ndarray, labels_N: np.ndarray | None = None
) -> dict[str, float]:
    """``r2, fvu, kl, agreement`` (and ``accuracy`` with labels) of the approximant's logits
    ``fhat`` against the network's ``f`` (definitions in the module docstring)."""
    f = np.asarray(f_NxK, np.float64)
    g = np.asarray(fhat_NxK, np.float64)
    sst = float(((f - f.mean(axis=0)) ** 2).sum())
    fvu = float(((f - g) ** 2).sum()) / sst if sst > 0 else float("nan")
    lp, lq = _log_softmax(f), _log_softmax(g)
    out = {
        "r2": 1.0 - fvu,
        "fvu": fvu,
        "kl": float((np.exp(lp) * (lp - lq)).sum(axis=-1).mean()),
        "agreement": float((f.argmax(-1) == g.argmax(-1)).mean()),
    }
    if labels_N is not None:
        out["accuracy"] = float((g.argmax(-1) == np.asarray(labels_N)).mean())
    return out


def stein_inputs(gauss, layers):
    """The float32 Gaussian and layers of the Stein Monte Carlo path: ``gauss`` (fitted in
    float64) cast with its float64 support kept (``GaussianInput.astype``; a float32
    refit would cut the digits support to rank 58 of the true 61), and the layers
    ``[(W, b or None), ...]`` in float32 (the Jacobians are the cost)."""
    f32 = [
        (jnp.asarray(W, jnp.float32), None if b is None else jnp.asarray(b, jnp.float32))
        for W, b in layers
    ]
    return gauss.astype(jnp.float32), f32


@register_evaluator("poly_approx")
class PolyApprox:
    """Closed-form linear / quadratic approximants of an MLP (module docstring).

    Options:
      split: the real evaluation split (``val`` in the metric names).
      num_samples: Gaussian samples ``x ~ N(mu, Sigma)`` (``gauss``), drawn once.
      seed: fixes the Gaussian samples (evaluation and, for deep MLPs, fit draws).
      num_fit: Gaussian draws for the Stein Monte Carlo coefficients of MLPs with more than
        one hidden layer (float32; per-checkpoint cost ~ num_fit * K * (weights)).
      jackknife_groups: groups of the fit draws for the jackknife standard error and bias
        of the Stein R^2 (1: not computed; ``num_fit`` must be a multiple of it).
      fit_chunk: fit draws whose Jacobians are held in memory at once (None: all
        ``num_fit``; same draws, same numbers up to rounding).
      stein_on_exact: for a one-hidden-layer MLP, log the Stein estimates
        (``<a>_stein/...``, with ``num_fit`` draws) next to the exact closed forms: their
        Monte Carlo error against the exact coefficients, at every checkpoint.
      val_samples: evaluate on this many images of ``split`` (a fixed random subset drawn
        with ``seed``; None: the whole split). Each Stein jackknife replicate is evaluated
        on every sample, which costs ``N K d^2`` per replicate (d = 784: ~12 GFLOP per
        1000 samples).
      fit_split: split whose images give ``mu`` and ``Sigma`` (default: the train split).
      top_eigen: eigenvectors per logit saved at each checkpoint (0: none saved).
      forms_dir: folder under the run dir for those ``.npz`` files.
      on_unsupported: ``"error"`` or ``"skip"`` for a model that is not a supported MLP.
    """

    def __init__(
        self,
        ctx: EvalContext,
        split: str = "test",
        num_samples: int = 2000,
        seed: int = 0,
        num_fit: int = 2048,
        jackknife_groups: int = 8,
        fit_chunk: int | None = None,
        stein_on_exact: bool = False,
        val_samples: int | None = None,
        fit_split: str | None = None,
        top_eigen: int = 4,
        forms_dir: str = "poly_forms",
        on_unsupported: str = "error",
    ):
        if on_unsupported not in ON_UNSUPPORTED:
            raise ValueError(
                f"poly_approx: on_unsupported must be one of {ON_UNSUPPORTED}, "
                f"got {on_unsupported!r}"
            )
        if num_samples < 2:
            raise ValueError(f"poly_approx: num_samples must be >= 2, got {num_samples}")
        if jackknife_groups < 1 or num_fit % jackknife_groups or num_fit < 2 * jackknife_groups:
            raise ValueError(
                f"poly_approx: num_fit={num_fit} must be a multiple of jackknife_groups="
                f"{jackknife_groups} (>= 1), at least twice it"
            )
        self.on_unsupported = on_unsupported
        self.skip_reason: str | None = None
        model_cfg = getattr(ctx.config, "model", None)
        name = getattr(model_cfg, "name", None)
        if name is not None and name != "mlp":
            self._unsupported(f"model {name!r} is not an MLP")
            return
        from dsb.polyapprox import gaussian_input

        self.input_shape = tuple(ctx.input_shape)
        fit = ctx.load_split(fit_split or ctx.train_split)
        x_fit = np.asarray(fit["image"], np.float64).reshape(len(fit["image"]), -1)
        val = ctx.load_split(split)
        self.x_val = np.asarray(val["image"], np.float64).reshape(len(val["image"]), -1)
        self.y_val = np.asarray(val["label"])
        if val_samples is not None and val_samples < len(self.y_val):
            keep = np.sort(
                np.random.default_rng(seed).choice(len(self.y_val), val_samples, replace=False)
            )
            self.x_val, self.y_val = self.x_val[keep], self.y_val[keep]
        with jax.enable_x64(True):
            self.gauss = gaussian_input(jnp.asarray(x_fit.mean(0)), jnp.asarray(np.cov(x_fit.T)))
            self.x_gauss = np.asarray(self.gauss.sample(jax.random.key(seed), num_samples))
        self.fit_key = jax.random.fold_in(jax.random.key(seed), 1)
        self.num_fit = int(num_fit)
        self.jackknife_groups = int(jackknife_groups)
        self.fit_chunk = None if fit_chunk is None else int(fit_chunk)
        self.stein_on_exact = bool(stein_on_exact)
        self.top_eigen = int(top_eigen)
        self.forms_dir = ctx.run_dir / forms_dir if ctx.is_main_process else None
        log.info(
            "poly_approx: inputs ~ N(mu, Sigma) fitted on %d images, d = %d, rank %d "
            "(approximants on the support); %d val and %d Gaussian samples",
            len(x_fit), x_fit.shape[1], self.gauss.rank, len(self.y_val), num_samples,
        )  # fmt: skip

    def _unsupported(self, why: str) -> None:
        msg = (
            f"poly_approx: {why}; closed-form polynomial approximants need a "
            "dsb.models.mlp.MLP (conv nets and attention are not supported)"
        )
        if self.on_unsupported == "error":
            raise ValueError(msg + "; remove this evals entry or set on_unsupported: skip")
        if self.skip_reason is None:
            log.warning("%s; this evals entry is skipped (on_unsupported=skip)", msg)
        self.skip_reason = msg

    def _layers(self, snapshot: Snapshot):
        from flax import nnx

        from dsb.models.mlp import MLP
        from dsb.polyapprox import SUPPORTED_ACTIVATIONS, activation_name

        model = nnx.merge(snapshot.graphdef, snapshot.params, snapshot.rest)
        if not isinstance(model, MLP):
            self._unsupported(f"model {type(model).__name__} is not an MLP")
            return None, None
        act = activation_name(model.act)
        if act not in SUPPORTED_ACTIVATIONS:
            self._unsupported(f"activation {act!r} is not supported")
            return None, None
        if len(model.layers) < 2:
            self._unsupported("the MLP has no hidden layer (it is linear already)")
            return None, None
        layers = []
        for lin in model.layers:
            W = np.asarray(lin.kernel.get_value(), np.float64).T
            b = None if lin.bias is None else np.asarray(lin.bias.get_value(), np.float64)
            layers.append((W, b))
        return layers, act

    def run(self, snapshot: Snapshot) -> Iterator[tuple[str, float]]:
        if self.skip_reason is not None:
            return
        layers, act = self._layers(snapshot)
        if layers is None:
            return
        from dsb.polyapprox import (
            jackknife_se_bias,
            mlp_approximants,
            mlp_function,
            quadratic_eigen,
            stein_mc_jackknife,
        )

        f_val = np.asarray(snapshot.predict(self.x_val.reshape(-1, *self.input_shape)))
        f_gauss = np.asarray(snapshot.predict(self.x_gauss.reshape(-1, *self.input_shape)))
        with jax.enable_x64(True):
            fits = []  # (suffix, linear, quadratic, jackknife replicates)
            if len(layers) == 2:
                lin, quad = mlp_approximants(layers, self.gauss, act)
                fits.append(("", lin, quad, []))
            if len(layers) > 2 or self.stein_on_exact:
                g32, f32 = stein_inputs(self.gauss, layers)
                fn = mlp_function(f32, act)
                (s_lin, s_quad), replicates = stein_mc_jackknife(
                    fn, g32, self.fit_key, self.num_fit, self.jackknife_groups, self.fit_chunk
                )
                fits.append(("_stein", s_lin, s_quad, replicates))
            # The figures and the saved forms use the first fit: exact where it exists.
            suffix, lin, quad, _ = fits[0]
            summary = {}
            for fit_suffix, f_lin, f_quad, replicates in fits:
                for i, (approx, name) in enumerate(((f_lin, "linear"), (f_quad, "quadratic"))):
                    for set_name, x, f, y in (
                        ("val", self.x_val, f_val, self.y_val),
                        ("gauss", self.x_gauss, f_gauss, None),
                    ):
                        m = approximation_metrics(f, np.asarray(approx(jnp.asarray(x))), y)
                        if fit_suffix == suffix:
                            summary[f"{name}/{set_name}"] = m["r2"]
                        for k, v in m.items():
                            yield f"{name}{fit_suffix}/{set_name}/{k}", v
                        if replicates:
                            r2s = [
                                r2_score(f, np.asarray(r[i](jnp.asarray(x)))) for r in replicates
                            ]
                            se, bias = jackknife_se_bias(m["r2"], r2s)
                            yield f"{name}{fit_suffix}/{set_name}/r2_se", se
                            yield f"{name}{fit_suffix}/{set_name}/r2_bias", bias
            X = np.concatenate([np.ones((len(self.x_gauss), 1)), self.x_gauss], axis=1)
            coef = np.linalg.lstsq(X, f_gauss.astype(np.float64), rcond=None)[0]
            yield "linear_ols/gauss/r2", approximation_metrics(f_gauss, X @ coef)["r2"]
            if self.forms_dir is not None and self.top_eigen > 0:
                # The form in whitened coordinates, Gamma_k = L' M_k L (x = mu + L z): its
                # eigenvalues are curvatures per unit standard deviation (pixel-space M_k is
                # dominated by near-constant pixels); each eigenvector v is shown as the
                # pixel-space displacement L v.
                L = jnp.asarray(self.gauss.basis * jnp.sqrt(self.gauss.evals), quad.M.dtype)
                evals, evecs = quadratic_eigen(
                    jnp.einsum("ia,kij,jb->kab", L, quad.M, L), top=self.top_eigen
                )
                evecs = evecs @ L.T
                self.forms_dir.mkdir(parents=True, exist_ok=True)
                np.savez(
                    self.forms_dir / f"step_{snapshot.step:08d}.npz",
                    evals=np.asarray(evals, np.float32),
                    evecs=np.asarray(evecs, np.float32),
                    input_shape=np.asarray(self.input_shape),
                    step=snapshot.step,
                    exact=lin.exact,
                )
        log.info(
            "poly_approx step %d (%s): R^2 linear%s val %.3f gauss %.3f, quadratic%s val %.3f "
            "gauss %.3f",
            snapshot.step, "exact" if lin.exact else "Stein Monte Carlo", suffix,
            summary["linear/val"], summary["linear/gauss"], suffix,
            summary["quadratic/val"], summary["quadratic/gauss"],
        )  # fmt: skip
