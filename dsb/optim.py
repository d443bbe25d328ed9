"""optax optimizers and learning-rate schedules built from ``OptimConfig``."""

from __future__ import annotations

import optax

from dsb.config import OptimConfig

__all__ = ["make_optimizer", "make_schedule"]


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    lr = cfg.learning_rate
    if cfg.schedule == "constant":
        return optax.constant_schedule(lr)
    if cfg.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps=total_steps, alpha=cfg.final_lr_fraction)
    if cfg.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=lr,
            warmup_steps=cfg.warmup_steps,
            decay_steps=total_steps,
            end_value=lr * cfg.final_lr_fraction,
        )
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
