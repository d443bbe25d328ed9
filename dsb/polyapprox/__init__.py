"""Closed-form polynomial (linear, quadratic) approximants of MLPs under Gaussian inputs.

``closed_form`` holds the math (pure JAX, float64 under ``jax.enable_x64``); ``plots`` the
run figures of the ``poly_approx`` evaluator (``dsb.evals.poly_approx``).
"""

from dsb.polyapprox.closed_form import (
    QUAD_POINTS,
    SUPPORTED_ACTIVATIONS,
    Approximant,
    GaussianInput,
    activation_moments,
    activation_name,
    block_approximants,
    gaussian_input,
    jackknife_se_bias,
    mlp_approximants,
    mlp_function,
    quadratic_eigen,
    stein_mc_approximants,
    stein_mc_jackknife,
)

__all__ = [
    "QUAD_POINTS",
    "SUPPORTED_ACTIVATIONS",
    "Approximant",
    "GaussianInput",
    "activation_moments",
    "activation_name",
    "block_approximants",
    "gaussian_input",
    "jackknife_se_bias",
    "mlp_approximants",
    "mlp_function",
    "quadratic_eigen",
    "stein_mc_approximants",
    "stein_mc_jackknife",
]
