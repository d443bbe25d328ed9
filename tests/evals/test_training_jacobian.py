import numpy as np
import optax
import pytest
from flax import nnx

from dsb.evals.base import EvalContext, Snapshot
from dsb.evals.training_jacobian import TrainingJacobian
from dsb.jacobian import (
    cross_entropy_loss,
    fixed_minibatches,
    jacobian_forward,
    make_training_run,
    nnx_apply,
)
from dsb.models import build_model

# With jax x64 on, as every dsb.jacobian test runs.
pytestmark = pytest.mark.usefixtures("float64")


def _tiny_run(tmp_path):
    """A 6-step run of a 3x3-input MLP (P = 55) as a checkpoint snapshot, with its replay."""
    rng = np.random.default_rng(0)
    split = {
        "image": rng.uniform(size=(32, 3, 3, 1)).astype(np.float32),
        "label": rng.integers(0, 3, 32).astype(np.int32),
    }
    split["image"][:, 0, 0] = 0.0  # one always-zero pixel: 4 exact unit singular values
    ctx = EvalContext(lambda _: split, "train", 3, (3, 3, 1), tmp_path, 0)
    model = build_model(
        "mlp",
        num_classes=3,
        input_shape=(3, 3, 1),
        rngs=nnx.Rngs(0),
        widths=(4,),
        activation="gelu",
        bias_init_std=0.125,
    )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt = optax.sgd(optax.cosine_decay_schedule(0.1, 20), momentum=0.9)
    apply, p0 = nnx_apply(model)
    run, theta0 = make_training_run(
        cross_entropy_loss(apply),
        p0,
        opt,
        fixed_minibatches(split["image"], split["label"], 8),
        num_steps=6,
    )
    params_t = run.unravel(run(theta0))
    snap = Snapshot(6, None, graphdef, params_t, rest, init_params=params)
    return ctx, snap, run, theta0


def test_evaluator_replays_and_reports(tmp_path):
    ctx, snap, run, theta0 = _tiny_run(tmp_path)
    evaluator = TrainingJacobian(ctx, total_steps=20, batch_size=8, num_bulk=10)
    out = dict(evaluator.run(snap))
    assert out["replay_rel_error"] < 1e-6
    assert out["count_abs_s_minus_1_below_0.001"] >= 4
    assert (tmp_path / "jacobian" / "step_6.npz").exists()

    # The matrix-free path on the same run, against the dense truth of sigma(D), D = J - I.
    big = TrainingJacobian(
        ctx, total_steps=20, batch_size=8, max_dense_params=1, count_max_products=4000
    )
    out_mf = dict(big.run(snap))
    np.testing.assert_allclose(out_mf["sigma_1"], out["sigma_1"], rtol=1e-3)
    assert out_mf["top_converged"] == 1.0 and out_mf["top_max_rel_residual"] <= 1e-3
    p = int(out["num_params"])
    jd = np.asarray(jacobian_forward(run, theta0), np.float64) - np.eye(p)
    s_d = np.linalg.svd(jd, compute_uv=False)
    for t in (0.1, 1e-2, 1e-3):
        true = int((s_d < t).sum())
        assert out[f"count_D_below_{t:g}"] == true  # the dense path's exact sigma(D) count
        lo = out_mf[f"count_D_below_{t:g}_bracket_low"]
        hi = out_mf[f"count_D_below_{t:g}_bracket_high"]
        assert lo <= true <= hi, (t, lo, hi, true)
        count = out_mf[f"count_D_below_{t:g}"]
        if out_mf[f"count_D_below_{t:g}_resolved"]:
            assert abs(count - true) <= 0.05 * max(true, 1) + 1, (t, count, true)
        else:
            assert np.isnan(count), (t, count)  # never a count it did not resolve
            # What it would take (a prediction, logged as such): never fewer probes or a
            # lower degree than were spent.
            spent = out_mf["count_probes"] * out_mf["count_degree"]
            need = out_mf[f"count_D_below_{t:g}_products_needed"]
            assert need >= out_mf["count_deflation_products"] + spent, (t, need, spent)
        assert (f"count_D_below_{t:g}_products_needed" in out_mf) != bool(
            out_mf[f"count_D_below_{t:g}_resolved"]
        )
    # 0.1 is resolved on this run (the 4 exact zeros of D plus the bulk near them).
    assert out_mf["count_D_below_0.1_resolved"] == 1.0
    assert 0 < out_mf["count_resolution"] < 0.1
    assert out_mf["num_params"] == p
    assert "slq_resolution_floor" not in out_mf  # eps * sigma_1 was rounding, not resolution
    assert out_mf["count_float64"] == 1.0


class _Recorded(Exception):
    pass


@pytest.mark.parametrize("count_float64", [True, False])
def test_counts_replay_the_run_in_float64_in_a_float32_session(
    tmp_path, monkeypatch, count_float64
):
    # A float32 run (x64 off, as in dsb.main): with count_float64 the counts' operator is
    # a float64 replay of the same run from the same theta_0, its products made under x64;
    # without it, the float32 replay. The spy stops the evaluator once it has seen the
    # operator (the counts themselves are checked above); x64 is off again afterwards and
    # whenever the caller runs.
    import jax

    from dsb import jacobian as jac

    seen = {}

    def spy(op, thresholds, **kw):
        seen.update(dtype=op.dtype, x64=jax.config.jax_enable_x64, theta0=op.theta0)
        seen["theta_t"] = np.asarray(op.theta_t, np.float64)
        raise _Recorded

    monkeypatch.setattr(jac, "kpm_counts", spy)
    with jax.enable_x64(False):
        ctx, snap, run, theta0 = _tiny_run(tmp_path)
        ev = TrainingJacobian(
            ctx, total_steps=20, batch_size=8, max_dense_params=1, count_float64=count_float64
        )
        with pytest.raises(_Recorded):
            for _ in ev.run(snap):
                assert not jax.config.jax_enable_x64  # never while the caller runs
        assert not jax.config.jax_enable_x64
        theta_t32 = np.asarray(run(theta0), np.float64)
    want = np.float64 if count_float64 else np.float32
    assert seen["dtype"] == want and seen["x64"] == count_float64, seen
    # The same theta_0 (float32 values are exact in float64), the same run: the float64
    # replay ends within float32 rounding of the float32 one, and is not it.
    np.testing.assert_array_equal(np.asarray(seen["theta0"], np.float64), np.asarray(theta0))
    np.testing.assert_allclose(seen["theta_t"], theta_t32, rtol=0, atol=1e-5)
    if count_float64:
        assert np.abs(seen["theta_t"] - theta_t32).max() > 0
