"""The poly_approx evaluator on digits: names, wiring, refusals, figures.

The closed forms themselves are checked against Monte Carlo least squares in
tests/polyapprox; here an identity-activation MLP (exactly linear, so its linear
approximant is itself) pins the wiring, and random ReLU MLPs of depth 1 and 2 check the
metric names and the closed-form vs least-squares R^2 on the Gaussian samples.
"""

from __future__ import annotations

import logging
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dsb.data.digits import digits_arrays
from dsb.evals.base import EvalContext, Snapshot
from dsb.evals.poly_approx import PolyApprox, approximation_metrics
from dsb.models.mlp import MLP
from dsb.polyapprox.plots import poly_figures

pytestmark = pytest.mark.usefixtures("one_blas_thread")


def _ctx(tmp_path, model="mlp"):
    d = digits_arrays()

    def load_split(name):
        x, y = d[name]
        return {"image": x, "label": y.astype(np.int32)}

    cfg = types.SimpleNamespace(model=types.SimpleNamespace(name=model))
    return EvalContext(load_split, "train", 10, (8, 8, 1), tmp_path / "run", seed=0, config=cfg)


def _snapshot(model, step=0):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def predict(x):
        return np.asarray(model(jnp.asarray(x, jnp.float32)))

    return Snapshot(step=step, predict=predict, graphdef=graphdef, params=params, rest=rest)


def _mlp(widths, activation="relu", seed=0):
    return MLP(
        num_classes=10, input_shape=(8, 8, 1), rngs=nnx.Rngs(seed), widths=widths,
        activation=activation, bias_init_std=0.1,
    )  # fmt: skip


def test_linear_network_is_its_own_linear_approximant(tmp_path):
    ev = PolyApprox(_ctx(tmp_path), num_samples=500)
    out = dict(ev.run(_snapshot(_mlp((32,), "identity"))))
    for s in ("val", "gauss"):
        assert out[f"linear/{s}/r2"] > 1 - 1e-6, out[f"linear/{s}/r2"]
        assert out[f"quadratic/{s}/r2"] > 1 - 1e-6
        assert out[f"linear/{s}/kl"] < 1e-6 and out[f"linear/{s}/agreement"] == 1.0
    assert abs(out["linear_ols/gauss/r2"] - 1) < 1e-6


def test_one_hidden_layer_names_and_least_squares(tmp_path):
    ev = PolyApprox(_ctx(tmp_path), num_samples=2000, top_eigen=3)
    out = dict(ev.run(_snapshot(_mlp((64,)), step=5)))
    names = {
        f"{a}/{s}/{m}"
        for a in ("linear", "quadratic")
        for s in ("val", "gauss")
        for m in ("r2", "fvu", "kl", "agreement")
    }
    names |= {"linear/val/accuracy", "quadratic/val/accuracy", "linear_ols/gauss/r2"}
    assert set(out) == names
    for k, v in out.items():
        assert np.isfinite(v), k
    # The closed form is the population least-squares fit: on 2000 samples with 65
    # coefficients, the in-sample OLS R^2 exceeds it by O(65 / 2000) of the FVU, never less.
    gap = out["linear_ols/gauss/r2"] - out["linear/gauss/r2"]
    assert 0 <= gap < 0.1 * (1 - out["linear/gauss/r2"]) + 1e-9
    assert out["quadratic/gauss/r2"] > out["linear/gauss/r2"]
    f = np.load(tmp_path / "run" / "poly_forms" / "step_00000005.npz")
    assert f["evecs"].shape == (10, 3, 64) and f["evals"].shape == (10, 3) and bool(f["exact"])
    lam = np.abs(f["evals"])
    assert np.all(np.diff(lam, axis=1) <= 1e-6)


def test_deeper_mlp_gets_stein_monte_carlo(tmp_path):
    ev = PolyApprox(_ctx(tmp_path), num_samples=300, top_eigen=0)
    out = dict(ev.run(_snapshot(_mlp((32, 32)))))
    assert "linear_stein/gauss/r2" in out and "quadratic_stein/val/kl" in out
    assert not any(k.startswith(("linear/", "quadratic/")) for k in out)
    assert not (tmp_path / "run" / "poly_forms").exists()


