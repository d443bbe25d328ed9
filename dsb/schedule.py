"""One source of truth for "is it time": checkpoint, evaluation and logging steps.

Step ``s`` means the parameters after ``s`` optimizer updates (0 is the initialisation).
The trainer checkpoints at ``checkpoint_steps``; evaluators run at checkpoints only, at
those their ``when`` selects (``evaluates``); ``check_when`` refuses a ``when`` naming a
step that is not a checkpoint, which would otherwise silently never run.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

__all__ = [
    "Schedule",
    "check_when",
    "checkpoint_steps",
    "evaluates",
    "is_log_step",
    "log_spaced_steps",
]


def log_spaced_steps(total_steps: int) -> list[int]:
    """``[0, 1, 2, 4, ..., 2^k, total_steps]`` with ``2^k <= total_steps``; step s means
    the parameters after s optimizer updates, so 0 is the initialisation."""
    if total_steps < 0:
        raise ValueError(f"total_steps must be >= 0, got {total_steps}")
    steps = [0]
    p = 1
    while p <= total_steps:
        steps.append(p)
        p *= 2
    if steps[-1] != total_steps:
        steps.append(total_steps)
    return steps


def checkpoint_steps(
    total_steps: int, log_spaced: bool = True, every_steps: int | None = None
) -> list[int]:
    """Every step at which the trainer checkpoints and runs the evaluators (sorted)."""
    steps = {0, total_steps}
    if log_spaced:
        steps.update(log_spaced_steps(total_steps))
    if every_steps:
        steps.update(range(0, total_steps + 1, every_steps))
    return sorted(steps)


def is_log_step(step: int, every: int, total_steps: int) -> bool:
    """Training metrics are logged after update ``step`` (1-based count of updates)."""
    return step % every == 0 or step == total_steps


def check_when(key: str, when: Any, checkpoints: Sequence[int] | None = None) -> None:
    """Validate ``evals.<key>.when``: ``"all"``, ``"last"`` or a list of steps, each of them
    one of ``checkpoints`` (when given)."""
    if when in ("all", "last"):
        return
    if not (isinstance(when, list) and all(isinstance(s, int) for s in when)):
        raise ValueError(f"evals.{key}.when={when!r}: must be 'all', 'last' or a list of steps")
    if checkpoints is not None:
        missing = sorted(set(when) - set(checkpoints))
        if missing:
            raise ValueError(
                f"evals.{key}.when: steps {missing} are not checkpoint steps, so the "
                f"evaluator would never run there; checkpoint steps are {list(checkpoints)} "
                "(add interval checkpoints with ckpt.every_steps)"
            )


def evaluates(when: Any, step: int, total_steps: int) -> bool:
    """Whether an evaluator with this ``when`` runs at checkpoint ``step``."""
    if when == "all":
        return True
    if when == "last":
        return step == total_steps
    return step in when


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The steps of one run: when it logs, checkpoints, keeps checkpoints and evaluates."""

    total_steps: int
    log_every_steps: int
    log_spaced: bool = True
    every_steps: int | None = None

    @classmethod
    def from_config(cls, cfg) -> Schedule:
        """From a ``dsb.config.Config``: ``train.total_steps``, ``train.log_every_steps``
        and ``ckpt.log_spaced`` / ``ckpt.every_steps``."""
        return cls(
            cfg.train.total_steps,
            cfg.train.log_every_steps,
            cfg.ckpt.log_spaced,
            cfg.ckpt.every_steps,
        )

    @functools.cached_property
    def checkpoints(self) -> list[int]:
        """Every step at which the trainer checkpoints and runs the evaluators."""
        return checkpoint_steps(self.total_steps, self.log_spaced, self.every_steps)

    @property
    def kept_checkpoints(self) -> list[int]:
        """Checkpoints kept forever (interval ones are kept only as the latest few)."""
        return checkpoint_steps(self.total_steps, self.log_spaced, None)

    def is_checkpoint(self, step: int) -> bool:
        return step in self._checkpoint_set

    def is_log(self, step: int) -> bool:
        return is_log_step(step, self.log_every_steps, self.total_steps)

    def evaluates(self, when: Any, step: int) -> bool:
        return self.is_checkpoint(step) and evaluates(when, step, self.total_steps)

    def check_when(self, key: str, when: Any) -> None:
        check_when(key, when, self.checkpoints)

    @functools.cached_property
    def _checkpoint_set(self) -> frozenset[int]:
        return frozenset(self.checkpoints)
