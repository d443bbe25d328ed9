"""Image classifiers and language models, registered by name (see ``registry``)."""

from dsb.models.registry import available_models, build_model, check_model_kwargs, register

__all__ = ["available_models", "build_model", "check_model_kwargs", "register"]
