"""Contracts of the ``poly_approx`` evaluator's outputs, recomputed from their definitions
(``dsb.evals.poly_approx`` module docstring):

* the saved quadratic forms (``poly_forms/step_*.npz``, what ``poly_eigenvectors.png``
  draws) are the eigenpairs of ``Gamma_k = L' M_k L`` with ``x = mu + L z`` (``L L' =
  Sigma``), each eigenvector ``v`` saved as its input-space displacement ``w = L v``: so
  ``w' M_k w`` is the eigenvalue and ``w' Sigma^+ w = 1`` (one standard deviation);
* ``fvu = sum (f - f_hat)^2 / sum (f - mean f)^2`` POOLED over samples and logits (not a
  mean of per-logit ratios), ``r2 = 1 - fvu``.
"""

from __future__ import annotations

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
from dsb.polyapprox import mlp_approximants

pytestmark = pytest.mark.usefixtures("one_blas_thread")


def _ctx(tmp_path):
    d = digits_arrays()

    def load_split(name):
        x, y = d[name]
        return {"image": x, "label": y.astype(np.int32)}

    cfg = types.SimpleNamespace(model=types.SimpleNamespace(name="mlp"))
    return EvalContext(load_split, "train", 10, (8, 8, 1), tmp_path / "run", seed=0, config=cfg)


def _mlp_snapshot(step=0):
    model = MLP(
        num_classes=10, input_shape=(8, 8, 1), rngs=nnx.Rngs(3), widths=(32,),
        activation="relu", bias_init_std=0.1,
    )  # fmt: skip
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def predict(x):
        return np.asarray(model(jnp.asarray(x, jnp.float32)))

    layers = [
        (np.asarray(lin.kernel.get_value(), np.float64).T, np.asarray(lin.bias.get_value()))
        for lin in model.layers
    ]
    snap = Snapshot(step=step, predict=predict, graphdef=graphdef, params=params, rest=rest)
    return snap, layers


def _pooled_fvu(f, g):
    f, g = np.asarray(f, np.float64), np.asarray(g, np.float64)
    return ((f - g) ** 2).sum() / ((f - f.mean(0)) ** 2).sum()


def test_fvu_is_pooled_over_samples_and_logits():
    # Two logits of very different spread and fit: the pooled ratio is dominated by the
    # wide logit, the mean of per-logit ratios is not.
    rng = np.random.default_rng(0)
    f = np.stack([rng.normal(0, 10, 500), rng.normal(0, 0.1, 500)], 1)
    g = f + np.stack([rng.normal(0, 1, 500), rng.normal(0, 0.1, 500)], 1)
    per_logit = np.mean(((f - g) ** 2).sum(0) / ((f - f.mean(0)) ** 2).sum(0))
    pooled = _pooled_fvu(f, g)
    assert pooled == pytest.approx(0.01, rel=0.2) and per_logit > 0.4  # far apart
    m = approximation_metrics(f, g)
    assert m["fvu"] == pytest.approx(pooled, rel=1e-12)
    assert m["r2"] == pytest.approx(1 - pooled, rel=1e-12)


def test_evaluator_fvu_and_saved_forms_by_value(tmp_path):
    ev = PolyApprox(_ctx(tmp_path), num_samples=400, top_eigen=3)
    snap, layers = _mlp_snapshot(step=3)
    out = dict(ev.run(snap))

    # The fitted Gaussian, recomputed from the train images.
    x_fit = digits_arrays()["train"][0].reshape(-1, 64).astype(np.float64)
    mu, sigma = x_fit.mean(0), np.cov(x_fit.T)
    lam, u = np.linalg.eigh(sigma)
    keep = lam > 64 * np.finfo(np.float64).eps * lam.max()
    sigma_pinv = (u[:, keep] / lam[keep]) @ u[:, keep].T
    np.testing.assert_allclose(np.asarray(ev.gauss.cov), sigma, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(ev.gauss.mu), mu, rtol=1e-12)

    with jax.enable_x64(True):
        lin, quad = mlp_approximants(layers, ev.gauss, "relu")
        M = np.asarray(quad.M)
        # FVU on both sets, pooled, recomputed from the network's and approximant's logits.
        x_val = digits_arrays()["test"][0].reshape(-1, 64).astype(np.float64)
        for name, approx in (("linear", lin), ("quadratic", quad)):
            for set_name, x in (("val", x_val), ("gauss", ev.x_gauss)):
                f = snap.predict(x.reshape(-1, 8, 8, 1))
                g = np.asarray(approx(jnp.asarray(x)))
                fvu = _pooled_fvu(f, g)
                assert out[f"{name}/{set_name}/fvu"] == pytest.approx(fvu, rel=1e-6)
                assert out[f"{name}/{set_name}/r2"] == pytest.approx(1 - fvu, rel=1e-6, abs=1e-9)

    saved = np.load(tmp_path / "run" / "poly_forms" / "step_00000003.npz")
    evals, evecs = saved["evals"].astype(np.float64), saved["evecs"].astype(np.float64)
    assert evals.shape == (10, 3) and evecs.shape == (10, 3, 64)
    # Gamma_k = L' M_k L with L = U sqrt(Lambda) on the support: its top |eigenvalues|.
    L = u[:, keep] * np.sqrt(lam[keep])
    for k in range(10):
        gamma = L.T @ M[k] @ L
        g_lam, g_vec = np.linalg.eigh(0.5 * (gamma + gamma.T))
        order = np.argsort(-np.abs(g_lam))[:3]
        scale = np.abs(g_lam[order[0]])
        np.testing.assert_allclose(evals[k], g_lam[order], rtol=1e-4, atol=1e-5 * scale)
        for j in range(3):
            w = evecs[k, j]
            # One standard deviation along w, and w' M_k w is the eigenvalue.
            assert w @ sigma_pinv @ w == pytest.approx(1.0, rel=1e-3), (k, j)
            assert w @ M[k] @ w == pytest.approx(evals[k, j], rel=1e-3, abs=1e-5 * scale)
            # And w is L v for the eigenvector v (up to sign).
            ref = L @ g_vec[:, order[j]]
            sign = np.sign(w @ ref)
            np.testing.assert_allclose(w, sign * ref, atol=1e-4 * np.abs(ref).max())