def test_refuses_other_models(tmp_path, caplog):
    with pytest.raises(ValueError, match=r"model 'lenet5' is not an MLP.*on_unsupported: skip"):
        PolyApprox(_ctx(tmp_path, "lenet5"))
    with caplog.at_level(logging.WARNING):
        ev = PolyApprox(_ctx(tmp_path, "lenet5"), on_unsupported="skip")
    assert "is skipped" in caplog.text
    assert list(ev.run(_snapshot(_mlp((8,))))) == []
    # Without a config the model object itself is checked.
    from dsb.models.lenet import LeNet5

    ctx = _ctx(tmp_path)
    ctx.config = None
    ev = PolyApprox(ctx, num_samples=10)
    lenet = LeNet5(num_classes=10, input_shape=(8, 8, 1), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="LeNet5 is not an MLP"):
        list(ev.run(_snapshot(lenet)))
    with pytest.raises(ValueError, match="on_unsupported"):
        PolyApprox(_ctx(tmp_path), on_unsupported="ignore")


def test_metrics_definitions():
    f = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
    m = approximation_metrics(f, f, np.array([0, 1, 1]))
    assert m["r2"] == 1 and m["kl"] == 0 and m["agreement"] == 1 and m["accuracy"] == 2 / 3
    m = approximation_metrics(f, np.broadcast_to(f.mean(0), f.shape))
    assert abs(m["fvu"] - 1) < 1e-12


