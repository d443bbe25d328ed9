"""The sharpness evaluator inside real dsb runs: its values recomputed by value from the
run's restored checkpoint (dense Hessian, schedule, threshold formula), the MSE training
loss, Adam's preconditioned sharpness, and 4 simulated devices against 1."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dsb_testing import run_python, tiny_config
from flax import nnx
from jax.flatten_util import ravel_pytree

from dsb.analysis import load_checkpoint
from dsb.losses import per_example_loss
from dsb.metrics import read_metrics
from dsb.optim import make_schedule
from dsb.train import train

BASE = "evals=classification"
SHARP = "+evals.sharp={type: sharpness, when: all, num_examples: 96, k: 2, rtol: 1e-4}"


def _dense_top(run_dir, step, loss, n=96, seed=0):
    """Top eigenvalues of the dense float32 Hessian of the mean loss on the evaluator's
    batch (the same seeded permutation), from the restored checkpoint."""
    from dsb.data.digits import digits_arrays

    x, y = digits_arrays()["train"]
    idx = np.sort(np.random.default_rng(seed).permutation(len(y))[:n])
    x, y = jnp.asarray(x[idx]), jnp.asarray(y[idx])
    r = load_checkpoint(run_dir, step)
    graphdef, params, rest = nnx.split(r.model, nnx.Param, ...)
    theta, unravel = ravel_pytree(params)

    def mean_loss(t):
        return per_example_loss(loss, nnx.merge(graphdef, unravel(t), rest)(x), y).mean()

    h = np.asarray(jax.hessian(mean_loss)(theta), np.float64)
    return np.linalg.eigvalsh(0.5 * (h + h.T))[::-1]


@pytest.mark.parametrize("loss", ["cross_entropy", pytest.param("mse", marks=pytest.mark.slow)])
def test_sharpness_in_a_gd_run_equals_the_dense_hessian_and_the_threshold_formula(
    tmp_path, tfds_dir, loss
):
    cfg = tiny_config(
        "model.kwargs.widths=[8]", "optim=sgd", "optim.learning_rate=0.05",
        "optim.momentum=0.5", "optim.schedule=cosine", f"train.loss={loss}", BASE, SHARP,
    )  # fmt: skip
    train(cfg, tmp_path)
    recs = {r["step"]: r for r in read_metrics(tmp_path) if "sharp/eig_1" in r}
    assert sorted(recs) == [0, 1, 2, 4, 8, 16]
    lr = make_schedule(cfg.optim, cfg.train.total_steps)
    assert recs[16]["sharp/threshold"] == "nan"  # lr 0 at the end of the cosine: no threshold
    for step in (0, 8):
        r = recs[step]
        lam = _dense_top(tmp_path, step, loss)
        assert r["sharp/converged"] == 1.0
        np.testing.assert_allclose([r["sharp/eig_1"], r["sharp/eig_2"]], lam[:2], rtol=2e-3)
        assert r["sharp/lr"] == pytest.approx(float(lr(step)), rel=1e-6)
        assert r["sharp/threshold"] == pytest.approx((2 + 2 * 0.5) / r["sharp/lr"], rel=1e-6)
        # SGD's weight decay adds wd I to the iteration's Hessian.
        wd = cfg.optim.weight_decay
        assert r["sharp/ratio"] == pytest.approx((r["sharp/eig_1"] + wd) / r["sharp/threshold"])
        assert r["sharp/num_examples"] == 96


@pytest.mark.slow  # ~35-65 s; the Adam-preconditioned Hessian itself is checked in tests/curvature
def test_adam_run_logs_the_preconditioned_sharpness_and_its_threshold(tmp_path, tfds_dir):
    cfg = tiny_config("model.kwargs.widths=[8]", "optim.b1=0.8", BASE, SHARP)  # adamw by default
    train(cfg, tmp_path)
    recs = {r["step"]: r for r in read_metrics(tmp_path) if "sharp/eig_1" in r}
    assert recs[0]["sharp/precond_eig_1"] == "nan"  # no second moment before update 1
    r = recs[8]  # (at step 16 the schedule has decayed to lr 0: no threshold)
    assert r["sharp/threshold"] == "nan"  # raw sharpness has no threshold under Adam
    assert r["sharp/precond_converged"] == 1.0
    assert r["sharp/precond_threshold"] == pytest.approx((2 + 2 * 0.8) / (0.2 * r["sharp/lr"]))
    assert r["sharp/precond_ratio"] == pytest.approx(
        r["sharp/precond_eig_1"] / r["sharp/precond_threshold"]
    )


def test_unknown_training_loss_fails_at_validation():
    with pytest.raises(ValueError, match=r"train.loss='hinge'.*unknown training loss"):
        tiny_config("train.loss=hinge")


SCRIPT = r"""
import json, sys
sys.path.insert(0, "tests")
import jax
from dsb_testing import tiny_config
from dsb.metrics import read_metrics
from dsb.train import train
assert jax.device_count() == 4
out = {}
for n in (1, 4):
    cfg = tiny_config("model.kwargs.widths=[8]", "optim=sgd", "optim.learning_rate=0.05",
                      "figures=false", f"parallel.num_devices={n}", BASE, SHARP)
    train(cfg, f"ROOT/run{n}")
    out[n] = [r["sharp/eig_1"] for r in read_metrics(f"ROOT/run{n}") if "sharp/eig_1" in r]
print("RESULT", json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.multidevice
def test_four_devices_give_the_sharpness_of_one(tmp_path):
    code = SCRIPT.replace("ROOT", str(tmp_path)).replace("BASE, SHARP", f"{BASE!r}, {SHARP!r}")
    proc = run_python(code, devices=4, env={"TFDS_DATA_DIR": str(tmp_path / "tfds")})
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    out = json.loads(line.split(" ", 1)[1])
    assert len(out["1"]) == 6
    np.testing.assert_allclose(out["4"], out["1"], rtol=1e-4)
