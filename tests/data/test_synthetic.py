"""Training on synthetic sets (data.synthetic): the loader serves the built set, the trainer
learns from it and is scored on real data, and bad options fail at validation."""

import json
import logging

import numpy as np
import pytest
from dsb_testing import tiny_config

from dsb.data.digits import digits_arrays
from dsb.metrics import read_metrics
from dsb.run_context import RunContext
from dsb.stats.evalsets import build_maxent_set, build_ot_set
from dsb.stats.moments import fit_class_stats
from dsb.train import train

pytestmark = pytest.mark.usefixtures("tfds_dir")


def _digits_stats():
    x, y = digits_arrays()["train"]
    flat = x.reshape(len(y), -1)
    return flat, y, fit_class_stats([(flat, y)], 10)


def test_loader_serves_the_built_maxent_set(tmp_path):
    cfg = tiny_config(
        "evals=classification",
        "data.synthetic.kind=maxent",
        "data.synthetic.set=gaussian",
        "data.synthetic.num_samples=500",
        "data.synthetic.seed=3",
        "+data.synthetic.options.clip=true",
    )
    ctx = RunContext(cfg, tmp_path / "run")
    got = ctx.train_data
    _, _, stats = _digits_stats()
    want = build_maxent_set(stats, "gaussian", 500, 3, clip=True)
    np.testing.assert_array_equal(got["image"].reshape(500, -1), want.x_NxD)
    np.testing.assert_array_equal(got["label"], want.y_N)
    assert got["image"].shape == (500, 8, 8, 1) and got["label"].dtype == np.int32
    # One batch the trainer draws is made of rows of the set.
    batch = ctx.global_sampler(0)
    rows = {r.tobytes() for r in want.x_NxD}
    assert all(b.reshape(-1).tobytes() in rows for b in np.asarray(batch["image"]))
    report = json.loads((tmp_path / "run" / "synthetic_set.json").read_text())
    assert report["set"] == "gaussian" and report["num_samples"] == 500
    assert report["report"]["mean_rel_err"] == pytest.approx(want.report["mean_rel_err"])
    assert report["report"]["extra"]["clip"] is True
    # Evaluation splits stay real.
    x_test, _ = digits_arrays()["test"]
    np.testing.assert_array_equal(ctx.load_eval_split("test")["image"], x_test)


@pytest.mark.usefixtures("fresh_user_cache")
@pytest.mark.parametrize("option", [None, "data_dir", "none", "explicit"])
def test_synthetic_set_is_cached_where_the_probe_cache_option_says(tmp_path, option):
    """data.synthetic.cache_dir means what evals.dsb.cache_dir means (one resolver,
    dsb.cache.resolve_probe_cache): null the user's cache, data_dir the data directory's,
    none nothing, a path itself; never the run directory."""
    from dsb.cache import probe_cache_dir

    where = {
        None: probe_cache_dir(),
        "data_dir": tmp_path / "data" / "dsb_probe_sets",
        "none": None,
        "explicit": tmp_path / "mine",
    }[option]
    value = {None: "null", "explicit": str(tmp_path / "mine")}.get(option, option)
    over = ["evals=classification", "data.synthetic.kind=maxent", "data.synthetic.set=ics",
            "data.synthetic.num_samples=50", f"data.synthetic.cache_dir={value}"]  # fmt: skip
    if option == "data_dir":
        # The digits dataset, built into this data_dir as into any other.
        over.append(f"data.data_dir={tmp_path / 'data'}")
    cached = []
    for run in ("a", "b"):
        ctx = RunContext(tiny_config(*over), tmp_path / run)
        ctx.train_data  # noqa: B018 (builds or loads the set)
        cached.append(json.loads((tmp_path / run / "synthetic_set.json").read_text())["cached"])
        assert not any((tmp_path / run).rglob("*.npz")), "a set was cached in the run dir"
    if where is None:
        assert cached == [False, False]
        assert not probe_cache_dir().exists() or not any(probe_cache_dir().rglob("*.npz"))
    else:
        assert cached == [False, True]
        assert len(list(where.glob("*.npz"))) == 1


def test_ot_set_is_labelled_with_the_target_class(tmp_path):
    cfg = tiny_config(
        "evals=classification",
        "data.synthetic.kind=ot",
        "data.synthetic.set=cqn",
        "data.synthetic.num_samples=300",
    )
    got = RunContext(cfg, tmp_path / "run").train_data
    flat, y, stats = _digits_stats()
    pick = np.sort(np.random.default_rng(0).permutation(len(y))[:300])
    want = build_ot_set(stats, "cqn", flat[pick], y[pick], 0)
    np.testing.assert_array_equal(got["label"], want.y_N)
    np.testing.assert_array_equal(got["image"].reshape(300, -1), want.x_NxD)
    assert np.all(got["label"] != y[pick])  # targets, never the source class


def test_training_on_the_gaussian_set_generalises_to_real_digits(tmp_path, caplog):
    # A 32-unit MLP, 200 AdamW steps on 1600 Gaussian samples of the digit classes, scored
    # on the real test split (chance 0.1). Measured: 0.97 (real training data: 0.96).
    cfg = tiny_config(
        "evals=classification",
        "train.total_steps=200",
        "train.log_every_steps=50",
        "data.synthetic.kind=maxent",
        "data.synthetic.set=gaussian",
    )
    with caplog.at_level(logging.INFO, logger="dsb"):
        train(cfg, tmp_path / "run")
    rows = read_metrics(tmp_path / "run")
    acc = [r["val/accuracy"] for r in rows if "val/accuracy" in r]
    assert acc[-1] > 0.8, acc
    assert "training on synthetic maxent set 'gaussian'" in caplog.text
    step0 = {k: v for r in rows if r["step"] == 0 for k, v in r.items()}
    report = json.loads((tmp_path / "run" / "synthetic_set.json").read_text())
    assert step0["synthetic/cov_rel_err"] == pytest.approx(report["report"]["cov_rel_err"])
    assert step0["synthetic/target_met"] == float(report["report"]["met"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.synthetic.kind=fake", "data.synthetic.kind='fake': must be null, maxent or ot"),
        ("data.synthetic.set=gausian", "data.synthetic.set='gausian': unknown max-ent set"),
        ("+data.synthetic.options.particle_steps=5", "data.synthetic.options.particle_steps"),
        (
            "data.synthetic.set=truncnorm,+data.synthetic.options.gibbs_sweeps=-3",
            "data.synthetic.options.gibbs_sweeps=-3: must be a positive integer",
        ),
        ("data.synthetic.num_samples=0", "data.synthetic.num_samples=0: must be positive"),
        ("data.erasure=leace", "data.synthetic and data.erasure: choose one"),
    ],
)
def test_bad_synthetic_options_fail_at_validation(override, message, monkeypatch):
    import dsb.data.sources

    def no_data(*a, **k):
        raise AssertionError("data loaded before validation")

    monkeypatch.setattr(dsb.data.sources, "load_split", no_data)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        tiny_config("data.synthetic.kind=maxent", *override.split(","))


def test_ot_set_name_is_checked_against_the_ot_registry():
    with pytest.raises(ValueError, match=r"data\.synthetic\.set='box2': unknown OT set"):
        tiny_config("data.synthetic.kind=ot", "data.synthetic.set=box2")
