"""Evaluator ``training_jacobian``: the training Jacobian d theta_t / d theta_0 at every
checkpoint.

Config entry::

    evals:
      jac: {type: training_jacobian, when: [0, 16, 64, 256, 625]}

At a checkpoint at step t the evaluator replays the first t steps of training as a pure
function of theta_0 (``dsb.jacobian.TrainingRun``) from ``snapshot.init_params``.
``recipe="trainer"`` (the default inside a dsb run) replays the run itself: the
trainer's batches ``ctx.train_batch(0..t-1)`` and its optimizer ``make_optimizer(
cfg.optim, cfg.train.total_steps)``. ``recipe="reference"`` instead uses the explicit
options (fixed minibatches of ``batch_size`` in order, SGD with ``momentum``, cosine from
``learning_rate`` to 0 over ``total_steps``), for use outside the trainer.
``replay_rel_error`` compares the replayed theta_t with the checkpoint's parameters: a
large value means the replay does not describe how the run was trained (e.g. data
augmentation, dropout or BatchNorm, which the replay does not model and which the evaluator
refuses up front where it can tell).

Small models (P <= ``max_dense_params``): dense forward-mode J and its float64 SVD;
yields ``sigma_1``, ``sigma_min``, ``count_abs_s_minus_1_below_<thr>`` (of J's singular
values), ``count_D_below_<thr>`` (of D = J - I's: exact, the matrix-free path's
quantity, e.g. 3030 vs 2984 at 0.1 on the reference run) and the mean
``u.v`` over the ``num_bulk`` directions closest to 1, and saves the singular values to
``run_dir/jacobian/step_<t>.npz``. Larger models, matrix-free, each number with its
certificate:

* ``top_singular_triplets`` of J (adaptive Golub-Kahan to relative residual
  ``top_rtol``): ``sigma_1``, ``top_converged`` (1 if all ``num_top`` triplets reached
  ``top_rtol``), ``top_max_rel_residual``, ``top_products``.
* ``kpm_counts`` of the singular values of ``D = J - I`` below each threshold (kernel
  polynomial filters with Hutchinson probes after deflating the top directions of D:
  by default (``count_deflate=None``) as many as a cost model finds worth their products
  (each direction ~6 products; each saves moment products in proportion to the drop of
  sigma_{k+1}(D)), capped at a quarter of the budget, and that the certificate for
  inexact deflation accepts; the reference run gets ~600 and resolves 0.1; or exactly
  ``count_deflate`` of them; see ``dsb.jacobian.certified``): ``count_D_below_<thr>`` is
  the count
  when its bracket ``..._bracket_low/high`` is at most ``count_rel_width`` of it wide and
  **NaN otherwise** (never a count the method did not resolve), ``..._resolved`` (1/0),
  ``count_resolution`` (thresholds below it cannot be bracketed at the degree reached),
  ``count_degree``, ``count_probes``, ``count_products``, ``count_all_resolved``,
  ``count_deflated``, ``count_deflation_products``, ``count_seconds`` and, for each
  unresolved count, ``count_D_below_<thr>_products_needed``: the products the cost model
  predicts would resolve it (``KPMCounts.products_needed``; a prediction, not a count).
  The
  budget is ``count_max_products`` Jacobian products (default ``10 P``) and
  ``count_max_seconds``; an unresolved count or unconverged top-k is also logged as a
  warning.

  ``count_float64`` (default true): the counts' products replay the run in float64 (the
  model's ``dtype`` attributes set to float64, parameters, optimizer state and batches in
  float64, under ``jax.enable_x64``); logged as ``count_float64`` (1/0). With float32
  products, Golub-Kahan does not converge the deflation: on the reference run (P = 4810)
  rows 51-63 of 1280 steps keep residuals of 22-40, so the certificate accepts no deep
  deflation and nothing is resolved; with float64 products all 640 rows converge to 3e-13
  and every prefix is certified, for about the same seconds per product on a CPU. The
  float64 replay's J differs from the float32 run's by ``||J_32 - J_64||_2 = 1.9e-5``
  there (``docs/jacobian_counts.md``). A model that still narrows to float32 somewhere
  (``check_full_precision``) falls back to float32 products with a warning. Turn it off
  on hardware without fast float64 (TPUs, most consumer GPUs).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dsb.evals.base import EvalContext, Snapshot, register_evaluator

__all__ = ["TrainingJacobian"]

log = logging.getLogger(__name__)


@register_evaluator("training_jacobian")
class TrainingJacobian:
    def __init__(
        self,
        ctx: EvalContext,
        *,
        recipe: str | None = None,
        learning_rate: float = 0.1,
        momentum: float = 0.9,
        total_steps: int = 625,
        batch_size: int = 64,
        thresholds: Sequence[float] = (0.1, 1e-2, 1e-3),
        num_bulk: int = 1000,
        max_dense_params: int = 8000,
        num_top: int = 5,
        top_rtol: float = 1e-3,
        count_deflate: int | None = None,
        count_probes: int = 8,
        count_rel_width: float = 0.1,
        count_max_products: int | None = None,
        count_max_seconds: float | None = 1800.0,
        count_float64: bool = True,
        save_spectrum: bool = True,
    ):
        self.ctx = ctx
        self.recipe = recipe or ("trainer" if ctx.config is not None else "reference")
        if self.recipe == "trainer":
            from dsb.optim import make_optimizer

            cfg = ctx.config
            if cfg is None or ctx.train_batch is None:
                raise ValueError("training_jacobian: recipe='trainer' needs a dsb training run")
            aug = cfg.data.augment
            if aug.crop_padding or aug.horizontal_flip or aug.randaugment_num_ops:
                raise ValueError(
                    "training_jacobian: the replay does not model data augmentation; "
                    "turn data.augment off for this run"
                )
            self.optimizer = make_optimizer(cfg.optim, cfg.train.total_steps)
        elif self.recipe == "reference":
            self.optimizer = optax.sgd(
                optax.cosine_decay_schedule(learning_rate, total_steps), momentum=momentum or None
            )
        else:
            raise ValueError(f"training_jacobian: recipe={recipe!r}: use 'trainer' or 'reference'")
        self.batch_size = batch_size
        self.thresholds = tuple(float(t) for t in thresholds)
        self.num_bulk = num_bulk
        self.max_dense_params = max_dense_params
        self.num_top = num_top
        self.top_rtol = top_rtol
        self.count_deflate = count_deflate
        self.count_probes = count_probes
        self.count_rel_width = count_rel_width
        self.count_max_products = count_max_products
        self.count_max_seconds = count_max_seconds
        self.count_float64 = count_float64
        self.save_spectrum = save_spectrum
        self._batches = None

    def batches_for(self, num_steps: int):
        """Stacked batches ``[steps, b, ...]`` the replay runs through, in order."""
        if self.recipe == "trainer":
            steps = [self.ctx.train_batch(s) for s in range(max(num_steps, 1))]
            return {k: np.stack([b[k] for b in steps]) for k in ("image", "label")}
        return self.batches

    @property
    def batches(self):
        if self._batches is None:
            from dsb.jacobian import fixed_minibatches

            split = self.ctx.load_split(self.ctx.train_split)
            self._batches = fixed_minibatches(split["image"], split["label"], self.batch_size)
        return self._batches

    def _float64_operator(self, graphdef, rest, init_params, num_steps: int):
        """The Jacobian operator of the same run replayed in float64 (call under
        ``jax.enable_x64``), or ``None`` (with a warning) when the model still computes
        in a narrower dtype somewhere."""
        from dsb import jacobian as jac

        model = nnx.merge(graphdef, init_params, rest)
        for _, m in model.iter_modules():
            if getattr(m, "dtype", None) is not None:
                m.dtype = jnp.float64
        graphdef64, params64, rest64 = nnx.split(model, nnx.Param, ...)

        def apply64(p, x):
            return nnx.merge(graphdef64, p, rest64)(x)

        try:
            run64, theta64 = jac.make_training_run(
                jac.cross_entropy_loss(apply64),
                params64,
                self.optimizer,
                self.batches_for(num_steps),
                num_steps=num_steps,
                dtype=jnp.float64,
            )
        except ValueError as e:
            log.warning(
                "training_jacobian: no float64 replay for the counts (%s); their products "
                "stay float32, which keeps the deflation from converging (count_float64=0)",
                e,
            )
            return None
        return jac.JacobianOperator(run64, theta64)

    def _counts(self, op, p: int):
        """``kpm_counts`` of ``D = J - I`` for the operator ``op`` of J, with this
        evaluator's count settings."""
        from dsb import jacobian as jac

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jac.UnconvergedWarning)  # logged by run()
            return jac.kpm_counts(
                op.with_shift(1.0),
                self.thresholds,
                deflate=None if self.count_deflate is None else min(self.count_deflate, p - 1),
                num_probes=self.count_probes,
                rel_width=self.count_rel_width,
                max_products=self.count_max_products,
                max_seconds=self.count_max_seconds,
            )

    def run(self, snapshot: Snapshot) -> Iterable[tuple[str, float]]:
        from dsb import jacobian as jac

        if snapshot.init_params is None:
            raise ValueError("training_jacobian needs snapshot.init_params (the step-0 params)")
        # The replay and its Jacobian are single-program computations with meshes of their
        # own (dense J splits its chunks over devices itself). The snapshot's arrays are
        # replicated over the training mesh; mixing the two meshes in one jit is an error
        # ("incompatible devices"), so the replay starts from host copies.
        graphdef = snapshot.graphdef
        rest, init_params, params = jax.device_get(
            (snapshot.rest, snapshot.init_params, snapshot.params)
        )
        if jax.tree.leaves(rest):
            raise ValueError(
                "training_jacobian: the model has non-parameter state (e.g. BatchNorm "
                "statistics), which the replay does not model"
            )

        def apply(p, x):
            return nnx.merge(graphdef, p, rest)(x)

        run, theta0 = jac.make_training_run(
            jac.cross_entropy_loss(apply),
            init_params,
            self.optimizer,
            self.batches_for(int(snapshot.step)),
            num_steps=int(snapshot.step),
        )
        p = theta0.size
        theta_t = jax.jit(run)(theta0)
        want = jax.flatten_util.ravel_pytree(params)[0]
        err = np.linalg.norm(np.asarray(theta_t - want)) / max(np.linalg.norm(want), 1e-30)
        yield "replay_rel_error", float(err)
        yield "num_params", float(p)

        if p <= self.max_dense_params:
            jd = np.asarray(jac.jacobian_forward(run, theta0), np.float64)
            svd = jac.robust_svd(jd)
            s = svd.s
            yield "sigma_1", float(s[0])
            yield "sigma_min", float(s[-1])
            for t, c in jac.bulk_counts(s, self.thresholds).items():
                yield f"count_abs_s_minus_1_below_{t:g}", float(c)
            # The singular values of D = J - I, the matrix-free path's quantity: the same
            # names, exact here.
            s_d = np.linalg.svd(jd - np.eye(p), compute_uv=False)
            for t in self.thresholds:
                yield f"count_D_below_{t:g}", float((s_d < t).sum())
            bulk = jac.closest_to_one(s, min(self.num_bulk, p))
            yield "mean_u_dot_v_bulk", float(jac.alignment(svd.U, svd.Vt, bulk).mean())
            if self.save_spectrum and self.ctx.is_main_process:
                out = self.ctx.run_dir / "jacobian" / f"step_{snapshot.step}.npz"
                jac.save_spectrum(out, svd, step=snapshot.step)
            return

        op = jac.JacobianOperator(run, theta0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jac.UnconvergedWarning)  # logged below instead
            top = jac.top_singular_triplets(op, self.num_top, rtol=self.top_rtol)
        yield "sigma_1", float(top.s[0])
        yield "top_converged", float(top.all_converged)
        yield "top_max_rel_residual", float(top.rel_residual.max())
        yield "top_products", float(top.products)
        if not top.all_converged:
            log.warning(
                "training_jacobian step %s: top-%d singular values not converged to rtol=%g "
                "(worst relative residual %.2e, stopped: %s)",
                snapshot.step,
                self.num_top,
                self.top_rtol,
                float(top.rel_residual.max()),
                top.stop_reason,
            )
        res = None
        if self.count_float64:
            # No yield inside the x64 context: the caller runs while this generator waits.
            with jax.enable_x64(True):
                op64 = self._float64_operator(graphdef, rest, init_params, int(snapshot.step))
                if op64 is not None:
                    res = self._counts(op64, p)
        use64 = res is not None
        if res is None:
            res = self._counts(op, p)  # float32 products
        yield "count_float64", float(use64)
        for t in self.thresholds:
            c = res.counts[t]
            # NaN unless resolved: a count the method did not resolve is never logged.
            yield f"count_D_below_{t:g}", c.estimate if c.resolved else float("nan")
            yield f"count_D_below_{t:g}_bracket_low", c.low
            yield f"count_D_below_{t:g}_bracket_high", c.high
            yield f"count_D_below_{t:g}_resolved", float(c.resolved)
            if not c.resolved:
                yield f"count_D_below_{t:g}_products_needed", res.products_needed(t)
        yield "count_resolution", res.resolution
        yield "count_all_resolved", float(res.all_resolved)
        yield "count_degree", float(res.degree)
        yield "count_probes", float(res.num_probes)
        yield "count_products", float(res.products + top.products)
        yield "count_deflated", float(res.deflated)
        yield "count_deflation_products", float(res.deflation_products)
        yield "count_seconds", float(res.seconds)
        if not res.all_resolved:
            bad = [f"{c.threshold:g}" for c in res.counts.values() if not c.resolved]
            log.warning(
                "training_jacobian step %s: counts of sigma(D) below %s unresolved (logged as "
                "NaN with brackets); resolution %.3g at degree %d, %d probes, %d products "
                "(stopped: %s)",
                snapshot.step,
                ", ".join(bad),
                res.resolution,
                res.degree,
                res.num_probes,
                res.products,
                res.stop_reason,
            )
