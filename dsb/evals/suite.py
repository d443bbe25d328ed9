"""The evaluators of a run, run at its checkpoints.

``EvalSuite`` holds the configured ``evals`` entries, asks ``dsb.schedule`` which are due at
a checkpoint, runs them (timed as phases ``eval_build/<key>`` and ``eval/<key>``, see
``dsb.timing``) and names each entry's type (``dsb.plots`` draws figures by type);
``snapshot`` binds a checkpoint's state to a compiled forward as evaluators see it. The
trainer and ``dsb.analysis.reevaluate`` run the same suite.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from typing import Any

from dsb.evals.base import EvalContext, Snapshot, build_evaluator, split_entry
from dsb.schedule import Schedule
from dsb.timing import phase

__all__ = ["EvalSuite", "snapshot"]


def snapshot(
    step: int, graphdef, params, rest, predict, init_params=None, opt_state=None
) -> Snapshot:
    """The model at checkpoint ``step`` as evaluators see it; ``predict(params, rest, x)``
    is a compiled forward (``dsb.step.make_predict``), bound here to this step's state."""
    return Snapshot(
        step=step,
        predict=functools.partial(predict, params, rest),
        graphdef=graphdef,
        params=params,
        rest=rest,
        init_params=init_params,
        opt_state=opt_state,
    )


class EvalSuite:
    """The evaluators of an ``evals`` config, ``{key: {type, when, **options}}``.

    Each entry is checked when the suite is made: its type and options, and that every
    step its ``when`` names is a checkpoint of ``schedule``. The evaluators themselves are
    built on the first ``run`` (their set-up is paid once, and only by runs that reach a
    checkpoint), all of them, in config order.
    """

    def __init__(self, ctx: EvalContext, evals: Mapping[str, Any], schedule: Schedule):
        self.ctx = ctx
        self.schedule = schedule
        self.entries = {key: split_entry(key, entry) for key, entry in evals.items()}
        for key, (_, when, _) in self.entries.items():
            schedule.check_when(key, when)
        self._evaluators: dict[str, Any] | None = None

    @property
    def types(self) -> dict[str, str]:
        """``{key: evaluator type}``: what ``dsb.plots.plot_run`` draws figures from."""
        return {key: type_name for key, (type_name, _, _) in self.entries.items()}

    def due(self, step: int) -> list[str]:
        """The keys of the evaluators that run at checkpoint ``step``."""
        entries = self.entries.items()
        return [k for k, (_, when, _) in entries if self.schedule.evaluates(when, step)]

    def build(self) -> dict[str, Any]:
        if self._evaluators is None:
            self._evaluators = {}
            for key, (type_name, _, options) in self.entries.items():
                with phase(f"eval_build/{key}"):
                    self._evaluators[key] = build_evaluator(self.ctx, key, type_name, options)
        return self._evaluators

    def run(self, snapshot: Snapshot) -> dict[str, float]:
        """``{"<key>/<name>": value}`` of every evaluator due at ``snapshot.step``, plus
        ``time/eval_<key>_s``."""
        evaluators = self.build()
        values: dict[str, float] = {}
        for key in self.due(snapshot.step):
            t0 = time.perf_counter()
            with phase(f"eval/{key}"):
                for name, value in evaluators[key].run(snapshot):
                    values[f"{key}/{name}"] = float(value)
            values[f"time/eval_{key}_s"] = time.perf_counter() - t0
        return values
