"""Orbax checkpoints: what is saved, when it is kept, and how to restore it anywhere.

A checkpoint is the whole training state (params, non-parameter model state such as
BatchNorm statistics, optimizer state, step, RNG key) plus JSON metadata holding the data
iterator position. Preservation is explicit: every scheduled (log-spaced) checkpoint is
kept forever, interval checkpoints only as the latest ``keep_interval``.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from dsb.run_context import RunContext
from dsb.step import TrainState

__all__ = ["Checkpointer", "RunCheckpoints"]

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(
        self,
        directory: str | Path,
        keep_steps: list[int] | tuple[int, ...] = (),
        keep_interval: int = 2,
        async_save: bool = True,
        read_only: bool = False,
    ):
        self.directory = Path(directory).absolute()
        policies = [ocp.checkpoint_managers.LatestN(max(1, keep_interval))]
        if keep_steps:
            policies.append(ocp.checkpoint_managers.CustomSteps(list(keep_steps)))
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=async_save,
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            # The trainer's schedule decides when to save (``save(..., force=True)``).
            save_decision_policy=ocp.checkpoint_managers.SpecificStepsPolicy(steps=[]),
            create=not read_only,
            read_only=read_only,
            cleanup_tmp_directories=not read_only,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        return out["state"], out["meta"]

    def restore_latest(self, abstract_state: Any, max_step: int | None = None):
        """Restore the newest readable checkpoint; ``None`` if there is none.

        A checkpoint that fails to restore (partially written, truncated, corrupt) is skipped
        with a warning and the one before it is tried.
        """
        for step in reversed(self.all_steps()):
            if max_step is not None and step > max_step:
                continue
            try:
                state, meta = self.restore(step, abstract_state)
            except Exception as e:  # orbax raises many types for damaged files
                msg = (
                    f"checkpoint at step {step} in {self.directory} is unreadable "
                    f"({type(e).__name__}: {e}); trying the previous one"
                )
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
                log.warning(msg)
                continue
            return step, state, meta
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


# ------------------------------------------------------------------ a run's checkpoints
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
