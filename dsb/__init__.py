"""dsb: training dynamics and the distributional simplicity bias, in JAX."""

__version__ = "0.1.0"
