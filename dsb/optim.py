"""optax optimizers and learning-rate schedules built from ``OptimConfig``.

Both are registries (``dsb.registry.Registry``), checked by ``dsb.config.validate`` before
any compute: ``optim.name`` names an entry of ``OPTIMIZERS``, a function
``(cfg, schedule) -> optax.GradientTransformation``, and ``optim.schedule`` one of
``SCHEDULES``, a function ``(cfg, total_steps) -> optax.Schedule``; ``cfg`` is the run's
``dsb.config.OptimConfig`` (not imported here: ``dsb.config`` imports this module to
validate the names). A new one is a function registered here::

    @OPTIMIZERS.register("lion")
    def _lion(cfg, schedule):
        return optax.lion(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax

from dsb.registry import Registry

__all__ = ["OPTIMIZERS", "SCHEDULES", "make_optimizer", "make_schedule"]

OPTIMIZERS: Registry[Callable[[Any, optax.Schedule], optax.GradientTransformation]] = Registry(
    "optimizer", config_key="optim.name"
)
SCHEDULES: Registry[Callable[[Any, int], optax.Schedule]] = Registry(
    "schedule", config_key="optim.schedule"
)


@SCHEDULES.register("constant")
def _constant(cfg, total_steps: int) -> optax.Schedule:
    return optax.constant_schedule(cfg.learning_rate)


@SCHEDULES.register("cosine")
def _cosine(cfg, total_steps: int) -> optax.Schedule:
    return optax.cosine_decay_schedule(
        cfg.learning_rate, decay_steps=total_steps, alpha=cfg.final_lr_fraction
    )


@SCHEDULES.register("warmup_cosine")
def _warmup_cosine(cfg, total_steps: int) -> optax.Schedule:
    lr = cfg.learning_rate
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


@OPTIMIZERS.register("adamw")
def _adamw(cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
    return optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("sgd")
def _sgd(cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
    opt = optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
    if cfg.weight_decay:
        opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay), opt)
    return opt


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
    """Learning rate of update ``count`` (0-based, as optax counts), from the
    ``OptimConfig`` ``cfg``.

    ``warmup_cosine``: linear warmup ``lr * (count + 1) / warmup_steps`` (never 0: the first
    update moves the parameters), the peak at ``count = warmup_steps - 1``, then cosine
    decay to ``lr * final_lr_fraction`` at the last update ``count = total_steps - 1``.
    """
    return SCHEDULES.get(cfg.schedule)(cfg, total_steps)


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
    """The optimizer ``cfg.name`` of the ``OptimConfig`` ``cfg`` on its schedule, after
    gradient clipping when ``cfg.grad_clip_norm`` is set."""
    opt = OPTIMIZERS.get(cfg.name)(cfg, make_schedule(cfg, total_steps))
    if cfg.grad_clip_norm is not None:
        opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), opt)
    return opt
