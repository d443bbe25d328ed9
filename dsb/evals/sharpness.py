"""The ``sharpness`` evaluator: top eigenvalues of the loss Hessian against the stability
threshold of the run's optimizer, at checkpoints.

Config entry::

    evals:
      sharp: {type: sharpness, when: all, num_examples: 1024, k: 1}

On a fixed batch (the first ``num_examples`` of a fixed permutation of the training split;
all of it with ``num_examples: null``; recorded as ``num_examples``), at each checkpoint
``when`` selects:

* ``eig_<i>`` for ``i = 1..k``: the ``i``-th largest eigenvalue of the Hessian of the mean
  training loss (``train.loss``) in the parameters (``matrix: gauss_newton`` for its
  Gauss-Newton part), by Lanczos with full reorthogonalisation
  (``dsb.curvature.top_eigenpairs``), NaN unless its residual is at most ``rtol`` of it;
  ``eig_<i>_ritz`` the Ritz value (a lower bound of the eigenvalue, converged or not) and
  ``eig_<i>_residual``; ``converged`` (1 when all ``k`` converged), ``lanczos_steps``,
  ``products`` (Hessian-vector products).
* ``lr``: the learning rate of the next update (the optimizer's schedule at this step);
  ``threshold``: the stability threshold (``2 / lr`` for gradient descent,
  ``(2 + 2 beta) / lr`` for heavy-ball momentum ``beta``; see
  ``dsb.curvature.stability_threshold``); ``ratio = eig_1 / threshold`` (NaN when
  ``eig_1`` is). For SGD with weight decay ``wd`` the iteration matrix is that of
  ``H + wd I``, so ``ratio`` uses ``eig_1 + wd``.
* For ``adamw`` runs: ``precond_eig_1`` (+ ``_ritz``, ``_residual``, ``precond_converged``)
  of Adam's preconditioned Hessian ``P^{-1} H`` (``dsb.curvature.adam_preconditioner``;
  from step 1 on) and ``precond_threshold = (2 + 2 b1) / ((1 - b1) lr)``,
  ``precond_ratio``; ``threshold`` and ``ratio`` are then NaN (the raw sharpness has no
  threshold under Adam).
* With ``trace_probes > 0``: ``trace`` of the matrix by Hutchinson's estimator and its
  ``trace_stderr``.

Runs data parallel over every device (the batch must divide over them). An unconverged
eigenvalue is logged as NaN with its Ritz bound and residual, and a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np

from dsb.evals.base import EvalContext, Snapshot, register_evaluator

__all__ = ["Sharpness"]

log = logging.getLogger(__name__)


@register_evaluator("sharpness")
class Sharpness:
    def __init__(
        self,
        ctx: EvalContext,
        *,
        num_examples: int | None = 1024,
        k: int = 1,
        matrix: str = "hessian",
        rtol: float = 1e-3,
        start_steps: int = 20,
        max_steps: int = 160,
        trace_probes: int = 0,
        preconditioned: bool | None = None,
        seed: int = 0,
    ):
        from dsb.curvature.hessian import MATRICES

        if ctx.num_classes is None:
            raise ValueError("sharpness: needs an image classification run (no text data yet)")
        if matrix not in MATRICES:
            raise ValueError(f"sharpness: matrix={matrix!r}: must be one of {MATRICES}")
        if k < 1 or max_steps < start_steps or not 0 < rtol < 1:
            raise ValueError("sharpness: need k >= 1, max_steps >= start_steps, 0 < rtol < 1")
        if trace_probes == 1 or trace_probes < 0:
            raise ValueError("sharpness: trace_probes must be 0 (off) or at least 2")
        self.ctx = ctx
        cfg = ctx.config
        self.loss = cfg.train.loss if cfg is not None else "cross_entropy"
        self.optim = cfg.optim if cfg is not None else None
        self.total_steps = cfg.train.total_steps if cfg is not None else None
        self.preconditioned = (
            (self.optim is not None and self.optim.name == "adamw")
            if preconditioned is None
            else preconditioned
        )
        if self.preconditioned and (self.optim is None or self.optim.name != "adamw"):
            raise ValueError("sharpness: preconditioned=true needs an adamw run")
        self.k, self.matrix, self.rtol = k, matrix, rtol
        self.start_steps, self.max_steps = start_steps, max_steps
        self.trace_probes, self.seed = trace_probes, seed
        self.num_examples = num_examples
        self._batch = None

    def batch(self) -> tuple[np.ndarray, np.ndarray]:
        """The fixed batch: a seeded permutation's first ``num_examples`` (trimmed to a
        multiple of the device count), the same at every checkpoint."""
        if self._batch is None:
            import jax

            data = self.ctx.load_split(self.ctx.train_split)
            n = len(data["label"])
            order = np.random.default_rng(self.seed).permutation(n)
            m = n if self.num_examples is None else min(self.num_examples, n)
            m -= m % jax.device_count()
            if m == 0:
                raise ValueError("sharpness: fewer examples than devices")
            idx = np.sort(order[:m])
            self._batch = (data["image"][idx], data["label"][idx])
        return self._batch

    def _lr(self, step: int) -> float:
        if self.optim is None:
            return float("nan")
        from dsb.optim import make_schedule

        return float(make_schedule(self.optim, self.total_steps)(step))

    def run(self, snapshot: Snapshot) -> Iterator[tuple[str, float]]:
        from dsb.curvature import hessian as hs

        x, y = self.batch()
        yield "num_examples", float(len(y))
        op = hs.CurvatureOperator(
            snapshot.graphdef, snapshot.params, snapshot.rest, x, y,
            loss=self.loss, matrix=self.matrix,
        )  # fmt: skip
        top = self._top(op, "", self.k)
        yield from top.items()
        lr = self._lr(snapshot.step)
        yield "lr", lr
        o = self.optim
        if o is not None and o.name == "sgd":
            thr = hs.stability_threshold("sgd", lr, momentum=o.momentum, nesterov=o.nesterov)
            yield "threshold", thr
            yield "ratio", (top["eig_1"] + o.weight_decay) / thr
        else:
            yield "threshold", float("nan")
            yield "ratio", float("nan")
        if self.preconditioned:
            yield from self._preconditioned(snapshot, x, y, lr).items()
        if self.trace_probes:
            tr = hs.hutchinson_trace(op, self.trace_probes, seed=self.seed)
            yield "trace", tr.mean
            yield "trace_stderr", tr.stderr

    def _top(self, op, prefix: str, k: int) -> dict[str, float]:
        from dsb.curvature.hessian import top_eigenpairs

        res = top_eigenpairs(
            op, k, rtol=self.rtol, start_steps=self.start_steps,
            max_steps=self.max_steps, seed=self.seed,
        )  # fmt: skip
        out: dict[str, float] = {}
        for i in range(k):
            out[f"{prefix}eig_{i + 1}"] = float(res.values[i])
            out[f"{prefix}eig_{i + 1}_ritz"] = float(res.ritz[i])
            out[f"{prefix}eig_{i + 1}_residual"] = float(res.residuals[i])
        out[f"{prefix}converged"] = float(res.all_converged)
        out[f"{prefix}lanczos_steps"] = float(res.steps)
        out[f"{prefix}products"] = float(res.products)
        if not res.all_converged:
            log.warning(
                "sharpness%s: top-%d eigenvalues unconverged after %d Lanczos steps "
                "(relative residuals %s > rtol %g); logged as NaN with their Ritz bounds",
                f" ({prefix.rstrip('_')})" if prefix else "", k, res.steps,
                np.array2string(res.residuals / np.abs(res.ritz), precision=2), self.rtol,
            )  # fmt: skip
        return out

    def _preconditioned(self, snapshot: Snapshot, x, y, lr: float) -> dict[str, float]:
        from dsb.curvature import hessian as hs

        o = self.optim
        nan = float("nan")
        out = {"precond_threshold": hs.stability_threshold("adamw", lr, b1=o.b1)}
        if snapshot.opt_state is None or snapshot.step == 0:
            # No second moment yet (step 0), or a snapshot without the optimizer state.
            keys = ("eig_1", "eig_1_ritz", "eig_1_residual", "converged", "ratio")
            return out | {f"precond_{k}": nan for k in keys}
        s = hs.adam_preconditioner(snapshot.opt_state, snapshot.params, b1=o.b1, b2=o.b2, eps=o.eps)
        op = hs.CurvatureOperator(
            snapshot.graphdef, snapshot.params, snapshot.rest, x, y,
            loss=self.loss, matrix=self.matrix, precond_sqrt_inv=s,
        )  # fmt: skip
        top = self._top(op, "precond_", 1)  # the threshold applies to the top eigenvalue
        keep = ("precond_eig_1", "precond_eig_1_ritz", "precond_eig_1_residual")
        out |= {name: top[name] for name in keep}
        out["precond_converged"] = top["precond_converged"]
        out["precond_ratio"] = top["precond_eig_1"] / out["precond_threshold"]
        return out
