"""Preemption: the signal submitit asks SLURM to send makes the trainer checkpoint at the
current step and hand the signal on; the requeued run ends where an uninterrupted one ends.

In process: a stand-in for submitit's handler (it raises, as submitit's exits) and the
signal raised while a chosen step is dispatched. ``test_submitit_local_preemption_requeues``
goes through the real launcher.
"""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from dsb_testing import ROOT, TINY, tiny_config

from dsb.analysis import load_checkpoint
from dsb.data.sources import open_source
from dsb.metrics import read_metrics
from dsb.preemption import Preemption, preemption_signal
from dsb.run_context import RunContext
from dsb.train import train

TIMING = re.compile(r"^time/|steps_per_s$")


def _untimed(run_dir):
    return [{k: v for k, v in r.items() if not TIMING.search(k)} for r in read_metrics(run_dir)]


def _assert_same_run(a, b):
    ra, rb = load_checkpoint(a), load_checkpoint(b)
    assert ra.step == rb.step
    for x, y in zip(
        jax.tree.leaves(ra.state.params), jax.tree.leaves(rb.state.params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert _untimed(a) == _untimed(b)


class _Requeued(Exception):
    pass


@pytest.fixture
def submitit_like_handler():
    """SIGUSR2 handled as submitit does in a job: the handler does not return (it raises
    here; submitit requeues and calls sys.exit)."""
    calls = []

    def handler(signum, frame):
        calls.append(signum)
        raise _Requeued

    previous = signal.signal(signal.SIGUSR2, handler)
    yield calls
    signal.signal(signal.SIGUSR2, previous)


def _signal_at(monkeypatch, step):
    """Raise the preemption signal while update ``step`` is dispatched (its batch drawn)."""
    make_sampler = RunContext.sampler

    def sampler(self, *args):
        draw = make_sampler(self, *args)

        def draw_and_signal(batch_index):
            if batch_index == step - 1:
                signal.raise_signal(signal.SIGUSR2)
            return draw(batch_index)

        return draw_and_signal

    monkeypatch.setattr(RunContext, "sampler", sampler)


# 20 steps, logged every 4, checkpoints at 0, 1, 2, 4, 8, 16, 20: step 6 is neither logged
# nor scheduled (a partial logging window), 12 is logged only, 8 is scheduled.
@pytest.mark.parametrize("step, async_save", [(6, True), (12, False), (8, False)])
def test_preempted_run_resumes_where_an_uninterrupted_run_ends(
    tmp_path, tfds_dir, monkeypatch, submitit_like_handler, step, async_save
):
    cfg = tiny_config(
        "train.total_steps=20",
        "evals=classification",
        "figures=false",
        f"ckpt.async_save={async_save}",
    )
    train(cfg, tmp_path / "ref")
    with monkeypatch.context() as m:
        _signal_at(m, step)
        with pytest.raises(_Requeued):
            train(cfg, tmp_path / "run")
    assert submitit_like_handler == [signal.SIGUSR2]
    assert load_checkpoint(tmp_path / "run").step == step
    assert signal.getsignal(signal.SIGUSR2) is not None  # the stand-in is back
    resumed = train(cfg, tmp_path / "run")
    assert resumed.resumed_from == step
    _assert_same_run(tmp_path / "ref", tmp_path / "run")
    assert submitit_like_handler == [signal.SIGUSR2]
    # Each invocation's phase timings apart (dsb.timing): the preempted one, then the one
    # that finished, which summary.json holds.
    lines = [json.loads(x) for x in (tmp_path / "run" / "timings.jsonl").read_text().splitlines()]
    got = [(x["start_step"], x["final_step"], x["status"]) for x in lines]
    assert got == [(0, step, "stopped"), (step, 20, "finished")]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["timings"]["phases"] == lines[1]["phases"] == resumed.timings["phases"]


def test_a_signal_not_handed_over_is_delivered_on_exit(submitit_like_handler):
    with pytest.raises(_Requeued):
        with Preemption() as p:
            signal.raise_signal(signal.SIGUSR2)
            assert p.requested and submitit_like_handler == []
    assert submitit_like_handler == [signal.SIGUSR2]


def test_disabled_or_ignored_signal_is_left_alone(submitit_like_handler):
    handler = signal.getsignal(signal.SIGUSR2)
    with Preemption(enabled=False):
        assert signal.getsignal(signal.SIGUSR2) is handler
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    with Preemption() as p:
        signal.raise_signal(signal.SIGUSR2)
        assert not p.requested


def test_preemption_signal_follows_submitit(monkeypatch):
    assert preemption_signal() == signal.SIGUSR2
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")
    assert preemption_signal() == signal.SIGUSR1
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "NOPE")
    with pytest.raises(ValueError, match="SIGNOPE"):
        preemption_signal()


# ------------------------------------------------------------- through the real launcher
OVERRIDES = [
    *[o for o in TINY if not o.startswith(("train.total_steps", "train.log_every_steps"))],
    "model.kwargs.widths=[32]",
    "evals=classification",
    "figures=false",
    "logging.tensorboard=false",
    "train.total_steps=4000",
    "train.log_every_steps=50",
    "ckpt.log_spaced=false",
    "ckpt.every_steps=1000",
    "ckpt.async_save=true",
]


def _env(tfds_dir):
    env = {**os.environ, "TFDS_DATA_DIR": tfds_dir, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    env.pop("SUBMITIT_PREEMPT_SIGNAL", None)
    return env


def _job_task(launcher):
    """The process submitit's local controller started for the job (its task)."""
    import psutil

    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if "submitit.core._submit" in " ".join(child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def _steps(run_dir):
    d = run_dir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


@pytest.mark.slow
def test_submitit_local_preemption_requeues(tmp_path, tfds_dir):
    """A sweep of one job through hydra-submitit-launcher's ``submitit_local``, sent SIGUSR2
    mid-training, ends with the parameters and metrics of an uninterrupted run.

    Real, end to end: the Hydra launcher pickles itself as the job; submitit's handler for
    SIGUSR2 in the job's task calls its ``checkpoint`` (a ``DelayedSubmission`` of the same
    call), rewrites the job's pickle and requeues; submitit's local controller restarts
    the task (exit code 144) on that pickle, which reruns the same sweep job in the same
    directory (``hydra.sweep.dir`` holds ``${now:...}``: it must resolve to the same
    directory after the restart, so the sweep runs in a fresh working directory and must
    produce exactly one). Only the sender of the signal is the test rather than SLURM
    (``--signal=USR2@90``), and the requeue is the local controller's restart rather than
    ``scontrol requeue``; the handler, the checkpoint pickle and the rerun are submitit's.
    The signal usually lands while the host waits at a logging step; the in-process
    tests above cover the steps between them.
    """
    env = _env(tfds_dir)
    open_source(tiny_config().data.name, "train", tfds_dir)  # built once, not twice at once
    ref = subprocess.Popen(
        [sys.executable, "-m", "dsb.main", *OVERRIDES, f"hydra.run.dir={tmp_path / 'ref'}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    work = tmp_path / "work"
    work.mkdir()
    cmd = [sys.executable, "-m", "dsb.main", "-m", "hydra/launcher=submitit_local", *OVERRIDES]
    sweep = subprocess.Popen(
        cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.time() + 400
        run_dir = None
        while time.time() < deadline:
            found = glob.glob(str(work / "multirun" / "*" / "*" / "0"))
            run_dir = found and type(tmp_path)(found[0])
            if run_dir and any(0 < s < 4000 for s in _steps(run_dir)):
                break
            assert sweep.poll() is None, sweep.communicate()[0][-3000:]
            time.sleep(0.05)
        task = _job_task(sweep)
        assert task is not None and sweep.poll() is None, "the job ended before the signal"
        signalled_after = max(_steps(run_dir))
        task.send_signal(signal.SIGUSR2)
        out, _ = sweep.communicate(timeout=400)
        assert sweep.returncode == 0, out[-3000:]
        ref_out, _ = ref.communicate(timeout=400)
        assert ref.returncode == 0, ref_out[-3000:]
    finally:
        for p in (ref, sweep):
            if p.poll() is None:
                p.kill()

    # One sweep directory (the requeued job resolved ``${now:...}`` as the first did), one job.
    assert glob.glob(str(work / "multirun" / "*" / "*")) == [str(run_dir.parent)]
    jobs = [p for p in run_dir.parent.iterdir() if p.is_dir() and p.name != ".submitit"]
    assert jobs == [run_dir]
    logs = "".join(p.read_text() for p in sorted((run_dir.parent / ".submitit").glob("*/*_log.*")))
    saved = re.findall(r"preempted: saved checkpoint (\d+)", logs)
    resumed = re.findall(r"resumed from checkpoint (\d+)", logs)
    assert "Requeued job" in logs, logs[-3000:]
    # (each line is in the job's stdout and stderr logs)
    assert len(set(saved)) == 1 and set(resumed) == set(saved), logs[-3000:]
    step = int(saved[0])
    assert signalled_after < step < 4000
    _assert_same_run(tmp_path / "ref", run_dir)
