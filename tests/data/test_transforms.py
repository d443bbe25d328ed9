"""erase_split: the erased split, its report and erasure.json with stated targets."""

import json
import logging

import numpy as np
import pytest

from dsb.data.digits import digits_arrays
from dsb.data.transforms import ERASURE_TOL, erase_split, erase_split_with_report

pytestmark = pytest.mark.usefixtures("one_blas_thread")


@pytest.fixture(scope="module")
def digits_split():
    x, y = digits_arrays()["train"]
    return {"image": x, "label": y}


@pytest.mark.parametrize("kind", ["leace", "qleace"])
def test_erase_split_report_meets_its_targets(digits_split, kind, tmp_path, caplog):
    path = tmp_path / "erasure.json"
    with caplog.at_level(logging.WARNING, logger="dsb"):
        out, report = erase_split_with_report(digits_split, kind, 10, report_path=path)
    assert json.loads(path.read_text()) == report
    assert not caplog.records  # nothing missed, nothing warned
    x, y = digits_split["image"], digits_split["label"]
    assert out["image"].dtype == np.float32 and out["image"].shape == x.shape
    names = {"leace": {"class_mean_spread"}, "qleace": {"class_mean_spread",
             "class_cov_max_rel_diff", "barycenter_residual"}}[kind]  # fmt: skip
    assert set(report["checks"]) == names and report["met"]
    for c in report["checks"].values():
        assert c["met"] and c["achieved"] <= c["tol"]
    # The residuals are those of the float32 output, recomputed here in float64.
    flat = out["image"].reshape(len(y), -1).astype(np.float64)
    means = np.stack([flat[y == k].mean(0) for k in range(10)])
    pri = np.bincount(y) / len(y)
    spread = np.sqrt(pri @ np.sum((means - pri @ means) ** 2, 1)) / np.sqrt(flat.var(0).sum())
    np.testing.assert_allclose(report["residuals"]["class_mean_spread"], spread, rtol=1e-6)
    assert report["checks"]["class_mean_spread"]["tol"] == ERASURE_TOL
    if kind == "qleace":
        assert report["support"]["dim_support"] == 43
        assert report["support"]["dim_complement"] == 21
        assert 0 < report["support"]["complement_variance_removed_fraction"] < 0.1
        assert report["barycenter"]["converged"]
        covs = [np.cov(flat[y == k].T, bias=True) for k in range(10)]
        pool = np.einsum("k,kij->ij", pri, covs)
        worst = max(np.linalg.norm(c - pool) / np.linalg.norm(pool) for c in covs)
        assert worst < ERASURE_TOL
        np.testing.assert_allclose(report["residuals"]["class_cov_max_rel_diff"], worst)
    # erase_split keeps its signature and returns the same data.
    np.testing.assert_array_equal(erase_split(digits_split, kind, 10)["image"], out["image"])


def test_erase_split_flags_shrinkage_residual(digits_split, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="dsb"):
        _, report = erase_split_with_report(
            digits_split, "qleace", 10, [1.0, 0.05], report_path=tmp_path / "e.json"
        )
    cov = report["checks"]["class_cov_max_rel_diff"]
    assert not cov["met"] and cov["achieved"] > 0.05 and "shrunk" in cov["why"]
    assert report["checks"]["class_mean_spread"]["met"] and not report["met"]
    assert report["shrinkage"] == [1.0, 0.05]
    assert "class_cov_max_rel_diff missed" in caplog.text
    assert json.loads((tmp_path / "e.json").read_text()) == report
