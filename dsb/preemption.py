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
pending training metrics (``dsb.checkpoint.RunCheckpoints.save``), waits until it is on
disk, then ``hand_over`` gives the signal to the handler that was there before, which
requeues and exits as it would have. Outside submitit the previous handler is usually
the default one, so the process then ends by the signal, as it would have without dsb.

Several processes (``parallel=multihost``): saving a checkpoint is collective, and SLURM
signals every task, but each process catches the signal while dispatching another step
(or only some tasks get it). So the processes agree before anyone saves: at each step
where they wait on the host anyway (logging and checkpoint steps), ``agreed`` gathers
every process's flag (``multihost_utils.process_allgather``, a collective all of them
reach at the same step) and all of them checkpoint that step when any caught the signal.
A process that had not caught it yet raises the signal to itself in ``hand_over``, so its
own handler (submitit's: requeue from global rank 0, exit elsewhere) runs as on a process
that did. The delay from the signal to the checkpoint is at most ``train.log_every_steps``
steps: keep that well under the signal's lead time (submitit: ``signal_delay_s`` = 90 s
by default).
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import numpy as np

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

    def __init__(self, enabled: bool = True, signum: int | None = None, num_processes: int = 1):
        self.enabled = enabled
        self.signum = preemption_signal() if signum is None else signal.Signals(signum)
        self.requested = False
        self._previous = None
        self._installed = False
        # Every process calls ``agreed`` at the same steps, installed handler or not.
        self._multi = enabled and num_processes > 1

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

    def agreed(self, sync_point: bool) -> bool:
        """Whether to checkpoint now and hand the signal over. One process: whether it
        caught the signal. Several: at a ``sync_point`` (a step every process treats as
        one, e.g. a logging step), whether ANY process caught it (a collective: every
        process must call it at the same steps); elsewhere false."""
        if not self._multi:
            return self.requested
        if not sync_point:
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray([int(self.requested)], np.int32))
        anyone = bool(np.asarray(flags).any())
        if anyone and not self.requested:
            log.warning("another process caught %s: checkpointing with it", self.signum.name)
        return anyone

    def hand_over(self) -> None:
        """Give the signal to the previous handler (submitit's requeues and exits); a
        process of a multi-process run that did not catch it itself (``agreed`` said a
        peer did) raises it all the same. If that handler returns, training goes on and
        the next signal is deferred again."""
        self.requested = False
        if not self._installed:  # a peer caught it; this process has no handler to call
            raise SystemExit(f"preempted: another process caught {self.signum.name}")
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
