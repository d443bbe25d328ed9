"""Checkpoint-time work, shared by the trainer and the notebook helpers (``dsb.analysis``).

- ``TrainState``: the typed, frozen training state that is checkpointed.
- ``RunContext``: what a run is, built from a config and a run directory: its data, its
  batch samplers, its schedule and the ``EvalContext`` its evaluators are built with.
- ``EvalSuite``: the configured evaluators; asks ``dsb.schedule`` which are due at a
  checkpoint, runs them, and names each entry's type (``dsb.plots`` draws figures by type).
- ``RunCheckpoints``: saving, resuming and restoring a run's ``TrainState`` with the data
  position it was written at; ``load_checkpoint`` reopens any step on the local device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from omegaconf import OmegaConf

from dsb import parallel
from dsb.checkpoint import Checkpointer, abstract_like
from dsb.config import Config, to_config
from dsb.data.loader import BatchSampler
from dsb.data.pipeline import DataInfo, data_info, split_loader, training_split
from dsb.evals.base import EvalContext, Snapshot, build_evaluator, split_entry
from dsb.metrics import MetricsWriter
from dsb.optim import make_optimizer
from dsb.schedule import Schedule
from dsb.step import Model, init_model, make_predict

__all__ = [
    "EvalSuite",
    "OpenRun",
    "RestoredRun",
    "RunCheckpoints",
    "RunContext",
    "TrainState",
    "load_checkpoint",
    "load_indices",
    "read_config",
    "snapshot",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- the state
@struct.dataclass
class TrainState:
    """Everything an optimizer step reads and writes, and what a checkpoint holds.

    ``params`` and ``rest`` are the model's ``nnx.Param`` and other variables (BatchNorm
    statistics), ``opt_state`` the optax state, ``step`` the number of updates done
    (int32) and ``rng`` the run's key data (each step folds ``step`` into it).
    """

    params: Any
    rest: Any
    opt_state: Any
    step: jax.Array
    rng: jax.Array

    @classmethod
    def create(
        cls, model: Model, tx: optax.GradientTransformation, seed: int, sharding=None
    ) -> TrainState:
        """Step 0 of a run: the model's initial variables, ``tx.init`` and the run's key,
        placed in ``sharding`` (default: the default device)."""
        return cls(
            params=model.params,
            rest=model.rest,
            opt_state=jax.jit(tx.init, out_shardings=sharding)(model.params),
            step=jax.device_put(jnp.asarray(0, jnp.int32), sharding),
            rng=jax.device_put(_run_key(seed), sharding),
        )

    @classmethod
    def abstract(cls, model: Model, tx: optax.GradientTransformation, sharding=None) -> TrainState:
        """Shapes, dtypes and ``sharding`` of the state, without computing it: the target a
        checkpoint is restored into."""
        state = cls(
            params=model.params,
            rest=model.rest,
            opt_state=jax.eval_shape(tx.init, model.params),
            step=jax.ShapeDtypeStruct((), jnp.int32),
            rng=jax.eval_shape(_run_key, 0),
        )
        return abstract_like(state, sharding=sharding)

    def to_dict(self) -> dict[str, Any]:
        """The checkpointed form (a dict, as checkpoints have always been written)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _run_key(seed: int) -> jax.Array:
    return jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1))


