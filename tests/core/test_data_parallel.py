"""4 simulated CPU devices give the parameters of 1 device with the same global batch."""

import json

import pytest
from dsb_testing import run_python

SCRIPT = r"""
import json, sys, jax, numpy as np
sys.path.insert(0, "tests")
from dsb_testing import tiny_config
from dsb.train import train
assert jax.device_count() == 4, jax.devices()
out = {}
root = "ROOT_DIR"
for model in ("mlp", "resnet"):
    extra = ["model=mlp", "model.kwargs.widths=[64]"] if model == "mlp" else [
        "model=resnet18", "model.kwargs.width=4", "data.augment.crop_padding=1",
        "data.augment.horizontal_flip=true"]
    finals = {}
    for n in (1, 4):
        # SGD: its update is linear in the gradient, so reduction-order rounding stays at
        # rounding level (Adam divides by sqrt(v) and amplifies it on near-zero gradients).
        cfg = tiny_config("train.total_steps=6", "figures=false", f"parallel.num_devices={n}",
                          "optim=sgd", "optim.learning_rate=0.05", *extra)
        res = train(cfg, f"{root}/dp_{model}_{n}")
        leaves = jax.tree.leaves((res.state["params"], res.state["rest"]))
        finals[n] = [np.asarray(x) for x in leaves]
    diffs = [float(np.max(np.abs(a - b)) / (np.max(np.abs(a)) + 1e-12))
             for a, b in zip(finals[1], finals[4])]
    moved = max(float(np.max(np.abs(a))) for a in finals[1])
    out[model] = {"max_rel_diff": max(diffs), "n_leaves": len(diffs), "max_abs_param": moved}
print("RESULT", json.dumps(out))
"""


@pytest.mark.multidevice
def test_four_devices_match_one_device(tmp_path):
    code = SCRIPT.replace("ROOT_DIR", str(tmp_path))
    proc = run_python(code, devices=4, env={"TFDS_DATA_DIR": str(tmp_path / "tfds")})
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    result = json.loads(line.split(" ", 1)[1])
    for model, r in result.items():
        assert r["n_leaves"] >= 4, model
    # Same math, different reduction order: equal up to float32 rounding. BatchNorm's
    # variance (E[x^2] - E[x]^2 over pmean'd moments) amplifies rounding a little, and six
    # steps compound it; a real bug (a missing or doubled reduction) is off by O(1).
    assert result["mlp"]["max_rel_diff"] < 1e-5, result
    assert result["resnet"]["max_rel_diff"] < 1e-4, result
