"""Curvature of the loss across training: sharpness, the loss Hessian and its Gauss-Newton
part, matrix-free (``hessian``), and the sharpness figure (``plots``)."""

from dsb.curvature.hessian import (
    CurvatureOperator,
    TopEigen,
    TraceEstimate,
    adam_preconditioner,
    hutchinson_trace,
    stability_threshold,
    top_eigenpairs,
)

__all__ = [
    "CurvatureOperator",
    "TopEigen",
    "TraceEstimate",
    "adam_preconditioner",
    "hutchinson_trace",
    "stability_threshold",
    "top_eigenpairs",
]
