"""Notebook helpers: open a run's checkpoints and re-run its evaluators, on any machine.

    from dsb.analysis import load_checkpoint, reevaluate
    restored = load_checkpoint("runs/digits_default/<date>", step=256)
    df = reevaluate("runs/digits_default/<date>", steps=[0, 256, 16384])

``load_checkpoint`` / ``OpenRun`` restore any checkpoint on the local default device,
without the training mesh (a GPU run opens on a laptop CPU), as a ``RestoredRun``.
``reevaluate`` builds the same ``dsb.evals.suite.EvalSuite`` the trainer runs (the same
entries, the same ``when``, the same ``EvalContext``) over checkpoints restored on the local
default device. ``restored_snapshot`` turns a ``RestoredRun`` into the
``Snapshot`` evaluators take (its ``predict`` calls the restored model, batched, on one
local device); ``eval_context`` rebuilds the ``EvalContext`` the trainer gave them. With
the default ``out_dir`` (the run directory) the evaluators reuse the probe sets the run
cached, so the numbers are those the run logged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import pandas as pd
from flax import nnx

from dsb import parallel
from dsb.checkpoint import RunCheckpoints
from dsb.config import Config
from dsb.evals.base import EvalContext, Snapshot
from dsb.evals.suite import EvalSuite, snapshot
from dsb.optim import make_optimizer
from dsb.run_context import RunContext
from dsb.step import TrainState, init_model, make_predict

__all__ = [
    "OpenRun",
    "RestoredRun",
    "eval_context",
    "eval_suite",
    "load_checkpoint",
    "reevaluate",
    "restored_snapshot",
]


# -------------------------------------------------------- restore a run, on any machine
@dataclasses.dataclass
class RestoredRun:
    """One checkpoint of a run, restored on the local default device."""

    config: Config
    step: int
    model: nnx.Module  # eval mode, on the default (e.g. CPU) device
    state: TrainState
    meta: dict[str, Any]
    available_steps: list[int]
    run_dir: Path | None = None


class OpenRun:
    """A run directory opened for reading: restore any of its checkpoints on the local
    default device, without the training mesh (a GPU run opens on a laptop CPU). One
    read-only checkpoint manager serves every step; ``close`` (or ``with``) releases it."""

    def __init__(self, run_dir: str | Path):
        self.context = RunContext.from_run_dir(run_dir)
        cfg = self.context.config
        self.model = init_model(cfg, norm_axis_name=None)
        tx = make_optimizer(cfg.optim, cfg.train.total_steps)
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        self._target = TrainState.abstract(self.model, tx, sharding=device)
        self.checkpoints = RunCheckpoints(self.context, read_only=True)
        self.steps = self.checkpoints.steps()
        if not self.steps:
            raise FileNotFoundError(f"no checkpoints in {self.checkpoints.directory}")

    @property
    def config(self) -> Config:
        return self.context.config

    def restore(self, step: int | None = None) -> RestoredRun:
        """Checkpoint ``step`` (default: the newest readable one)."""
        if step is None:
            restored = self.checkpoints.restore_latest(self._target)
            if restored is None:
                raise RuntimeError(f"no readable checkpoint in {self.checkpoints.directory}")
            step, state, meta = restored
        elif step not in self.steps:
            raise ValueError(f"no checkpoint at step {step}; available: {self.steps}")
        else:
            state, meta = self.checkpoints.restore(step, self._target)
        module = nnx.merge(self.model.graphdef_eval, state.params, state.rest)
        return RestoredRun(
            self.config, step, module, state, meta, list(self.steps), self.context.run_dir
        )

    def predict(self, eval_batch_size: int | None = None):
        """``predict(params, rest, x)`` of the run's model on one local device."""
        batch = eval_batch_size or self.config.train.eval_batch_size
        return make_predict(self.model, parallel.make_mesh(1), batch)

    def close(self) -> None:
        self.checkpoints.close()

    def __enter__(self) -> OpenRun:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_checkpoint(run_dir: str | Path, step: int | None = None) -> RestoredRun:
    """Open checkpoint ``step`` (default: the newest readable one) of a run directory on
    the local default device, without the training mesh: a GPU run opens on a laptop CPU.
    """
    with OpenRun(run_dir) as run:
        return run.restore(step)


# ------------------------------------------------------------- re-run its evaluators
def _run_context(restored: RestoredRun, out_dir: str | Path | None) -> RunContext:
    run_dir = restored.run_dir if restored.run_dir is not None else Path(out_dir)
    return RunContext(restored.config, run_dir, write_reports=False)


def eval_context(restored: RestoredRun, out_dir: str | Path) -> EvalContext:
    """The ``EvalContext`` the trainer builds for the restored run's config (the run's
    config and its global training batches included); evaluators write to ``out_dir``."""
    return _run_context(restored, out_dir).eval_context(out_dir)


def eval_suite(
    restored: RestoredRun,
    evals: dict[str, dict[str, Any]] | None = None,
    out_dir: str | Path | None = None,
) -> EvalSuite:
    """The ``EvalSuite`` the trainer ran: ``evals`` (default: the run's own entries) over
    the run's schedule and ``eval_context``; ``suite.run(restored_snapshot(r))`` evaluates
    a restored checkpoint ``r`` exactly as the trainer did at that step."""
    return _run_context(restored, out_dir).eval_suite(evals, out_dir)


def restored_snapshot(
    restored: RestoredRun, eval_batch_size: int | None = None, predict=None, init_params=None
) -> Snapshot:
    """A ``Snapshot`` whose ``predict(x [n, ...]) -> logits [n, k]`` runs the restored model
    in eval mode on one local device, in batches of ``eval_batch_size`` (default: the
    run's ``train.eval_batch_size``). Pass the ``predict(params, rest, x)`` of an earlier
    call (``snapshot.predict.func``) to reuse its compiled forward for another step.
    ``init_params`` (the step-0 parameters) is what the training-Jacobian evaluator replays."""
    graphdef, params, rest = nnx.split(restored.model, nnx.Param, ...)
    if predict is None:
        batch = eval_batch_size or restored.config.train.eval_batch_size
        predict = make_predict(graphdef, parallel.make_mesh(1), batch)
    opt_state = restored.state.opt_state
    return snapshot(restored.step, graphdef, params, rest, predict, init_params, opt_state)


def reevaluate(
    run_dir: str | Path,
    steps: Iterable[int] | None = None,
    evals: dict[str, dict[str, Any]] | None = None,
    out_dir: str | Path | None = None,
) -> pd.DataFrame:
    """Restore each checkpoint in ``steps`` (default: all) on the local CPU and run
    ``evals`` (default: the run's own ``evals`` config, ``{key: {type, when, **options}}``).

    Returns one row per step: ``step`` and ``<key>/<name>`` for every value evaluated,
    plus ``time/eval_<key>_s``. An evaluator runs at the steps its ``when`` names, as in
    the trainer (its columns are NaN elsewhere). Evaluators are built once and reused;
    the step-0 parameters are restored once, for evaluators that replay training.
    """
    with OpenRun(run_dir) as run:
        suite = run.context.eval_suite(evals, out_dir)
        first = run.restore(0) if 0 in run.steps else None
        init_params = None if first is None else first.state.params
        predict = run.predict()
        rows = []
        for step in run.steps if steps is None else steps:
            restored = first if step == 0 and first is not None else run.restore(step)
            snap = restored_snapshot(restored, predict=predict, init_params=init_params)
            rows.append({"step": step, **suite.run(snap)})
    return pd.DataFrame(rows)
