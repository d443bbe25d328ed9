"""Notebook helpers: re-run a run's evaluators on its restored checkpoints, on any machine.

    from dsb.analysis import reevaluate
    df = reevaluate("runs/digits_default/<date>", steps=[0, 256, 16384])

``restored_snapshot`` turns a ``dsb.train.RestoredRun`` into the ``Snapshot`` evaluators
take (its ``predict`` calls the restored model, batched, on the local default device);
``eval_context`` rebuilds the ``EvalContext`` the trainer gave them. With the default
``out_dir`` (the run directory) the evaluators reuse the probe sets the run cached, so the
numbers are those the run logged.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from flax import nnx

from dsb import parallel
from dsb.data.loader import BatchSampler
from dsb.evals.base import EvalContext, Snapshot, build_evaluator, runs_at, split_entry
from dsb.train import RestoredRun, dataset_info, load_checkpoint, make_loader, make_predict

__all__ = ["eval_context", "reevaluate", "restored_snapshot"]


def eval_context(restored: RestoredRun, out_dir: str | Path) -> EvalContext:
    """The ``EvalContext`` the trainer builds for the restored run's config (the run's
    config and its global training batches included); evaluators write to ``out_dir``."""
    cfg = restored.config
    _, num_classes, input_shape = dataset_info(cfg)
    load = make_loader(cfg)

    def train_batch(step: int) -> dict:
        # Built on first use: most evaluators never replay training.
        nonlocal sampler
        if sampler is None:
            data = load(cfg.data.train_split)
            if cfg.data.erasure:  # the trainer trains on the erased split
                from dsb.data.transforms import erase_split

                data = erase_split(data, cfg.data.erasure, num_classes, cfg.data.erasure_shrinkage)
            sampler = BatchSampler(
                data,
                cfg.data.batch_size,
                seed=cfg.data.shuffle_seed,
                reshuffle_each_epoch=cfg.data.reshuffle_each_epoch,
            )
        return sampler(step)

    sampler = None
    return EvalContext(
        load_split=load,
        train_split=cfg.data.train_split,
        num_classes=num_classes,
        input_shape=input_shape,
        run_dir=Path(out_dir),
        seed=cfg.seed,
        config=cfg,
        train_batch=train_batch,
    )


def restored_snapshot(
    restored: RestoredRun, eval_batch_size: int | None = None, predict=None, init_params=None
) -> Snapshot:
    """A ``Snapshot`` whose ``predict(x [n, ...]) -> logits [n, k]`` runs the restored model
    in eval mode on one local device, in batches of ``eval_batch_size`` (default: the
    run's ``train.eval_batch_size``). Pass the ``predict(params, rest, x)`` of an earlier
    call (``snapshot.predict.func``) to reuse its compiled forward for another step.
    ``init_params`` (the step-0 parameters) is what the training-Jacobian hook replays."""
    graphdef, params, rest = nnx.split(restored.model, nnx.Param, ...)
    if predict is None:
        batch = eval_batch_size or restored.config.train.eval_batch_size
        predict = make_predict(graphdef, parallel.make_mesh(1), batch)
    return Snapshot(
        step=restored.step,
        predict=functools.partial(predict, params, rest),
        graphdef=graphdef,
        params=params,
        rest=rest,
        init_params=init_params,
    )


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
    the trainer (its columns are NaN elsewhere). Evaluators are built once and reused.
    """
    run_dir = Path(run_dir)
    first = load_checkpoint(run_dir)  # the newest: its config and the list of steps
    steps = first.available_steps if steps is None else list(steps)
    evals = first.config.evals if evals is None else evals
    ctx = eval_context(first, run_dir if out_dir is None else out_dir)
    evaluators = {}
    for key, entry in evals.items():  # split as the trainer does: type, when, options
        type_name, when, options = split_entry(key, entry)
        evaluators[key] = (when, build_evaluator(ctx, key, type_name, options))
    total = first.config.train.total_steps
    # The step-0 parameters, for evaluators that replay training (training_jacobian).
    init_params = None
    if 0 in first.available_steps:
        init_params = (first if first.step == 0 else load_checkpoint(run_dir, 0)).state["params"]
    rows, predict = [], None
    for step in steps:
        restored = first if step == first.step else load_checkpoint(run_dir, step)
        snap = restored_snapshot(restored, predict=predict, init_params=init_params)
        predict = snap.predict.func
        row: dict[str, Any] = {"step": step}
        for key, (when, ev) in evaluators.items():
            if not runs_at(when, step, total):
                continue
            t0 = time.perf_counter()
            for name, value in ev.run(snap):
                row[f"{key}/{name}"] = float(value)
            row[f"time/eval_{key}_s"] = time.perf_counter() - t0
        rows.append(row)
    return pd.DataFrame(rows)
