"""UCI handwritten digits (the 8x8 set scikit-learn ships), as arrays and as a TFDS builder.

The split is the one of the training-Jacobian reference: ``train_test_split(test_size=197,
random_state=0)`` on ``load_digits()``, pixels divided by 16 so they lie in [0, 1], NHWC.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["NUM_TEST", "digits_arrays"]

NUM_TEST = 197


@functools.cache
def digits_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (x [1600, 8, 8, 1] float32, y [1600] int64), "test": (..197..)}``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=NUM_TEST, random_state=0)
    return {"train": (x_tr, y_tr), "test": (x_te, y_te)}
