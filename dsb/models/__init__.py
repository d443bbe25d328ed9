"""Image classifiers and language models, registered by name (see ``registry``)."""

from dsb.models.registry import available_models, build_model, check_model_kwargs, register

# Importing a family module registers its models.
from dsb.models import convnext, lenet, mlp, regnet, resnet, swin, transformer, vit  # noqa: F401  isort: skip

__all__ = ["available_models", "build_model", "check_model_kwargs", "register"]
