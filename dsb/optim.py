"""optax optimizers and learning-rate schedules built from ``OptimConfig``."""

from __future__ import annotations

import optax

from dsb.config import OptimConfig

__all__ = ["make_optimizer", "make_schedule"]


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Learning rate of update ``count`` (0-based, as optax counts).

    ``warmup_cosine``: linear warmup ``lr * (count + 1) / warmup_steps`` (never 0: the first
    update moves the parameters), the peak at ``count = warmup_steps - 1``, then cosine
    decay to ``lr * final_lr_fraction`` at the last update ``count = total_steps - 1``.
    """
    lr = cfg.learning_rate
    if cfg.schedule == "constant":
        return optax.constant_schedule(lr)
    if cfg.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps=total_steps, alpha=cfg.final_lr_fraction)
    if cfg.schedule == "warmup_cosine":
        base = optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=lr,
            warmup_steps=cfg.warmup_steps,
            decay_steps=total_steps,
            end_value=lr * cfg.final_lr_fraction,
        )
        if cfg.warmup_steps <= 0:
            return base
        # optax counts updates from 0 and its warmup starts at init_value = 0: the first
        # update would not move the parameters (the step-1 checkpoint would repeat step 0).
        # Shifted by one, update k (0-based) uses lr * (k + 1) / warmup_steps during warmup,
        # reaches the peak at update warmup_steps - 1, and the last update (total_steps - 1)
        # uses the end value.
        return lambda count: base(count + 1)
    raise ValueError(f"optim.schedule={cfg.schedule!r}: unknown schedule")


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    schedule = make_schedule(cfg, total_steps)
    if cfg.name == "adamw":
        opt = optax.adamw(
            schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay
        )
    elif cfg.name == "sgd":
        opt = optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
        if cfg.weight_decay:
            opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay), opt)
    else:
        raise ValueError(f"optim.name={cfg.name!r}: unknown optimizer")
    if cfg.grad_clip_norm is not None:
        opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), opt)
    return opt