def test_figures(tmp_path):
    ev = PolyApprox(_ctx(tmp_path), num_samples=300)
    records = []
    for step in (0, 64, 256):
        out = dict(ev.run(_snapshot(_mlp((16,), seed=step), step=step)))
        records.append({"step": step, **{f"poly/{k}": v for k, v in out.items()}})
    paths = poly_figures(records, "poly", tmp_path / "run" / "figures", title="t")
    assert sorted(p.name for p in paths) == ["poly_across_time.png", "poly_eigenvectors.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_stein_path_keeps_the_float64_support_on_digits(tmp_path):
    """The Stein path runs in float32 but its Gaussian keeps the support cut in float64:
    the rank (and the basis) equal the float64 reference, recomputed here from the
    definition (eigenvalues of the float64 train covariance above d * eps64 * the largest;
    61 of 64 on digits). A float32 refit of the Gaussian cuts it to 58."""
    from dsb.evals.poly_approx import stein_inputs

    ev = PolyApprox(_ctx(tmp_path), num_samples=10, top_eigen=0)
    x, _ = digits_arrays()["train"]
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    lam, vec = np.linalg.eigh(np.cov(x.T))
    keep = lam > x.shape[1] * np.finfo(np.float64).eps * lam.max()
    assert keep.sum() == 61  # the rank the docs quote
    layers = [(np.ones((3, 64)), None), (np.ones((10, 3)), np.zeros(10))]
    g32, f32 = stein_inputs(ev.gauss, layers)
    assert g32.rank == keep.sum() and g32.basis.dtype == jnp.float32
    assert all(W.dtype == jnp.float32 for W, _ in f32)
    np.testing.assert_allclose(np.asarray(g32.evals), lam[keep], rtol=1e-6)
    ref_proj = vec[:, keep] @ vec[:, keep].T
    np.testing.assert_allclose(np.asarray(g32.proj), ref_proj, atol=1e-5)


def test_stein_r2_standard_error_and_bias_are_the_jackknife_of_its_draws(tmp_path):
    """A deep MLP's ``<a>_stein/<set>/r2_se`` and ``r2_bias`` are the delete-a-group
    jackknife of the R^2, recomputed here from the replicate estimates (the estimates
    without each group of fit draws): ``sqrt((G-1)/G sum (r_g - r_bar)^2)`` and
    ``(G-1)(r_bar - r)``."""
    from dsb.evals.poly_approx import r2_score, stein_inputs
    from dsb.polyapprox import mlp_function, stein_mc_jackknife

    G = 4
    ev = PolyApprox(_ctx(tmp_path), num_samples=300, top_eigen=0, num_fit=64, jackknife_groups=G)
    model = _mlp((32, 32))
    out = dict(ev.run(_snapshot(model)))
    layers, act = ev._layers(_snapshot(model))
    g32, f32 = stein_inputs(ev.gauss, layers)
    with jax.enable_x64(True):
        full, reps = stein_mc_jackknife(mlp_function(f32, act), g32, ev.fit_key, 64, G)
        for set_name, x in (("val", ev.x_val), ("gauss", ev.x_gauss)):
            f = np.asarray(model(jnp.asarray(x, jnp.float32).reshape(-1, 8, 8, 1)))
            for i, name in enumerate(("linear", "quadratic")):
                r2 = r2_score(f, np.asarray(full[i](jnp.asarray(x))))
                r = np.array([r2_score(f, np.asarray(rep[i](jnp.asarray(x)))) for rep in reps])
                key = f"{name}_stein/{set_name}"
                assert out[f"{key}/r2"] == pytest.approx(r2, abs=1e-9)
                se = np.sqrt((G - 1) / G * ((r - r.mean()) ** 2).sum())
                assert out[f"{key}/r2_se"] == pytest.approx(se, rel=1e-9, abs=1e-12)
                assert out[f"{key}/r2_bias"] == pytest.approx((G - 1) * (r.mean() - r2), abs=1e-9)
                assert out[f"{key}/r2_se"] > 0


@pytest.mark.slow
def test_stein_on_exact_logs_the_stein_fit_next_to_the_exact_one(tmp_path):
    """``stein_on_exact`` on a one-hidden-layer MLP: the exact metrics and the saved forms
    are those of the plain evaluator (the forms stay the exact ones), and the
    ``<a>_stein/...`` metrics are those of ``stein_mc_jackknife`` from the evaluator's
    fit draws (in chunks of 16 of its 64 draws, 4 groups), recomputed here (~20 s: two
    evaluators and a Stein fit, hence slow)."""
    from dsb.evals.poly_approx import r2_score, stein_inputs
    from dsb.polyapprox import jackknife_se_bias, mlp_function, stein_mc_jackknife

    model = _mlp((32,))
    kw = {"num_samples": 300, "top_eigen": 2, "num_fit": 64, "jackknife_groups": 4}
    plain = PolyApprox(_ctx(tmp_path / "plain"), **kw)
    want = dict(plain.run(_snapshot(model, step=3)))
    ev = PolyApprox(_ctx(tmp_path / "both"), stein_on_exact=True, fit_chunk=16, **kw)
    out = dict(ev.run(_snapshot(model, step=3)))
    assert {k: out[k] for k in want} == pytest.approx(want, rel=1e-12, abs=1e-15)
    forms = [
        np.load(tmp_path / p / "run" / "poly_forms" / "step_00000003.npz")
        for p in ("plain", "both")
    ]
    np.testing.assert_array_equal(forms[1]["evals"], forms[0]["evals"])
    assert bool(forms[1]["exact"])
    layers, act = ev._layers(_snapshot(model))
    g32, f32 = stein_inputs(ev.gauss, layers)
    with jax.enable_x64(True):
        full, reps = stein_mc_jackknife(mlp_function(f32, act), g32, ev.fit_key, 64, 4)
        for set_name, x in (("val", ev.x_val), ("gauss", ev.x_gauss)):
            f = np.asarray(model(jnp.asarray(x, jnp.float32).reshape(-1, 8, 8, 1)))
            for i, name in enumerate(("linear", "quadratic")):
                r2 = r2_score(f, np.asarray(full[i](jnp.asarray(x))))
                r = [r2_score(f, np.asarray(rep[i](jnp.asarray(x)))) for rep in reps]
                key = f"{name}_stein/{set_name}"
                assert out[f"{key}/r2"] == pytest.approx(r2, abs=1e-6)
                se, bias = jackknife_se_bias(r2, r)
                assert out[f"{key}/r2_se"] == pytest.approx(se, rel=1e-2, abs=1e-6)
                assert out[f"{key}/r2_bias"] == pytest.approx(bias, abs=1e-5)
                assert out[f"{key}/r2"] != pytest.approx(out[f"{name}/{set_name}/r2"], abs=1e-6)


def test_val_samples_is_a_fixed_subset_with_its_labels(tmp_path):
    """``val_samples`` keeps that many distinct test images, the same ones for the same
    seed, each with its own label."""
    x, y = digits_arrays()["test"]
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    subsets = [
        PolyApprox(_ctx(tmp_path), num_samples=10, top_eigen=0, val_samples=50, seed=s)
        for s in (0, 0, 1)
    ]
    ev = subsets[0]
    assert ev.x_val.shape == (50, 64) and ev.y_val.shape == (50,)
    idx = [int(np.flatnonzero((x == row).all(1))[0]) for row in ev.x_val]
    assert len(set(idx)) == 50
    np.testing.assert_array_equal(ev.y_val, np.asarray(y)[idx])
    np.testing.assert_array_equal(subsets[1].x_val, ev.x_val)
    assert not np.array_equal(subsets[2].x_val, ev.x_val)
    assert len(PolyApprox(_ctx(tmp_path), num_samples=10, top_eigen=0).y_val) == len(y)
