"""Training on concept-erased data (LEACE / QLEACE) through the trainer."""

import json

import numpy as np
import pytest
from dsb_testing import tiny_config

from dsb.data.digits import digits_arrays
from dsb.data.transforms import erase_split
from dsb.metrics import read_metrics
from dsb.train import train


@pytest.mark.parametrize(("kind", "shrinkage"), [("leace", None), ("qleace", None)])
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

        # Without shrinkage QLEACE is exact on the data (float32 output): the gap vanishes.
        ratio = spread(out) / spread(flat)
        assert ratio < 1e-5, ratio


@pytest.mark.parametrize("kind", ["leace", "qleace"])
def test_training_on_erased_digits_logs_the_achieved_residuals(tmp_path, tfds_dir, kind):
    cfg = tiny_config(f"data.erasure={kind}", "train.total_steps=16")
    train(cfg, tmp_path / "run")
    report = json.loads((tmp_path / "run" / "erasure.json").read_text())
    assert report["kind"] == kind and report["mean_abs_change"] > 0
    rows = read_metrics(tmp_path / "run")
    assert rows[-1]["step"] == 16
    # The residuals the erasure reached are metrics of step 0, equal to erasure.json's.
    logged = {k: v for r in rows if r["step"] == 0 for k, v in r.items() if "erasure/" in k}
    assert logged["erasure/target_met"] == 1.0 == float(report["met"])
    for k, v in report["residuals"].items():
        assert logged[f"erasure/{k}"] == pytest.approx(v, rel=1e-12)
    assert logged["erasure/class_mean_spread"] <= 1e-6
    # LEACE leaves the covariances alone; QLEACE equalises them too.
    assert (logged["erasure/class_cov_max_rel_diff"] <= 1e-6) == (kind == "qleace")
    assert ("erasure/barycenter_residual" in logged) == (kind == "qleace")


def test_erasure_option_is_validated():
    with pytest.raises(ValueError, match=r"data\.erasure"):
        tiny_config("data.erasure=lace")


def _class_mean_gap(x, y) -> float:
    """RMS gap between the class means and their mean, over classes and pixels."""
    x = x.reshape(len(y), -1)
    means = np.stack([x[y == k].mean(0) for k in np.unique(y)])
    return float(np.sqrt(((means - means.mean(0)) ** 2).mean()))


def _noise_gap(x, y) -> float:
    """The same gap with the labels shuffled: what sampling noise alone leaves."""
    rng = np.random.default_rng(0)
    return float(np.mean([_class_mean_gap(x, rng.permutation(y)) for _ in range(20)]))


# LEACE's map is one for all classes; QLEACE moves each example by its own label's map.
@pytest.mark.parametrize("kind", ["leace", "qleace"])
def test_erase_eval_splits_moves_evaluation_splits_through_the_training_maps(
    tmp_path, tfds_dir, kind
):
    from dsb.data.transforms import apply_eraser
    from dsb.run_context import RunContext

    cfg = tiny_config(f"data.erasure={kind}", "data.erase_eval_splits=true")
    ctx = RunContext(cfg, tmp_path / "run", write_reports=False)
    load = ctx.eval_context().load_split
    real = ctx.load_split("test")
    erased = load("test")
    # Each test image went through the map the training split was erased with ...
    _, _, eraser = ctx._train_data_and_report
    np.testing.assert_array_equal(erased["image"], apply_eraser(eraser, real)["image"])
    np.testing.assert_array_equal(erased["label"], real["label"])
    # ... which, fitted on other examples, closes the test split's class-mean gaps down to
    # the sampling noise of 20 digits a class: on the 197 test digits the RMS gap falls
    # from 0.18 (3x noise) to 0.040 (LEACE) / 0.043 (QLEACE), the 0.041 / 0.043 of shuffled
    # labels.
    x, y = real["image"], real["label"]
    assert _class_mean_gap(x, y) > 2.5 * _noise_gap(x, y)
    assert _class_mean_gap(erased["image"], y) < 1.25 * _noise_gap(erased["image"], y)
    # The training split stays real for evaluators (the DSB probes fit statistics on it).
    np.testing.assert_array_equal(
        load(cfg.data.train_split)["image"],
        real_train := ctx.load_split(cfg.data.train_split)["image"],
    )
    assert not np.array_equal(real_train, ctx.train_data["image"])
    # Without the option evaluation splits stay real.
    plain = RunContext(tiny_config("data.erasure=leace"), tmp_path / "p", write_reports=False)
    np.testing.assert_array_equal(plain.eval_context().load_split("test")["image"], real["image"])
    with pytest.raises(ValueError, match=r"erase_eval_splits=true: needs data\.erasure"):
        tiny_config("data.erase_eval_splits=true")
