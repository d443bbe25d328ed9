"""dsb.optim's configured AdamW against an independent float64 NumPy AdamW."""

import numpy as np
import optax

from dsb.config import OptimConfig
from dsb.optim import make_optimizer


def _warmup_cosine_np(cfg: OptimConfig, total_steps: int, step: int) -> float:
    """Linear warmup from 0 to the peak, then cosine decay to ``final_lr_fraction`` of it
    at ``total_steps`` (warmup included). dsb evaluates it at ``update index + 1``, so the
    first update has lr ``peak / warmup_steps``, never 0, and the last one the end value."""
    peak, end, w = cfg.learning_rate, cfg.learning_rate * cfg.final_lr_fraction, cfg.warmup_steps
    if step < w:
        return peak * step / w
    frac = min(step - w, total_steps - w) / (total_steps - w)
    return end + (peak - end) * 0.5 * (1 + np.cos(np.pi * frac))


def _adamw_np(cfg: OptimConfig, total_steps: int, params: dict, grads_seq: list[dict]):
    """AdamW in float64 NumPy (Loshchilov & Hutter): global-norm clipping, bias-corrected
    moments, eps outside the square root, and decoupled weight decay that is multiplied by
    the learning rate (as optax.adamw documents). Update t (1-based) uses the schedule at
    step t (no zero-learning-rate first update). Every leaf is decayed. Returns the updates
    of each step."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    out = []
    for t, grads in enumerate(grads_seq, start=1):
        g = {k: np.asarray(x, np.float64) for k, x in grads.items()}
        if cfg.grad_clip_norm is not None:
            norm = np.sqrt(sum(np.sum(x**2) for x in g.values()))
            g = {k: x * min(1.0, cfg.grad_clip_norm / norm) for k, x in g.items()}
        lr = _warmup_cosine_np(cfg, total_steps, t)
        step = {}
        for k in p:
            m[k] = cfg.b1 * m[k] + (1 - cfg.b1) * g[k]
            v[k] = cfg.b2 * v[k] + (1 - cfg.b2) * g[k] ** 2
            m_hat, v_hat = m[k] / (1 - cfg.b1**t), v[k] / (1 - cfg.b2**t)
            step[k] = -lr * (m_hat / (np.sqrt(v_hat) + cfg.eps) + cfg.weight_decay * p[k])
            p[k] = p[k] + step[k]
        out.append(step)
    return out


def test_adamw_matches_a_numpy_reference():
    """dsb's adamw config (warmup-cosine, weight decay, clipping) against float64 NumPy."""
    import jax.numpy as jnp

    total = 10
    cfg = OptimConfig(
        name="adamw",
        learning_rate=0.05,
        schedule="warmup_cosine",
        warmup_steps=3,
        final_lr_fraction=0.1,
        weight_decay=0.1,
        b1=0.8,  # neither default, and unequal: a swapped or dropped option shows
        b2=0.95,
        eps=1e-3,  # large enough to matter next to sqrt(v_hat) of the small gradients
        grad_clip_norm=1.0,
    )
    rng = np.random.default_rng(0)
    # dsb masks nothing: biases and scalar scales decay like weights. A mask in dsb must
    # come with the same mask in _adamw_np.
    params = {
        "kernel": rng.normal(size=(3, 2)),
        "bias": rng.normal(size=2),
        "scale": np.array(1.5),
    }
    # Alternate gradients far below and far above the clip norm.
    grads_seq = [
        {k: rng.normal(size=np.shape(x)) * (0.02 if i % 2 else 2.0) for k, x in params.items()}
        for i in range(total)
    ]
    norms = [np.sqrt(sum(np.sum(x**2) for x in g.values())) for g in grads_seq]
    assert min(norms) < cfg.grad_clip_norm < max(norms)

    want = _adamw_np(cfg, total, params, grads_seq)
    tx = make_optimizer(cfg, total)
    theta = {k: jnp.asarray(x, jnp.float32) for k, x in params.items()}
    state = tx.init(theta)
    for t, (g, ref) in enumerate(zip(grads_seq, want, strict=True), start=1):
        g32 = {k: jnp.asarray(x, jnp.float32) for k, x in g.items()}
        u, state = tx.update(g32, state, theta)
        for k in params:
            np.testing.assert_allclose(
                u[k], ref[k], rtol=2e-5, atol=1e-7, err_msg=f"{k}, update {t}"
            )
        theta = optax.apply_updates(theta, u)
    # the first update already moves the parameters (lr = 0.05 / 3), the last uses the end
    assert np.abs(want[0]["kernel"]).max() > 1e-3
    assert _warmup_cosine_np(cfg, total, total) == np.float64(0.05 * 0.1)
