"""Registered datasets: which TFDS dataset, which features, shapes and class counts."""

from __future__ import annotations

import dataclasses

from dsb.registry import Registry

__all__ = ["DATASETS", "DatasetSpec", "get_dataset_spec", "register_dataset"]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """How to read one TFDS dataset as (image, label) examples in [0, 1] NHWC."""

    tfds_name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    image_key: str = "image"
    label_key: str = "label"
    # Divide raw pixels by this (255 for uint8 images, 1 for float features already in [0, 1]).
    pixel_scale: float = 255.0
    # Built offline on first use (no download); other datasets must be prepared beforehand.
    builds_offline: bool = False
    # "image": (image, label) classification; "text": token windows for language models,
    # built from ``data.text`` (num_classes and input_shape then come from the corpus).
    kind: str = "image"


DATASETS: Registry[DatasetSpec] = Registry("dataset", config_key="data.name")
for _name, _spec in {
    "digits": DatasetSpec("sklearn_digits", 10, (8, 8, 1), pixel_scale=1.0, builds_offline=True),
    "mnist": DatasetSpec("mnist", 10, (28, 28, 1)),
    "fashion_mnist": DatasetSpec("fashion_mnist", 10, (28, 28, 1)),
    "cifar10": DatasetSpec("cifar10", 10, (32, 32, 3)),
    "svhn_cropped": DatasetSpec("svhn_cropped", 10, (32, 32, 3)),
    "text": DatasetSpec("", 0, (0, 0, 0), kind="text", builds_offline=True),
}.items():
    DATASETS.register(_name, _spec)


def register_dataset(name: str, spec: DatasetSpec) -> None:
    DATASETS.register(name, spec)


def get_dataset_spec(name: str) -> DatasetSpec:
    return DATASETS.get(name)
