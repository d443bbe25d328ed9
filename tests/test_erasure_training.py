"""Training on concept-erased data (LEACE / QLEACE) through the trainer."""

import json

import numpy as np
import pytest
from dsb_testing import tiny_config

from dsb.data.digits import digits_arrays
from dsb.data.transforms import erase_split
from dsb.metrics import read_metrics
from dsb.train import train


@pytest.mark.parametrize(("kind", "shrinkage"), [("leace", None), ("qleace", [1.0, 0.05])])
def test_erase_split_equalises_class_statistics(kind, shrinkage):
    x, y = digits_arrays()["train"]
    out = erase_split({"image": x, "label": y}, kind, 10, shrinkage)["image"].reshape(len(y), -1)
    means = np.stack([out[y == k].mean(0) for k in range(10)])
    assert np.abs(means - means.mean(0)).max() < 1e-4  # class means coincide
    raw_means = np.stack([x.reshape(len(y), -1)[y == k].mean(0) for k in range(10)])
    assert np.abs(raw_means - raw_means.mean(0)).max() > 0.3  # ...which they did not before
    if kind == "qleace":
        flat = x.reshape(len(y), -1)

        def spread(z):  # largest entrywise gap between a class covariance and class 0's
            covs = [np.cov(z[y == k].T, bias=True) for k in range(10)]
            return max(np.abs(c - covs[0]).max() for c in covs)

        # Exact for the shrunk Gaussian model the maps were built for (tests/stats); on the
        # empirical covariances the gap shrinks several-fold.
        ratio = spread(out) / spread(flat)
        assert ratio < 0.25, ratio


def test_training_on_leace_erased_digits(tmp_path, tfds_dir):
    cfg = tiny_config("data.erasure=leace", "train.total_steps=16")
    train(cfg, tmp_path / "run")
    report = json.loads((tmp_path / "run" / "erasure.json").read_text())
    assert report["kind"] == "leace" and report["mean_abs_change"] > 0
    assert read_metrics(tmp_path / "run")[-1]["step"] == 16


def test_erasure_option_is_validated():
    with pytest.raises(ValueError, match=r"data\.erasure"):
        tiny_config("data.erasure=lace")
