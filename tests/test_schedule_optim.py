import numpy as np
import pytest

from dsb.config import OptimConfig
from dsb.optim import make_optimizer, make_schedule
from dsb.schedule import checkpoint_steps, is_log_step, log_spaced_steps


def test_log_spaced_steps_exact():
    assert log_spaced_steps(0) == [0]
    assert log_spaced_steps(1) == [0, 1]
    assert log_spaced_steps(16) == [0, 1, 2, 4, 8, 16]
    assert log_spaced_steps(100) == [0, 1, 2, 4, 8, 16, 32, 64, 100]
    assert log_spaced_steps(2**16) == [0] + [2**k for k in range(17)]
    with pytest.raises(ValueError):
        log_spaced_steps(-1)


def test_checkpoint_steps_with_interval():
    assert checkpoint_steps(100, True, 30) == [0, 1, 2, 4, 8, 16, 30, 32, 60, 64, 90, 100]
    assert checkpoint_steps(100, False, None) == [0, 100]
    assert checkpoint_steps(10, False, 5) == [0, 5, 10]


def test_is_log_step():
    assert [s for s in range(1, 11) if is_log_step(s, 4, 10)] == [4, 8, 10]


def test_schedules():
    cfg = OptimConfig(
        learning_rate=1.0, schedule="warmup_cosine", warmup_steps=10, final_lr_fraction=0.1
    )
    s = make_schedule(cfg, 110)
    # update 0 already moves the parameters: no zero-learning-rate step
    np.testing.assert_allclose([float(s(k)) for k in range(3)], [0.1, 0.2, 0.3], rtol=1e-6)
    np.testing.assert_allclose(float(s(4)), 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(s(9)), 1.0, rtol=1e-6)  # the peak, end of warmup
    np.testing.assert_allclose(float(s(59)), 0.1 + 0.9 * 0.5, rtol=1e-5)  # half-way down
    np.testing.assert_allclose(float(s(109)), 0.1, rtol=1e-5)  # the last of 110 updates
    c = make_schedule(OptimConfig(learning_rate=2.0, schedule="cosine"), 100)
    np.testing.assert_allclose(
        [float(c(0)), float(c(50)), float(c(100))], [2.0, 1.0, 0.0], atol=1e-6
    )
    assert float(make_schedule(OptimConfig(learning_rate=0.3), 5)(4)) == pytest.approx(0.3)


def test_sgd_momentum_and_clipping():
    import jax.numpy as jnp

    params = {"w": jnp.array([1.0, -2.0])}
    grads = {"w": jnp.array([30.0, 40.0])}  # norm 50
    tx = make_optimizer(
        OptimConfig(name="sgd", learning_rate=0.1, momentum=0.9, grad_clip_norm=5.0), 10
    )
    state = tx.init(params)
    u1, state = tx.update(grads, state, params)
    np.testing.assert_allclose(u1["w"], [-0.3, -0.4], rtol=1e-6)  # clipped to norm 5, lr 0.1
    u2, _ = tx.update(grads, state, params)
    np.testing.assert_allclose(u2["w"], -0.1 * 1.9 * np.array([3.0, 4.0]), rtol=1e-6)
