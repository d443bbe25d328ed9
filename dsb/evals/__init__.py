"""Checkpoint evaluators, registered by type name (see ``base``)."""

from dsb.evals import classification  # noqa: F401  (registers "classification")
from dsb.evals.base import (
    EvalContext,
    Snapshot,
    available_evaluators,
    build_evaluator,
    register_evaluator,
)

__all__ = [
    "EvalContext",
    "Snapshot",
    "available_evaluators",
    "build_evaluator",
    "register_evaluator",
]