# -------------------------------------------------------------------------- the context
@dataclasses.dataclass
class RunContext:
    """A run's config and directory, and what follows from them.

    ``write_reports``: whether building the data writes its reports into ``run_dir`` (the
    erasure report); the trainer's process 0 does, notebooks re-deriving a run do not.
    """

    config: Config
    run_dir: Path
    is_main_process: bool = True
    write_reports: bool = True

    @classmethod
    def from_run_dir(cls, run_dir: str | Path) -> RunContext:
        """The context of a finished or running run, from its ``config.yaml``."""
        run_dir = Path(run_dir)
        return cls(read_config(run_dir), run_dir, write_reports=False)

    @functools.cached_property
    def info(self) -> DataInfo:
        return data_info(self.config)

    @functools.cached_property
    def schedule(self) -> Schedule:
        return Schedule.from_config(self.config)

    @functools.cached_property
    def load_split(self):
        return split_loader(self.config)

    @functools.cached_property
    def _train_data_and_report(self) -> tuple[dict[str, np.ndarray], dict | None, Any]:
        report = self.write_reports and self.is_main_process and self.config.data.erasure
        return training_split(
            self.config,
            self.load_split,
            self.run_dir / "erasure.json" if report else None,
            return_eraser=True,
        )

    @functools.cached_property
    def load_eval_split(self):
        """``split -> host arrays`` for evaluators: ``load_split``, except that with
        ``data.erase_eval_splits`` every split other than ``data.train_split`` goes
        through the training split's erasure maps (``dsb.data.transforms.apply_eraser``;
        cached). The training split itself stays real here, as without the option (the
        DSB probes fit their statistics on it)."""
        d = self.config.data
        if not (d.erasure and d.erase_eval_splits):
            return self.load_split

        @functools.cache
        def load(split: str) -> dict[str, np.ndarray]:
            if split == d.train_split:
                return self.load_split(split)
            from dsb.data.transforms import apply_eraser

            return apply_eraser(self._train_data_and_report[2], self.load_split(split))

        return load

    @property
    def full_train_data(self) -> dict[str, np.ndarray]:
        """The whole training split, concept-erased when ``data.erasure`` is set (the
        erasure is always fitted on the whole split); ``data.train_indices`` and the
        early-stopping sets index into it."""
        return self._train_data_and_report[0]

    @functools.cached_property
    def train_data(self) -> dict[str, np.ndarray]:
        """The examples the trainer samples: ``full_train_data``, or its
        ``data.train_indices`` subset."""
        full = self.full_train_data
        if self.config.data.train_indices is None:
            return full
        idx = load_indices(self.config.data.train_indices, len(full["label"]), "data.train_indices")
        return {k: v[idx] for k, v in full.items()}

    def erasure_metrics(self) -> dict[str, float]:
        """The erasure's achieved residuals and ``target_met`` (1.0 when every check of
        ``erasure.json`` met its tolerance) as ``erasure/...`` metrics; empty without
        erasure. The trainer logs them with step 0."""
        report = self._train_data_and_report[1]
        if report is None:
            return {}
        out = {f"erasure/{k}": float(v) for k, v in report["residuals"].items()}
        if "barycenter" in report:
            out["erasure/barycenter_residual"] = float(report["barycenter"]["residual"])
            out["erasure/barycenter_iterations"] = float(report["barycenter"]["iterations"])
        return out | {"erasure/target_met": float(report["met"])}

    def create_run_dir(self) -> None:
        """Process 0: make the run directory and write the run's ``config.yaml``."""
        if self.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            yaml = OmegaConf.to_yaml(OmegaConf.structured(self.config))
            (self.run_dir / "config.yaml").write_text(yaml)

    def metrics_writer(self) -> MetricsWriter:
        """``metrics.jsonl`` plus the sinks ``logging`` asks for, written by process 0."""
        return MetricsWriter(
            self.run_dir,
            enabled=self.is_main_process,
            tensorboard=self.config.logging.tensorboard,
            wandb=self.config.logging,
            config=self.config,
        )

    def sampler(self, process_index: int = 0, process_count: int = 1) -> BatchSampler:
        """Batch ``s`` of the run (this process's part of it), as the trainer draws it."""
        d = self.config.data
        return BatchSampler(
            self.train_data,
            d.batch_size,
            seed=d.shuffle_seed,
            process_index=process_index,
            process_count=process_count,
            reshuffle_each_epoch=d.reshuffle_each_epoch,
        )

    @functools.cached_property
    def global_sampler(self) -> BatchSampler:
        return self.sampler()

    def eval_context(self, out_dir: str | Path | None = None) -> EvalContext:
        """What evaluators are built with; they write into ``out_dir`` (default: the run
        directory, whose cached probe sets they then reuse)."""
        info = self.info
        return EvalContext(
            load_split=self.load_eval_split,
            train_split=self.config.data.train_split,
            num_classes=info.num_classes,
            input_shape=info.input_shape,
            run_dir=Path(self.run_dir if out_dir is None else out_dir),
            seed=self.config.seed,
            is_main_process=self.is_main_process,
            config=self.config,
            # The global batch update ``step + 1`` was computed on; built on first use,
            # since most evaluators never replay training.
            train_batch=lambda step: self.global_sampler(step),
            vocab_size=info.vocab_size,
        )

    def eval_suite(
        self, evals: Mapping[str, Any] | None = None, out_dir: str | Path | None = None
    ) -> EvalSuite:
        """The evaluator suite of ``evals`` (default: the run's own ``evals`` entries) over
        the run's schedule, built with ``eval_context(out_dir)``."""
        evals = self.config.evals if evals is None else evals
        return EvalSuite(self.eval_context(out_dir), evals, self.schedule)


