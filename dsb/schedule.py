"""One source of truth for "is it time": checkpoint, evaluation and logging steps."""

from __future__ import annotations

__all__ = ["checkpoint_steps", "is_log_step", "log_spaced_steps"]


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
