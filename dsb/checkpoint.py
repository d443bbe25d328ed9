"""Orbax checkpoints: what is saved, when it is kept, and how to restore it anywhere.

A checkpoint is the whole training state (params, non-parameter model state such as
BatchNorm statistics, optimizer state, step, RNG key) plus JSON metadata holding the data
iterator position. Preservation is explicit: every scheduled (log-spaced) checkpoint is
kept forever, interval checkpoints only as the latest ``keep_interval``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

__all__ = ["Checkpointer", "abstract_like"]

log = logging.getLogger(__name__)


def abstract_like(tree, sharding=None):
    """ShapeDtypeStructs of ``tree`` (optionally all with ``sharding``): a restore target."""

    def leaf(x):
        return jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=sharding or getattr(x, "sharding", None)
        )

    return jax.tree.map(leaf, tree)


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