def load_indices(path: str | Path, n: int, what: str) -> np.ndarray:
    """The distinct int indices in ``[0, n)`` stored in the ``.npy`` file ``path``; raises
    ``ValueError`` naming ``what`` otherwise."""
    idx = np.load(path)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer) or len(idx) == 0:
        raise ValueError(f"{what}={path}: must hold a non-empty 1-D array of ints")
    if idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"{what}={path}: indices must lie in [0, {n}) (the training split)")
    if len(np.unique(idx)) != len(idx):
        raise ValueError(f"{what}={path}: indices must be distinct")
    return idx.astype(np.int64)


def read_config(run_dir: str | Path) -> Config:
    """The validated ``Config`` a run directory was written with."""
    raw = OmegaConf.load(Path(run_dir) / "config.yaml")
    return to_config(OmegaConf.merge(OmegaConf.structured(Config), raw))


# ---------------------------------------------------------------------- the evaluators
def snapshot(step: int, graphdef, params, rest, predict, init_params=None) -> Snapshot:
    """The model at checkpoint ``step`` as evaluators see it; ``predict(params, rest, x)``
    is a compiled forward (``dsb.step.make_predict``), bound here to this step's state."""
    return Snapshot(
        step=step,
        predict=functools.partial(predict, params, rest),
        graphdef=graphdef,
        params=params,
        rest=rest,
        init_params=init_params,
    )


class EvalSuite:
    """The evaluators of an ``evals`` config, ``{key: {type, when, **options}}``.

    Each entry is checked when the suite is made: its type and options, and that every
    step its ``when`` names is a checkpoint of ``schedule``. The evaluators themselves are
    built on the first ``run`` (their set-up is paid once, and only by runs that reach a
    checkpoint), all of them, in config order.
    """

    def __init__(self, ctx: EvalContext, evals: Mapping[str, Any], schedule: Schedule):
        self.ctx = ctx
        self.schedule = schedule
        self.entries = {key: split_entry(key, entry) for key, entry in evals.items()}
        for key, (_, when, _) in self.entries.items():
            schedule.check_when(key, when)
        self._evaluators: dict[str, Any] | None = None

    @property
    def types(self) -> dict[str, str]:
        """``{key: evaluator type}``: what ``dsb.plots.plot_run`` draws figures from."""
        return {key: type_name for key, (type_name, _, _) in self.entries.items()}

    def due(self, step: int) -> list[str]:
        """The keys of the evaluators that run at checkpoint ``step``."""
        entries = self.entries.items()
        return [k for k, (_, when, _) in entries if self.schedule.evaluates(when, step)]

    def build(self) -> dict[str, Any]:
        if self._evaluators is None:
            self._evaluators = {
                key: build_evaluator(self.ctx, key, type_name, options)
                for key, (type_name, _, options) in self.entries.items()
            }
        return self._evaluators

    def run(self, snapshot: Snapshot) -> dict[str, float]:
        """``{"<key>/<name>": value}`` of every evaluator due at ``snapshot.step``, plus
        ``time/eval_<key>_s``."""
        evaluators = self.build()
        values: dict[str, float] = {}
        for key in self.due(snapshot.step):
            t0 = time.perf_counter()
            for name, value in evaluators[key].run(snapshot):
                values[f"{key}/{name}"] = float(value)
            values[f"time/eval_{key}_s"] = time.perf_counter() - t0
        return values


