import numpy as np
import optax
import pytest
from flax import nnx

from dsb.evals.base import EvalContext, Snapshot
from dsb.evals.jacobian_probe import TrainingJacobianProbe
from dsb.jacobian import cross_entropy_loss, fixed_minibatches, make_training_run, nnx_apply
from dsb.models import build_model

# With jax x64 on, as every dsb.jacobian test runs.
pytestmark = pytest.mark.usefixtures("float64")


def test_probe_replays_and_reports(tmp_path):
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

    probe = TrainingJacobianProbe(ctx, total_steps=20, batch_size=8, num_bulk=10)
    out = dict(probe.run(snap))
    assert out["replay_rel_error"] < 1e-6
    assert out["count_abs_s_minus_1_below_0.001"] >= 4
    assert (tmp_path / "jacobian" / "step_6.npz").exists()

    big = TrainingJacobianProbe(
        ctx, total_steps=20, batch_size=8, max_dense_params=1, slq_matvecs=10, slq_probes=2
    )
    out_mf = dict(big.run(snap))
    np.testing.assert_allclose(out_mf["sigma_1"], out["sigma_1"], rtol=1e-3)
    p = out["num_params"]
    for t in (0.1, 1e-2, 1e-3):
        lo = out_mf[f"slq_count_D_below_{t:g}_bracket_low"]
        hi = out_mf[f"slq_count_D_below_{t:g}_bracket_high"]
        assert 0 <= lo <= out_mf[f"slq_count_D_below_{t:g}"] <= hi <= p
    # float32 run, sigma_1(D) of order 1: rounding noise sits far below every threshold.
    assert 0 < out_mf["slq_resolution_floor"] < 1e-5
    assert out_mf["num_params"] == p and np.isfinite(list(out_mf.values())).all()
