"""Max-ent samplers' numbers by value, each against its definition recomputed here: the
truncated-exponential mean and inverse CDF (in 50-digit decimal arithmetic), the PSD
factor, the Gaussian sampler's fraction outside the box, the particle objective and
what the particle sampler records; and which arguments are keyword-only."""

import logging
from decimal import Decimal, getcontext

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dsb.timing
from dsb.stats import maxent
from dsb.stats.moments import ClassStats

pytestmark = pytest.mark.usefixtures("one_blas_thread")


def _exact_mean(b: float) -> float:
    """``1/b - 1/(e^b - 1)`` in 50-digit decimal arithmetic (b != 0)."""
    getcontext().prec = 50
    db = Decimal(b)
    return float(1 / db - 1 / (db.exp() - 1))


@pytest.mark.parametrize(
    "b", [9.9e-3, 5e-3, 1e-3, 1e-5, -9.9e-3, -5e-3, 1e-2, 0.1, 2.0, -2.0, 40.0, -40.0]
)
def test_conrad_mean_against_decimal_arithmetic(b):
    # Inside |b| < 1e-2 the series, outside the closed form (mu(-b) = 1 - mu(b)).
    # The series to the last bit; the closed form loses ~1e-16 / |b| to cancellation.
    got = float(maxent.conrad_mean(np.array([b]))[0])
    tol = 2e-16 if abs(b) < 1e-2 else 1e-15 / abs(b)
    assert got == pytest.approx(_exact_mean(b), rel=0, abs=tol)


def _exact_cdf(b: float, x: float) -> float:
    """``(1 - e^{-b x}) / (1 - e^{-b})``, the CDF of ``b e^{-bx} / (1 - e^{-b})`` on [0, 1]."""
    getcontext().prec = 50
    db, dx = Decimal(b), Decimal(x)
    return float((1 - (-db * dx).exp()) / (1 - (-db).exp()))


@pytest.mark.parametrize("b", [1e-3, 0.7, 5.0, 60.0, -1e-3, -0.7, -5.0, -60.0])
def test_conrad_sample_inverts_the_cdf(b):
    u = np.array([0.01, 0.2, 0.5, 0.77, 0.99])
    x = maxent.conrad_sample(np.full(5, b), u)
    np.testing.assert_allclose([_exact_cdf(b, xi) for xi in x], u, rtol=0, atol=1e-12)


def test_conrad_sample_limits():
    u = np.array([0.0, 0.25, 0.9])
    # |b| < 1e-12: uniform, x = u exactly, from either side.
    np.testing.assert_array_equal(maxent.conrad_sample(np.full(3, 1e-13), u), u)
    np.testing.assert_array_equal(maxent.conrad_sample(np.full(3, -1e-13), u), u)
    np.testing.assert_array_equal(maxent.conrad_sample(np.full(3, 0.0), u), u)
    # b = +-inf: point masses at 0 and 1.
    np.testing.assert_array_equal(maxent.conrad_sample(np.full(3, np.inf), u), 0.0)
    np.testing.assert_array_equal(maxent.conrad_sample(np.full(3, -np.inf), u), 1.0)


def test_conrad_rate_inverts_conrad_mean_and_its_limits():
    mu = np.array([1e-3, 0.2, 0.5, 0.8, 1 - 1e-3])
    b = maxent.conrad_rate(mu)
    np.testing.assert_allclose(maxent.conrad_mean(b), mu, rtol=1e-13)
    assert b[2] == 0.0 and b[0] > 0 > b[4]
    assert b[1] == pytest.approx(-b[3], rel=1e-12)  # mu(-b) = 1 - mu(b)
    np.testing.assert_array_equal(
        maxent.conrad_rate(np.array([0.0, 1.0, -0.1, 1.1])), [np.inf, -np.inf, np.inf, -np.inf]
    )


def test_psd_factor_of_a_singular_covariance():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 3))
    cov = a @ a.T  # rank 3
    cov[np.diag_indices(5)] += np.array([0, 0, 0, 0, -1e-15])  # a rounding-negative eigenvalue
    f = maxent.psd_factor(cov)
    assert f.shape == (5, 5) and np.all(np.isfinite(f))
    np.testing.assert_allclose(f @ f.T, cov, atol=1e-12)


