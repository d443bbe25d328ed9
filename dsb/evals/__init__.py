"""Checkpoint evaluators, registered by type name (see ``base``)."""

from dsb.evals import (  # noqa: F401  (importing registers the evaluator types)
    classification,
    dsb_probes,
    ngram_probes,
    poly_approx,
    sharpness,
    training_jacobian,
)
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
