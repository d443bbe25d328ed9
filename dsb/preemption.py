"""Preemption: checkpoint at the next step boundary when the cluster says the job must stop.

SLURM sends a signal some time before a job's time limit or preemption (submitit asks for
``--signal=USR2@<signal_delay_s>``; ``$SUBMITIT_PREEMPT_SIGNAL`` names another). Inside a
submitit job, submitit's handler for it calls the submitted callable's ``checkpoint``
(Hydra's launcher returns itself: the requeued job reruns the same sweep job in the same
directory), requeues the job (``scontrol requeue``; a local job exits with code 144 and
its controller starts it again) and exits. That handler runs in the main thread wherever
the signal lands, typically in the middle of dispatching a step or waiting on the device:
it cannot save the training state there, and on its own the requeued job resumes from the
last scheduled checkpoint.

``Preemption`` goes in front of it: its handler only records the signal; the trainer
checks ``requested`` once per step, saves a checkpoint of the current step with the
pending training metrics (``dsb.runtime.RunCheckpoints.save``), waits until it is on
disk, then ``hand_over`` gives the signal to the handler that was there before, which
requeues and exits as it would have. Outside submitit the previous handler is usually
the default one, so the process then ends by the signal, as it would have without dsb.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

__all__ = ["Preemption", "preemption_signal"]

log = logging.getLogger(__name__)


def preemption_signal() -> signal.Signals:
    """The signal submitit treats as "checkpoint and requeue": ``SIG$SUBMITIT_PREEMPT_SIGNAL``,
    by default ``SIGUSR2`` (submitit's ``JobEnvironment.USR_SIG``)."""
    name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    try:
        return signal.Signals[name]
    except KeyError:
        raise ValueError(f"SUBMITIT_PREEMPT_SIGNAL names no signal: {name}") from None


class Preemption:
    """Defers the preemption signal to the trainer's next step boundary, while active.

    ``with Preemption(enabled) as p:`` installs the handler (in the main thread of a
    process whose handler for the signal is Python's or the default one; otherwise it does
    nothing and ``requested`` stays false) and restores the previous one on exit; a signal
    caught but not handed over by then is handed over at exit, so none is lost.
    """

    def __init__(self, enabled: bool = True, signum: int | None = None):
        self.enabled = enabled
        self.signum = preemption_signal() if signum is None else signal.Signals(signum)
        self.requested = False
        self._previous = None
        self._installed = False

    def __enter__(self) -> Preemption:
        if not self.enabled:
            return self
        if threading.current_thread() is not threading.main_thread():
            log.info("not in the main thread: %s is not deferred to a step", self.signum.name)
            return self
        previous = signal.getsignal(self.signum)
        if previous is None or previous is signal.SIG_IGN:  # None: set outside Python
            return self
        self._previous = previous
        signal.signal(self.signum, self._record)
        self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            self._restore()
            if self.requested:
                self.requested = False
                signal.raise_signal(self.signum)

    def hand_over(self) -> None:
        """Give the recorded signal to the previous handler (submitit's requeues and
        exits). If that handler returns, training goes on and the next signal is deferred
        again."""
        self.requested = False
        self._restore()
        try:
            signal.raise_signal(self.signum)  # runs a Python handler before returning
        finally:
            signal.signal(self.signum, self._record)
            self._installed = True

    def _record(self, signum, frame) -> None:
        if not self.requested:
            log.warning("caught %s: checkpointing at the next step", signal.Signals(signum).name)
        self.requested = True

    def _restore(self) -> None:
        signal.signal(self.signum, self._previous)
        self._installed = False