def _box_stats(k=2, d=3, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.uniform(0.2, 0.8, (k, d))
    covs = []
    for _ in range(k):
        a = rng.standard_normal((d, d)) * 0.2
        covs.append(a @ a.T + 0.01 * np.eye(d))
    priors = np.array([0.3, 0.7]) if k == 2 else np.ones(1)
    return ClassStats(np.full(k, 100), priors, means, np.stack(covs))


def test_gaussian_sampler_reports_the_fraction_outside_the_box_before_clipping():
    st = _box_stats()
    raw = maxent.sample_gaussian(st, 3000, seed=1)
    x = raw.x_NxD.astype(np.float64)
    frac = float(np.mean((x < 0) | (x > 1)))
    assert 0.05 < frac < 0.9  # wide classes: a real fraction, not 0 or 1
    assert raw.report.extra["frac_outside_box"] == pytest.approx(frac, abs=1e-4)
    clipped = maxent.sample_gaussian(st, 3000, seed=1, clip=True)
    assert clipped.report.extra["frac_outside_box"] == raw.report.extra["frac_outside_box"]
    np.testing.assert_array_equal(clipped.x_NxD, np.clip(raw.x_NxD, 0, 1))
    # The rows are mu_y + z L', L L' = Sigma_y: the per-class sample moments follow.
    for k in range(2):
        xk = x[raw.y_N == k]
        np.testing.assert_allclose(xk.mean(0), st.mean_KxD[k], atol=5 * 0.7 / np.sqrt(len(xk)))


def _loss_by_hand(z, mean, cov, proj, skew, w_ent, use_skew):
    """The particle objective of ``_particle_loss``'s docstring, in float64 numpy."""
    n, d = z.shape
    x = 1 / (1 + np.exp(-z))
    m = x.mean(0)
    xc = x - m
    loss = np.sum((m - mean) ** 2) / (np.trace(cov) + 1e-12)
    loss += np.sum((xc.T @ xc / n - cov) ** 2) / (np.sum(cov**2) + 1e-12)
    if use_skew:
        s = np.mean((xc @ proj) ** 3, axis=0)
        loss += np.sum((s - skew) ** 2) / (np.sum(skew**2) + 1e-12)
    d2 = np.sum((x[:, None] - x[None]) ** 2, -1) + np.diag(np.full(n, np.inf))
    ent = 0.5 * d * np.mean(np.log(d2.min(1) + 1e-10))
    return loss - w_ent * ent


@pytest.mark.parametrize("use_skew", [False, True])
def test_particle_loss_by_value(use_skew):
    rng = np.random.default_rng(0)
    n, d = 12, 4
    a = rng.standard_normal((d, d)) * 0.1
    args = (
        rng.standard_normal((n, d)),
        rng.uniform(0.3, 0.7, d),
        a @ a.T,
        rng.standard_normal((d, 3)),
        rng.standard_normal(3) * 1e-2,
        0.3,
    )
    loss = jax.jit(maxent._particle_loss, static_argnums=6)  # one compile, not one per op
    got = float(loss(*(jnp.asarray(v, jnp.float32) for v in args), use_skew))
    assert got == pytest.approx(_loss_by_hand(*args, use_skew), rel=1e-4)


def _recording_optimiser(calls):
    """A stand-in for ``_optimise_particles`` that records its arguments, reports
    progress chunk by chunk as the real one does, and returns the initial particles (no
    compile: the sampler's bookkeeping alone)."""

    def fake(z0, mean, cov, proj, skew, ew, lr, *, steps, use_skew, batch, chunk_steps,
             progress=None):  # fmt: skip
        calls.append(dict(z0=np.asarray(z0), proj=np.asarray(proj), skew=np.asarray(skew),
                          ew=float(ew), lr=float(lr), steps=steps, use_skew=use_skew,
                          batch=batch))  # fmt: skip
        for start in range(0, steps, chunk_steps):
            progress(min(start + chunk_steps, steps))
        return 1 / (1 + np.exp(-np.asarray(z0, np.float64)))

    return fake


def test_particle_sampler_records_its_settings_and_progress(monkeypatch, caplog):
    from dsb.stats.moments import fit_class_stats

    calls = []
    monkeypatch.setattr(maxent, "_optimise_particles", _recording_optimiser(calls))
    x = np.random.default_rng(0).uniform(0, 1, (300, 3))
    st3 = fit_class_stats([(x, np.zeros(300, int))], 1, num_projections=78)
    s = maxent.sample_box3(st3, 20, seed=0, steps=2, projection_batch=4, entropy_weight=0.25)
    e = s.report.extra
    assert (e["order"], e["steps"], e["entropy_weight"]) == (3, 2, 0.25)
    assert e["fitted_projections"] == 78 - 64 and e["projection_batch"] == 4
    assert set(s.report.checks) == {"mean", "cov", "coskew"}
    # The optimiser gets 3 whole blocks of 4 of the 14 fitted projections (a permutation
    # of the fitted columns: never a held-out one) with their co-skewness targets.
    c = calls[-1]
    assert c["use_skew"] and c["batch"] == 4 and c["proj"].shape == (3, 12)
    assert (c["ew"], c["lr"], c["steps"]) == (0.25, pytest.approx(0.05), 2)
    fitted = st3.proj_DxR[:, :14].T
    cols = [
        int(np.flatnonzero(np.all(np.isclose(fitted, p, atol=1e-6), 1))[0]) for p in c["proj"].T
    ]
    assert len(set(cols)) == 12
    np.testing.assert_allclose(c["skew"], st3.proj_skew_KxR[0, cols], rtol=1e-6)
    # A batch larger than the fitted projections is cut to them.
    maxent.sample_box3(st3, 20, seed=0, steps=1, projection_batch=256)
    assert calls[-1]["batch"] == 14 and calls[-1]["proj"].shape == (3, 14)
    # Initial particles: N(mu, Sigma) clipped to [eps, 1 - eps], in logits.
    x0 = 1 / (1 + np.exp(-c["z0"].astype(np.float64)))
    assert x0.min() >= 1e-3 * (1 - 1e-6) and x0.max() <= (1 - 1e-3) * (1 + 1e-6)

    # Two classes, three steps each, a chunk a step: the progress line counts the steps of
    # all classes (6), those of the classes done before the current one included.
    st = _box_stats(k=2, d=3)
    monkeypatch.setattr(dsb.timing, "PROGRESS_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger="dsb.timing"):
        s2 = maxent.sample_box2(st, 20, seed=0, steps=3, chunk_steps=1)
    lines = [r.getMessage() for r in caplog.records]
    assert [ln.split(" steps")[0] for ln in lines] == [
        f"box2 particles: {i}/6" for i in range(1, 7)
    ]
    assert "(class 0, 1 of 2)" in lines[2] and "(class 1, 2 of 2)" in lines[3], lines
    assert not calls[-1]["use_skew"] and calls[-1]["ew"] == pytest.approx(maxent.ENTROPY_WEIGHT)
    e2 = s2.report.extra
    assert (e2["order"], e2["steps"], e2["entropy_weight"]) == (2, 3, maxent.ENTROPY_WEIGHT)
    assert "fitted_projections" not in e2 and set(s2.report.checks) == {"mean", "cov"}
    with pytest.raises(ValueError, match="order must be 2 or 3"):
        maxent.particle_maxent(st, 10, order=1)
    with pytest.raises(ValueError, match="projection_batch must be >= 1, got 0"):
        maxent.particle_maxent(st, 10, projection_batch=0)


def test_sampler_options_are_keyword_only():
    st = _box_stats(k=1, d=3)
    with pytest.raises(TypeError):
        maxent.particle_maxent(st, 10, 0, 3)  # order must be named
    with pytest.raises(TypeError):
        maxent.sample_ics(st, 10, 0, np.zeros((2, 3)))  # reference_x must be named


def test_particle_steps_are_adam_on_the_hand_gradient_with_the_annealed_entropy():
    # Three steps written out: a cosine-decayed Adam (alpha 0.01) on _particle_grad, with
    # entropy weight w (1 - i / steps) at step i and the co-skewness of projection block
    # i mod (R / batch). A large weight, so its annealing moves the particles.
    import optax

    rng = np.random.default_rng(1)
    n, d, r, batch, steps, lr, w = 9, 3, 4, 2, 3, 0.05, 0.5
    a = rng.standard_normal((d, d)) * 0.1
    f32 = lambda v: jnp.asarray(v, jnp.float32)
    z0, mean, cov = f32(rng.standard_normal((n, d))), f32(rng.uniform(0.3, 0.7, d)), f32(a @ a.T)
    proj, skew = f32(rng.standard_normal((d, r))), f32(rng.standard_normal(r) * 1e-2)
    got = maxent._optimise_particles(
        z0, mean, cov, proj, skew, jnp.float32(w), jnp.float32(lr),
        steps=steps, use_skew=True, batch=batch, chunk_steps=steps,
    )  # fmt: skip
    opt = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.01))

    @jax.jit  # one compile; op-by-op dispatch of the gradient compiles every op (~10 s)
    def adam_step(z, state, p, s, wi):
        g = maxent._particle_grad(z, mean, cov, p, s, wi, True)
        upd, state = opt.update(g, state, z)
        return optax.apply_updates(z, upd), state

    z, state = z0, opt.init(z0)
    for i in range(steps):
        blk = slice((i % (r // batch)) * batch, (i % (r // batch)) * batch + batch)
        z, state = adam_step(z, state, proj[:, blk], skew[blk], f32(w * (1 - i / steps)))
    np.testing.assert_allclose(np.asarray(got), np.asarray(jax.nn.sigmoid(z)), atol=1e-6)


def test_registered_kinds_with_their_cache_versions_and_options():
    # The names configs use, the function each builds with, its cache version (a changed
    # sampler output must bump it) and the evaluator options it takes.
    reg = maxent.SAMPLERS
    assert set(reg.names()) >= {"ics", "box1", "gaussian", "box2", "box3"}
    want = {
        "ics": (maxent.sample_ics, None, {}),
        "box1": (maxent.sample_box1, None, {}),
        "gaussian": (maxent.sample_gaussian, None, {"clip": "clip"}),
        "box2": (maxent.sample_box2, 3, {"particle_steps": "steps"}),
        "box3": (maxent.sample_box3, 3, {"particle_steps": "steps"}),
    }
    for name, (fn, version, options) in want.items():
        kind = reg.get(name)
        assert (kind.fn, kind.version, dict(kind.options)) == (fn, version, options), name
