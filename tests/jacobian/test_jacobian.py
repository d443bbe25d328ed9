"""Ground truth for dsb.jacobian: closed forms, finite differences, dense SVDs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dsb.jacobian import (
    JacobianOperator,
    alignment,
    cross_entropy_loss,
    fixed_minibatches,
    golub_kahan_svd,
    jacobian_forward,
    jacobian_reverse,
    make_training_run,
    max_kl,
    max_kl_directions,
    nnx_apply,
    random_subspace_overlap,
    randomized_svd,
    robust_svd,
    slq_spectrum,
    subspace_overlap,
)

# Compared against float64 ground truth: x64 for each test of this file.
pytestmark = pytest.mark.usefixtures("float64")


class TinyMLP(nnx.Module):
    def __init__(self, d_in, width, k, *, rngs):
        init = nnx.initializers.normal(0.3)
        self.l1 = nnx.Linear(d_in, width, rngs=rngs, bias_init=init)
        self.l2 = nnx.Linear(width, k, rngs=rngs, bias_init=init)

    def __call__(self, x):
        return self.l2(nnx.gelu(self.l1(x.reshape(x.shape[0], -1))))


def tiny_problem(*, zero_pixels=(), n=24, d=6, width=5, k=3, epochs=2, batch=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, d, 1, 1)).astype(np.float64)
    for j in zero_pixels:
        x[:, j] = 0.0
    y = rng.integers(0, k, size=n)
    apply, params = nnx_apply(TinyMLP(d, width, k, rngs=nnx.Rngs(seed)))
    opt = optax.sgd(optax.cosine_decay_schedule(0.5, epochs * (n // batch)), momentum=0.9)
    run, theta0 = make_training_run(
        cross_entropy_loss(apply),
        params,
        opt,
        fixed_minibatches(x, y, batch),
        num_epochs=epochs,
        dtype=jnp.float64,
    )
    return run, theta0, params


def test_pure_run_matches_python_loop():
    # The plain optax loop; test_trainer_equivalence.py compares with dsb.train itself.
    run, theta0, _ = tiny_problem()
    opt, loss = run.optimizer, run.loss_fn
    p = run.unravel(theta0)
    state = opt.init(p)
    for _ in range(2):
        for i in range(run.num_batches):
            b = jax.tree_util.tree_map(lambda a, i=i: a[i], run.batches)
            g = jax.grad(loss)(p, b)
            upd, state = opt.update(g, state, p)
            p = optax.apply_updates(p, upd)
    want = jax.flatten_util.ravel_pytree(p)[0]
    np.testing.assert_allclose(run(theta0), want, rtol=1e-12, atol=1e-12)
    # Mid-epoch stop (the training_jacobian evaluator replays the first t steps).
    assert run.with_steps(4)(theta0).shape == theta0.shape


def test_closed_form_linear_mse_full_batch_gd():
    rng = np.random.default_rng(0)
    n, d, eta, steps = 12, 7, 0.05, 9
    phi = rng.normal(size=(n, d))
    y = rng.normal(size=(n,))

    def loss(w, b):
        return 0.5 * jnp.sum((b["x"] @ w - b["y"]) ** 2)

    batches = {"x": jnp.asarray(phi)[None], "y": jnp.asarray(y)[None]}
    run, w0 = make_training_run(
        loss,
        jnp.asarray(rng.normal(size=d)),
        optax.sgd(eta),
        batches,
        num_steps=steps,
        dtype=jnp.float64,
    )
    want = np.linalg.matrix_power(np.eye(d) - eta * phi.T @ phi, steps)
    jf = jacobian_forward(run, w0, chunk_size=3)
    jr = jacobian_reverse(run, w0, chunk_size=4)
    np.testing.assert_allclose(jf, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jr, want, rtol=1e-12, atol=1e-12)


def test_forward_reverse_matrix_free_and_finite_differences_agree():
    run, theta0, _ = tiny_problem()
    jf = jacobian_forward(run, theta0, chunk_size=7)
    jr = jacobian_reverse(run, theta0, chunk_size=5)
    np.testing.assert_allclose(jf, jr, rtol=1e-10, atol=1e-12)
    jr_remat = jacobian_reverse(
        __import__("dataclasses").replace(run, remat=True), theta0, chunk_size=64
    )
    np.testing.assert_allclose(jr_remat, jf, rtol=1e-10, atol=1e-12)
    assert np.abs(jf - np.eye(theta0.size)).max() > 1e-2  # training really happened

    op = JacobianOperator(run, theta0)
    key = jax.random.key(1)
    v, u = jax.random.normal(key, (2, theta0.size), jnp.float64)
    np.testing.assert_allclose(op.matvec(v), jf @ v, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(op.rmatvec(u), jf.T @ u, rtol=1e-10, atol=1e-12)
    d = op.with_shift(1.0)
    np.testing.assert_allclose(d.matvec(v), jf @ v - v, rtol=1e-10, atol=1e-12)

    h = 1e-5
    fd = (run(theta0 + h * v) - run(theta0 - h * v)) / (2 * h)
    np.testing.assert_allclose(fd, jf @ v, rtol=1e-6, atol=1e-8)


def test_randomized_svd_and_golub_kahan_match_dense_top_k():
    run, theta0, _ = tiny_problem()
    jf = jacobian_forward(run, theta0)
    dense = robust_svd(jf)
    op = JacobianOperator(run, theta0)
    # This J's spectrum is flat (s_1 = 1.68, s_20 = 1.0): power iterations buy accuracy.
    k = 3
    u, s, vt = randomized_svd(op, k, oversample=20, power_iters=12)
    np.testing.assert_allclose(s, dense.s[:k], rtol=1e-6)
    np.testing.assert_allclose(np.abs(np.sum(u[:, :2] * dense.U[:, :2], 0)), 1, atol=1e-6)
    u, s, vt = golub_kahan_svd(op, k, num_matvecs=30)
    np.testing.assert_allclose(s, dense.s[:k], rtol=1e-8)
    np.testing.assert_allclose(np.abs(np.sum(vt * dense.Vt[:k], 1)), 1, atol=1e-6)


def test_slq_bulk_count_close_to_dense():
    # Two always-zero pixels: 2 * width exact unit singular values of J (zeros of D).
    run, theta0, _ = tiny_problem(zero_pixels=(0, 3), d=8, width=6, n=32)
    jf = jacobian_forward(run, theta0)
    sd = robust_svd(jf - np.eye(theta0.size), compute_uv=False).s
    op = JacobianOperator(run, theta0, shift=1.0)
    slq = slq_spectrum(op, num_matvecs=40, num_probes=30)
    p = theta0.size
    for thr in (1e-1, 1e-2, 1e-3):
        true = int((sd < thr).sum())
        lo, hi = slq.count_bounds(thr)
        slack = 3 * (lo.std() + hi.std()) / np.sqrt(len(lo)) + 0.02 * p
        assert lo.mean() - slack <= true <= hi.mean() + slack, (thr, lo.mean(), hi.mean(), true)
    est, _ = slq.count_below(0.1)
    assert abs(est - int((sd < 0.1).sum())) < 0.15 * p
    assert (sd < 1e-10).sum() >= 12


def test_zero_pixel_weights_are_exact_bulk():
    zero = (1, 4)
    width = 5
    run, theta0, params = tiny_problem(zero_pixels=zero, width=width)
    jf = jacobian_forward(run, theta0)
    # Indices of the first-layer kernel rows fed by the zero pixels.
    marker = jax.tree_util.tree_map(jnp.zeros_like, params)
    marker["l1"]["kernel"].value = marker["l1"]["kernel"].value.at[np.array(zero)].set(1.0)
    idx = np.flatnonzero(np.asarray(jax.flatten_util.ravel_pytree(marker)[0]))
    assert len(idx) == len(zero) * width
    eye = np.eye(theta0.size)
    assert np.array_equal(np.asarray(jf)[:, idx], eye[:, idx])
    assert np.array_equal(np.asarray(jf)[idx, :], eye[idx, :])
    svd = robust_svd(jf)
    exact = np.flatnonzero(np.abs(svd.s - 1) < 1e-12)
    assert len(exact) >= len(idx)
    np.testing.assert_allclose(alignment(svd.U, svd.Vt, exact), 1.0, atol=1e-10)


def test_overlap_self_and_random_baseline():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 20))
    assert subspace_overlap(a, a @ rng.normal(size=(20, 20))) == pytest.approx(1.0, abs=1e-10)
    p, k = 400, 40
    mean_cos, expected_sq = random_subspace_overlap(p, k, num_samples=20)
    assert expected_sq == k / p
    qa = np.linalg.qr(rng.normal(size=(p, k)))[0]
    sq = [
        (
            np.linalg.svd(qa.T @ np.linalg.qr(rng.normal(size=(p, k)))[0], compute_uv=False) ** 2
        ).mean()
        for _ in range(50)
    ]
    assert np.mean(sq) == pytest.approx(k / p, rel=0.05)
    assert 0.5 * np.sqrt(k / p) < mean_cos < np.sqrt(k / p)


def test_robust_svd_rejects_nan():
    with pytest.raises(FloatingPointError, match="non-finite"):
        robust_svd(np.array([[1.0, np.nan], [0.0, 1.0]]))


def test_float64_run_refuses_a_model_that_computes_in_float32():
    from dsb.models import build_model

    x = np.random.default_rng(0).uniform(size=(16, 8, 8, 1))
    y = np.arange(16) % 10
    batches = fixed_minibatches(x, y, 8)

    def make(dtype):
        model = build_model(
            "lenet5",
            num_classes=10,
            input_shape=(8, 8, 1),
            rngs=nnx.Rngs(0),
            dtype=dtype,
            conv_impl="im2col",
        )
        apply, params = nnx_apply(model)
        return make_training_run(
            cross_entropy_loss(apply),
            params,
            optax.sgd(0.1),
            batches,
            num_steps=2,
            dtype=jnp.float64,
        )

    with pytest.raises(ValueError, match="narrows float precision"):
        make(jnp.float32)  # the dsb model default: every layer casts to float32
    run, theta0 = make(jnp.float64)
    assert run(theta0).dtype == jnp.float64


def test_max_kl_directions_matches_the_per_direction_probe():
    run, theta0, _ = tiny_problem()
    apply_p, _ = nnx_apply(TinyMLP(6, 5, 3, rngs=nnx.Rngs(0)))

    def apply(th, xs):
        return apply_p(run.unravel(th), jnp.asarray(xs))

    x = np.random.default_rng(1).uniform(size=(10, 6, 1, 1))
    theta = jnp.asarray(theta0)
    dirs = np.random.default_rng(2).standard_normal((7, theta.size))  # 7: not a chunk multiple
    got = max_kl_directions(apply, theta, dirs, x, chunk=4)
    want = [max_kl(apply, theta, theta + jnp.asarray(d), x) for d in dirs]
    assert got.shape == (7,)
    assert min(want) > 1e-6
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="directions must be"):
        max_kl_directions(apply, theta, dirs[:, :3], x)
