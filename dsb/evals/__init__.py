"""Checkpoint evaluators, registered by type name (see ``base``)."""

from dsb.evals import classification, dsb_probes, ngram_probes  # noqa: F401  (register types)
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
