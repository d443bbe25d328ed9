"""4 simulated CPU devices give the parameters of 1 device with the same global batch."""

import json

import numpy as np
import pytest
from dsb_testing import ROOT, run_python, tiny_config

SCRIPT = r"""
import json, sys, jax, numpy as np
sys.path.insert(0, "tests")
from dsb_testing import tiny_config
from dsb.train import train
assert jax.device_count() == 4, jax.devices()
out = {}
root = "ROOT_DIR"
for model in MODELS:
    extra = ["model=mlp", "model.kwargs.widths=[64]"] if model == "mlp" else [
        "model=resnet18", "model.kwargs.width=4", "data.augment.crop_padding=1",
        "data.augment.horizontal_flip=true"]
    finals = {}
    for n in (1, 4):
        # SGD: its update is linear in the gradient, so reduction-order rounding stays at
        # rounding level (Adam divides by sqrt(v) and amplifies it on near-zero gradients).
        # No evaluators: they read the parameters, never change them.
        cfg = tiny_config("train.total_steps=6", "figures=false", "~evals",
                          f"parallel.num_devices={n}",
                          "optim=sgd", "optim.learning_rate=0.05", *extra)
        res = train(cfg, f"{root}/dp_{model}_{n}")
        leaves = jax.tree.leaves((res.state.params, res.state.rest))
        finals[n] = [np.asarray(x) for x in leaves]
    diffs = [float(np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-12))
             for a, b in zip(finals[1], finals[4])]
    moved = max(float(np.max(np.abs(a))) for a in finals[1])
    out[model] = {"max_rel_diff": max(diffs), "n_leaves": len(diffs), "max_abs_param": moved}
print("RESULT", json.dumps(out))
"""


@pytest.mark.multidevice
# The MLP in the fast suite (~15 s); the ResNet (BatchNorm's cross-device moments, ~50 s
# of compilation) in the slow lane, which CI also runs.
@pytest.mark.parametrize("model", ["mlp", pytest.param("resnet", marks=pytest.mark.slow)])
def test_four_devices_match_one_device(tmp_path, model):
    code = SCRIPT.replace("ROOT_DIR", str(tmp_path)).replace("MODELS", repr((model,)))
    proc = run_python(code, devices=4, env={"TFDS_DATA_DIR": str(tmp_path / "tfds")})
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    result = json.loads(line.split(" ", 1)[1])
    assert set(result) == {model} and result[model]["n_leaves"] >= 4, result
    # Same math, different reduction order: equal up to float32 rounding. BatchNorm's
    # variance (E[x^2] - E[x]^2 over pmean'd moments) amplifies rounding a little, and six
    # steps compound it; a real bug (a missing or doubled reduction) is off by O(1).
    assert result[model]["max_rel_diff"] < {"mlp": 1e-5, "resnet": 1e-4}[model], result


def _equivalence():
    import importlib.util

    path = ROOT / "experiments" / "data_parallel" / "equivalence.py"
    spec = importlib.util.spec_from_file_location("dp_equivalence", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # ~3 min of 2 cores (195 s measured): the slow lane runs it
@pytest.mark.multidevice
def test_long_default_run_on_four_devices_finishes_and_matches_one_device(tfds_dir):
    """The default job for 512 steps: four 128-step logging windows, and checkpoints with
    the held-out and DSB-probe evaluators at 256 and 512. Before bounded dispatch, 4
    devices deadlocked right after step 128 (XLA aborted with exit 134 after 40 s)."""
    eq = _equivalence()
    result = eq.check(["default"], [1, 4], steps=512, timeout=400)["default"]
    runs = result["runs"]
    assert runs["1"]["status"] == "finished", runs["1"]
    assert runs["4"]["status"] == "finished", runs["4"]
    assert runs["4"]["final_step"] == 512
    # Equal to float32 rounding: tolerances and why are in equivalence.py's docstring.
    assert runs["4"]["early_diff_vs_1"]["rel_fro"] <= result["early_tolerance_rel_fro"], result
    assert runs["4"]["final_diff_vs_1"]["rel_fro"] <= result["final_tolerance_rel_fro"], result
    assert runs["4"]["ok"]


def test_param_diff_sees_what_it_should():
    eq = _equivalence()
    rng = np.random.default_rng(0)
    a = [rng.normal(size=(50, 20)).astype(np.float32), np.float32(rng.normal(size=7))]
    assert eq.param_diff(a, a) == {"rel_fro": 0.0, "max_leaf": 0.0}
    b = [a[0] * (1 + 1e-3), a[1]]
    norm = np.sqrt(np.sum(a[0].astype(np.float64) ** 2) + np.sum(a[1].astype(np.float64) ** 2))
    want = 1e-3 * np.linalg.norm(a[0].astype(np.float64)) / norm
    assert eq.param_diff(a, b)["rel_fro"] == pytest.approx(want, rel=1e-3)
    assert eq.param_diff(a, b)["max_leaf"] == pytest.approx(1e-3, rel=1e-3)
    steps = [np.asarray(3, np.int32)]
    assert eq.param_diff(steps, [np.asarray(4, np.int32)])["rel_fro"] == float("inf")


@pytest.mark.slow
@pytest.mark.multidevice
def test_every_experiment_on_2_4_8_devices_matches_one_device():
    """The experiments users launch (shortened to 512 steps), on 2, 4 and 8 devices."""
    eq = _equivalence()
    results = eq.check(list(eq.EXPERIMENTS), [1, 2, 4, 8], steps=512)
    bad = {
        (name, n): run
        for name, r in results.items()
        for n, run in r["runs"].items()
        if not run["ok"]
    }
    assert not bad, bad


def test_bad_device_layouts_fail_at_start_with_the_key(tmp_path, tfds_dir):
    from dsb.train import train

    with pytest.raises(ValueError, match=r"parallel\.num_devices=2: have 1 devices"):
        train(tiny_config("parallel.num_devices=2"), tmp_path / "a")
    with pytest.raises(ValueError, match=r"train\.max_steps_in_flight=0: must be positive"):
        tiny_config("train.max_steps_in_flight=0")


BAD_LAYOUTS = r"""
import sys
sys.path.insert(0, "tests")
from dsb_testing import tiny_config
from dsb.train import train
cases = [
    ("data.batch_size=30", "data.batch_size=30 is not divisible by the 4 devices"),
    ("parallel.num_devices=8", "parallel.num_devices=8: have 4 devices"),
    ("train.max_steps_in_flight=17", "train.max_steps_in_flight=17: XLA:CPU with 4 devices"),
]
for override, message in cases:
    try:
        train(tiny_config(override), "ROOT_DIR/" + override)
    except ValueError as e:
        assert message in str(e), (override, str(e))
        print("REFUSED", override)
    else:
        raise AssertionError(override + " was accepted")
"""


@pytest.mark.multidevice
def test_bad_layouts_on_four_devices_fail_at_start_with_the_key(tmp_path):
    proc = run_python(
        BAD_LAYOUTS.replace("ROOT_DIR", str(tmp_path)),
        devices=4,
        env={"TFDS_DATA_DIR": str(tmp_path / "tfds")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("REFUSED") == 3, proc.stdout
    # Refused before any data was built or any step ran.
    assert not (tmp_path / "tfds").exists()
