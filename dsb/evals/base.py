"""Evaluator framework: evaluators are config entries, built lazily, run at checkpoints.

An evaluator is registered by type name and built from a config entry::

    evals:
      val:       {type: classification, split: test}
      dsb:       {type: dsb_probes, maxent_sets: [ics, gaussian], ot_sets: [cqn],
                  num_samples: 2000}

Every evaluator class takes ``(ctx: EvalContext, **options)`` and implements
``run(snapshot: Snapshot) -> Iterable[tuple[str, float]]``. The trainer prefixes each
yielded name with the entry's key (``val/loss``, ``dsb/maxent/ics/accuracy``). Options are
checked against ``__init__``'s signature at config validation, and by the class's
``check_options`` classmethod where it has one (``check_evaluator_options``).
Expensive set-up (fitting statistics, sampling fixed evaluation sets) belongs in
``__init__`` or a cached property, never in ``run``: ``run`` is called at every checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dsb.registry import Registry
from dsb.schedule import check_when

__all__ = [
    "EVALUATORS",
    "EvalContext",
    "Evaluator",
    "Snapshot",
    "available_evaluators",
    "build_evaluator",
    "check_evaluator_options",
    "register_evaluator",
    "split_entry",
]

# Keys of an evals entry that the trainer reads; every other key is an evaluator option.
#   type: the registered evaluator type.
#   when: at which checkpoints it runs: "all" (default), "last", or a list of steps.
TRAINER_KEYS = ("type", "when")


def split_entry(key: str, entry: Any) -> tuple[str, Any, dict[str, Any]]:
    """``evals.<key>`` -> ``(type, when, options)``, with clear errors."""
    if not isinstance(entry, dict) or "type" not in entry:
        raise ValueError(f"evals.{key}: must be a mapping with a 'type' key")
    when = entry.get("when", "all")
    check_when(key, when)
    return entry["type"], when, {k: v for k, v in entry.items() if k not in TRAINER_KEYS}


@dataclasses.dataclass
class EvalContext:
    """What the trainer gives every evaluator when it is built.

    ``load_split(name)`` returns the whole split as host arrays: ``{"image": [n, h, w, c]
    float32 in [0, 1], "label": [n] int32}`` (text datasets: ``{"tokens": [n, t] int32}``).
    Results are cached, so evaluators may call it freely. ``num_classes`` is the number of
    classes of image data (``None`` for text), ``vocab_size`` the vocabulary of text data
    (``None`` for images).
    """

    load_split: Callable[[str], dict[str, np.ndarray]]
    train_split: str
    num_classes: int | None
    input_shape: tuple[int, ...]
    run_dir: Path
    seed: int
    is_main_process: bool = True
    # The run's ``dsb.config.Config`` and ``train_batch(step) -> host batch`` (the global
    # batch update ``step + 1`` was computed on), for evaluators that replay training.
    config: Any = None
    train_batch: Callable[[int], dict[str, np.ndarray]] | None = None
    vocab_size: int | None = None


@dataclasses.dataclass
class Snapshot:
    """The model at one checkpoint, as evaluators see it.

    ``predict(x)`` maps a host batch of inputs ``[n, ...]`` (any n) to float32 logits
    ``[n, k]`` (LMs: ``[n, t, vocab]``) in eval mode, batched and sharded over the mesh.
    ``params`` is the model's parameter ``nnx.State``; ``graphdef`` with ``params`` and
    ``rest`` rebuilds the model with ``nnx.merge(graphdef, params, rest)``.
    ``init_params`` are the parameters at step 0 (for the training-Jacobian evaluator);
    ``opt_state`` the optimizer state at this step (for the preconditioned sharpness of
    adaptive optimizers), ``None`` where it was not restored.
    """

    step: int
    predict: Callable[[np.ndarray], np.ndarray]
    graphdef: Any
    params: Any
    rest: Any
    init_params: Any = None
    opt_state: Any = None


class Evaluator(Protocol):
    def run(self, snapshot: Snapshot) -> Iterable[tuple[str, float]]: ...


EVALUATORS: Registry[type] = Registry("evaluator type")


def register_evaluator(name: str) -> Callable[[type], type]:
    return EVALUATORS.register(name)


def available_evaluators() -> list[str]:
    return EVALUATORS.names()


def check_evaluator_options(key: str, type_name: str, options: dict[str, Any]) -> None:
    """Fail before any compute on an option the evaluator's constructor does not take,
    and on a bad value where the class checks its options: a classmethod
    ``check_options(config_key, options)`` raising ValueError that names the key
    (``dsb_probes`` checks its set names and set options that way)."""
    EVALUATORS.check_options(f"evals.{key}", type_name, options, reserved={"ctx"})
    check = getattr(EVALUATORS.get(type_name), "check_options", None)
    if check is not None:
        check(f"evals.{key}", options)


def build_evaluator(ctx: EvalContext, key: str, type_name: str, options: dict[str, Any]):
    check_evaluator_options(key, type_name, options)
    return EVALUATORS.get(type_name)(ctx, **options)