# ------------------------------------------------------------------------ checkpoints
class RunCheckpoints:
    """A run's checkpoints: the ``TrainState`` at each scheduled step, with the position
    of the data stream it was written at (``meta["data"]``).

    A checkpoint written on preemption (``dsb.preemption``) may be at any step; it also
    holds the training metrics of the steps since the last logging step
    (``meta["train_window"]``), which ``resume`` hands back as ``resumed_window`` so that
    the resumed run logs the same means.
    """

    def __init__(self, ctx: RunContext, read_only: bool = False):
        cfg = ctx.config
        self.ctx = ctx
        self.resumed_window: dict[str, Any] = {}
        with _quiet_read_only(read_only):
            self.checkpointer = Checkpointer(
                Path(ctx.run_dir) / "checkpoints",
                keep_steps=() if read_only else ctx.schedule.kept_checkpoints,
                keep_interval=cfg.ckpt.keep_interval,
                async_save=cfg.ckpt.async_save and not read_only,
                read_only=read_only,
            )

    @property
    def directory(self) -> Path:
        return self.checkpointer.directory

    def steps(self) -> list[int]:
        return self.checkpointer.all_steps()

    def save(self, step: int, state: TrainState, train_window: dict | None = None) -> None:
        """Save ``state`` after ``step`` updates; ``train_window``: the host metrics of the
        steps not yet logged (``dsb.train._InFlight.window``), for a preemption checkpoint.
        """
        d = self.ctx.config.data
        meta = {
            "step": step,
            "data": {
                "next_step": step,
                "shuffle_seed": d.shuffle_seed,
                "global_batch_size": d.batch_size,
            },
        }
        if train_window:
            meta["train_window"] = train_window
        self.checkpointer.save(step, state.to_dict(), meta)

    def wait(self) -> None:
        """Block until every checkpoint saved so far is on disk."""
        self.checkpointer.wait()

    def restore(self, step: int, target: TrainState) -> tuple[TrainState, dict[str, Any]]:
        state, meta = self.checkpointer.restore(step, target.to_dict())
        return TrainState(**state), meta

    def restore_latest(
        self, target: TrainState, max_step: int | None = None
    ) -> tuple[int, TrainState, dict[str, Any]] | None:
        """The newest readable checkpoint (up to ``max_step``): ``(step, state, meta)``,
        or ``None``; unreadable ones are skipped with a warning."""
        restored = self.checkpointer.restore_latest(target.to_dict(), max_step=max_step)
        if restored is None:
            return None
        step, state, meta = restored
        return step, TrainState(**state), meta

    def resume(self, target: TrainState) -> tuple[int, TrainState] | None:
        """The newest readable checkpoint up to the last step, or ``None``. Later (damaged)
        checkpoints are deleted, since the run retrains and saves them anew."""
        restored = self.restore_latest(target, max_step=self.ctx.schedule.total_steps)
        if restored is None:
            return None
        start, state, meta = restored
        for later in [s for s in self.steps() if s > start]:
            self.checkpointer.manager.delete(later)
        seed = self.ctx.config.data.shuffle_seed
        if meta["data"]["next_step"] != start or meta["data"]["shuffle_seed"] != seed:
            raise ValueError(
                f"checkpoint {start} was written by a run with another data order: {meta['data']}"
            )
        self.resumed_window = meta.get("train_window", {})
        log.info("resumed from checkpoint %d in %s", start, self.directory)
        return start, state

    def close(self) -> None:
        self.checkpointer.close()


@contextlib.contextmanager
def _quiet_read_only(read_only: bool):
    """Orbax logs two warnings for every read-only manager it opens ("read_only=True,
    setting ...", "Given directory is read only"): they restate what was asked for, and
    a notebook opening 16 checkpoints printed 32 of them."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    if read_only:
        absl_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl_logger.setLevel(level)


# -------------------------------------------------------------------- notebooks, anywhere
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
