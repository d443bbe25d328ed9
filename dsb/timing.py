"""Where a run's wall time goes: named phases, timed exclusively.

``PhaseTimer`` records each phase's seconds and how often it ran. Phases nest (a probe set
is built while an evaluator is set up, which happens at the first checkpoint), and a
phase's seconds leave out the phases nested in it, so the phases are disjoint: they add up,
with ``other`` (time in no phase), to the total wall time of the timer. Code deep in the
library opens a phase with the module-level ``phase(name)``, which records into the timer
activated by ``PhaseTimer.active()`` and does nothing when none is (notebooks, tests).

The trainer's phases (``dsb.train``): ``init``, ``restore``, ``data`` and
``data/<dataset>/<split>``, ``eval_build/<key>``, ``stats``,
``probe_set/<kind>/built`` or ``.../loaded``, ``compile`` (the first step's trace and
compile), ``train_steps`` (every other step, the host syncs and metric writes),
``eval/<key>`` (one count per checkpoint it ran at; the first includes compiling the
forward), ``checkpoint`` (one per save) and ``checkpoint/wait`` (the asynchronous saves
finishing), ``figures``.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Iterator, Mapping

__all__ = ["PhaseTimer", "ProgressLog", "format_timings", "phase"]

log = logging.getLogger(__name__)

_ACTIVE: contextvars.ContextVar[PhaseTimer | None] = contextvars.ContextVar(
    "dsb_phase_timer", default=None
)


class PhaseTimer:
    """Exclusive wall time per phase name, and counts; the clock starts at creation."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self._nested: list[float] = []  # per open phase: seconds spent in its children

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        self._nested.append(0.0)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            inner = self._nested.pop()
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed - inner
            self.counts[name] = self.counts.get(name, 0) + 1
            if self._nested:
                self._nested[-1] += elapsed

    @contextlib.contextmanager
    def active(self) -> Iterator[PhaseTimer]:
        """Make this the timer that ``phase`` records into, for the ``with`` block."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def record(self) -> dict:
        """``{"total_s", "other_s", "phases": {name: {"s", "count"}}}``, phases in the order
        they first ran; plain JSON."""
        total = time.perf_counter() - self.t0
        phases = {n: {"s": s, "count": self.counts[n]} for n, s in self.seconds.items()}
        return {"total_s": total, "other_s": total - sum(self.seconds.values()), "phases": phases}


def phase(name: str) -> contextlib.AbstractContextManager:
    """Time the ``with`` block as phase ``name`` of the active ``PhaseTimer``, if any."""
    timer = _ACTIVE.get()
    return contextlib.nullcontext() if timer is None else timer.phase(name)


def format_timings(record: Mapping) -> str:
    """``PhaseTimer.record()`` as a table, longest phase first, with shares of the total."""
    total = record["total_s"]
    rows = [(n, p["s"], p["count"]) for n, p in record["phases"].items()]
    rows.sort(key=lambda r: -r[1])
    rows.append(("other", record["other_s"], None))
    width = max(len("phase"), *(len(n) for n, _, _ in rows))
    lines = [f"{'phase':<{width}}  {'seconds':>9}  {'share':>6}  {'count':>6}"]
    for name, s, count in rows:
        share = s / total if total > 0 else 0.0
        c = "" if count is None else str(count)
        lines.append(f"{name:<{width}}  {s:9.2f}  {share:6.1%}  {c:>6}")
    lines.append(f"{'total':<{width}}  {total:9.2f}  {1.0:6.1%}")
    return "\n".join(lines)


# Seconds between two progress lines of one computation.
PROGRESS_EVERY_S = 10.0


class ProgressLog:
    """Progress of one long computation as log lines: what, how far, elapsed, ETA.

    ``update(done)`` logs at most once every ``every_s`` seconds (default
    ``PROGRESS_EVERY_S``; work shorter than that logs nothing), and a last line at
    ``done == total`` if it logged before. The ETA assumes the remaining units cost what
    the finished ones did on average.
    """

    def __init__(self, what: str, total: int, unit: str = "steps", every_s: float | None = None):
        self.what, self.total, self.unit = what, total, unit
        self.every_s = PROGRESS_EVERY_S if every_s is None else every_s
        self.t0 = self.last = time.perf_counter()
        self.lines = 0

    def update(self, done: int, detail: str = "") -> None:
        now = time.perf_counter()
        finished = done >= self.total
        if (finished and not self.lines) or (not finished and now - self.last < self.every_s):
            return
        self.last, self.lines = now, self.lines + 1
        elapsed = now - self.t0
        eta = elapsed / done * (self.total - done) if done else float("nan")
        where = f" ({detail})" if detail else ""
        log.info(
            "%s: %d/%d %s (%.0f%%)%s, %s elapsed, ETA %s",
            self.what, done, self.total, self.unit, 100.0 * done / max(self.total, 1), where,
            _duration(elapsed), "done" if finished else _duration(eta),
        )  # fmt: skip


def _duration(seconds: float) -> str:
    if seconds != seconds:  # NaN: nothing done yet
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
