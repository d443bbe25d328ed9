"""UCI handwritten digits (the 8x8 set scikit-learn ships), as arrays and as a TFDS dataset.

The split is the one of the training-Jacobian reference: ``train_test_split(test_size=197,
random_state=0)`` on ``load_digits()``; pixels are divided by 16 so they lie in [0, 1], NHWC.

``SklearnDigits`` is a TFDS builder whose features are plain Tensors, so building it needs
neither TensorFlow nor the internet; ``tfds.data_source("sklearn_digits")`` reads it back.
Shuffling on write is disabled, so record i of each split is example i of the sklearn split.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow_datasets as tfds

__all__ = ["NUM_TEST", "SklearnDigits", "digits_arrays"]

NUM_TEST = 197


@functools.cache
def digits_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (x [1600, 8, 8, 1] float32, y [1600] int64), "test": (x [197, ...], y)}``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=NUM_TEST, random_state=0)
    return {"train": (x_tr, y_tr), "test": (x_te, y_te)}


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """UCI ML hand-written digits (1,797 8x8 images), offline from scikit-learn."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Reference 1600/197 split, pixels / 16, float32 NHWC."}  # noqa: RUF012

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "UCI ML hand-written digits as shipped by scikit-learn, split with "
                "train_test_split(test_size=197, random_state=0), pixels scaled to [0, 1]."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.float32),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
            homepage="https://archive.ics.uci.edu/dataset/80",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the data ships with scikit-learn
        arrays = digits_arrays()
        return {split: self._generate_examples(*arrays[split]) for split in ("train", "test")}

    def _generate_examples(self, x, y):
        for i, (image, label) in enumerate(zip(x, y)):
            yield i, {"image": image, "label": int(label)}
