"""The training lifecycle, top to bottom.

``train(cfg, run_dir)``: set up the mesh, the data and the model; resume from the run
directory's newest readable checkpoint if there is one; run data-parallel optimizer steps;
at each scheduled step save a checkpoint and run the configured evaluators; on the
preemption signal (``dsb.preemption``) save a checkpoint at the current step and let the
job be requeued; with ``train.early_stopping`` on, stop once the validation loss has not
improved for ``patience`` checkpoint evaluations (``dsb.early_stopping``); write metrics
and figures; return a summary. The run's data, samplers and schedule come from
``dsb.run_context.RunContext``, its evaluators from ``dsb.evals.suite.EvalSuite`` and its
checkpoints from ``dsb.checkpoint.RunCheckpoints``, all shared with ``dsb.analysis``; the
training state and the compiled programs live in ``dsb.step``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dsb import parallel
from dsb.checkpoint import CheckpointDamagedError, RunCheckpoints
from dsb.config import Config
from dsb.evals.suite import snapshot
from dsb.metrics import NonFiniteLossError
from dsb.optim import make_optimizer, make_schedule
from dsb.preemption import Preemption
from dsb.run_context import RunContext
from dsb.rundir import RunDirectory
from dsb.step import TrainState, init_model, make_predict, make_train_step
from dsb.timing import PhaseTimer, phase

__all__ = ["MAX_CPU_STEPS_IN_FLIGHT", "TrainResult", "train"]

log = logging.getLogger(__name__)

# XLA:CPU queues at most 32 computations per device before a launch blocks a thread of its
# client's pool (see ``_InFlight``); half of that leaves room for the other programs
# (evaluators, initialisers) that may be queued beside the steps.
MAX_CPU_STEPS_IN_FLIGHT = 16


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    final_step: int
    resumed_from: int | None
    last_metrics: dict[str, float]
    state: TrainState
    figures: list[Path]
    # True when the run had already finished: read back, nothing trained or written.
    finished: bool = False
    # Where this invocation's wall time went (``dsb.timing.PhaseTimer.record``); None for
    # a finished run read back.
    timings: dict | None = None


def train(cfg: Config, run_dir: str | Path) -> TrainResult:
    """Train ``cfg`` in ``run_dir``, resuming from its newest readable checkpoint.

    The run directory is held and checked as ``dsb.rundir`` describes: one process writes
    it (``run.lock``), a resume with a changed config refuses unless the change is free or
    forced, ``ckpt.resume_step`` / ``ckpt.start_over`` go back, and a finished run is
    returned from disk without writing anything.

    The wall time of the run's phases (``dsb.timing``) goes into ``summary.json`` under
    ``timings`` and into ``TrainResult.timings``. Each invocation is timed on its own: a
    resumed run's ``summary.json`` holds the timings of the invocation that finished it,
    and every invocation, finished, preempted or failed, appends its own record (with the
    steps it started and ended at) to ``timings.jsonl``."""
    timer = PhaseTimer()
    with timer.active():
        parallel.initialize(cfg.parallel)
        ctx = RunContext(cfg, Path(run_dir).absolute(), is_main_process=jax.process_index() == 0)
        with RunDirectory(ctx.run_dir, cfg, ctx.is_main_process) as rundir:
            if jax.process_count() > 1:  # process 0 has checked and arranged the directory
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices("dsb.rundir.open")
            return _train(ctx, rundir, timer)


def _train(ctx: RunContext, rundir: RunDirectory, timer: PhaseTimer) -> TrainResult:
    cfg = ctx.config
    total, schedule = cfg.train.total_steps, ctx.schedule
    with phase("init"):
        mesh = _make_mesh(cfg)
        tx, lr = make_optimizer(cfg.optim, total), make_schedule(cfg.optim, total)
        rep = parallel.replicated(mesh)
        model = init_model(cfg, sharding=rep)
        state = TrainState.create(model, tx, cfg.seed, sharding=rep)
        init_params = jax.tree.map(jnp.copy, model.params)  # for the training Jacobian
        abstract = TrainState.abstract(model, tx, sharding=rep)
    if (summary := rundir.finished_summary()) is not None:
        if (done := _finished(ctx, summary, abstract)) is not None:
            return done
    with phase("data"):
        sampler = ctx.sampler(jax.process_index(), jax.process_count())
    checkpoints = RunCheckpoints(ctx)
    writer = ctx.metrics_writer()
    start, resumed_from = 0, None
    with phase("restore"):
        resumed = checkpoints.resume(abstract, rundir.known_fingerprints)
    if resumed is not None:
        start, state = resumed
        resumed_from = start
    # Lines of a run killed before its first checkpoint are dropped, as later ones are.
    writer.truncate_after(start if resumed is not None else -1)
    rundir.resumed_at(start)  # a config change accepted at start-up takes effect here
    suite = ctx.eval_suite()
    predict = make_predict(model, mesh, cfg.train.eval_batch_size)
    early = _early_stopping(ctx, start)

    def checkpoint_and_evaluate(step: int, state: TrainState) -> dict[str, float]:
        if step != resumed_from:
            with phase("checkpoint"):
                checkpoints.save(step, state)
        graphdef = model.graphdef_eval
        snap = snapshot(
            step, graphdef, state.params, state.rest, predict, init_params, state.opt_state
        )
        values = suite.run(snap)
        if early is not None:
            values |= early.evaluate(step, snap.predict)
        writer.write(step, values)
        writer.flush()
        return values

    train_step = make_train_step(
        model.graphdef_train,
        tx,
        mesh,
        cfg.data.augment,
        lr,
        kind=ctx.info.kind,
        loss=cfg.train.loss,
    )
    # Step 0 is the initialisation; a resumed run re-evaluates its restored step, since a
    # kill between saving a checkpoint and finishing its evaluations loses them (a
    # preemption checkpoint off the schedule has none).
    last = checkpoint_and_evaluate(start, state) if schedule.is_checkpoint(start) else {}
    if start == 0 and (data_report := ctx.erasure_metrics() | ctx.synthetic_metrics()):
        # What the train-split erasure (erasure.json) or synthetic set (synthetic_set.json)
        # achieved.
        writer.write(0, data_report)
        writer.flush()
    progress = _Progress(total, start, cfg.train.progress_bar and ctx.is_main_process)
    in_flight = _InFlight(cfg.train.max_steps_in_flight, checkpoints.resumed_window)
    # Several processes agree on the step at logging / checkpoint steps (dsb.preemption).
    preemption = Preemption(num_processes=jax.process_count())
    final = start
    timings, left_loop = _TimingsLog(ctx, timer, start), False
    try:
        with preemption, phase("train_steps"):
            for batch_index in range(start, total):
                if early is not None and early.stopped:
                    log.info("early stopping at step %d (best: step %d)", final, early.best["step"])
                    break
                batch = parallel.put_global_batch(sampler(batch_index), mesh)
                in_flight.wait_for_room()
                # The first call traces and compiles (synchronously; the step itself runs
                # asynchronously, as every other step does).
                with phase("compile") if batch_index == start else contextlib.nullcontext():
                    state, metrics = train_step(state, batch)
                step = final = batch_index + 1
                in_flight.add(step, metrics)
                # Every process waits on the host here (and agrees on preemption).
                sync_point = schedule.is_log(step) or schedule.is_checkpoint(step)
                if sync_point:
                    try:
                        train_values = in_flight.drain()
                    except NonFiniteLossError as e:
                        checkpoints.wait()
                        e.add_context(ctx.run_dir, checkpoints.steps())
                        raise
                    writer.write(step, train_values)
                    last.update(train_values)
                    progress.update(step, train_values)
                if schedule.is_checkpoint(step):
                    last.update(checkpoint_and_evaluate(step, state))
                    progress.report(step, last)
                    in_flight.restart_clock()  # evaluation time is not training speed
                if preemption.agreed(sync_point):
                    if not schedule.is_checkpoint(step):  # else saved just above
                        with phase("checkpoint"):
                            checkpoints.save(step, state, in_flight.window())
                    checkpoints.wait()  # on disk before the job is requeued
                    writer.flush()
                    log.warning("preempted: saved checkpoint %d", step)
                    preemption.hand_over()  # submitit's handler requeues and exits
        left_loop = True
    finally:
        progress.close()
        with phase("checkpoint/wait"):
            checkpoints.close()  # waits for the asynchronous saves
        writer.close()
        if not left_loop:  # preempted or failed: this invocation's record, now
            timings.write_stopped(final)

    figures = []
    if cfg.figures and ctx.is_main_process:
        from dsb.plots import plot_run

        with phase("figures"):
            figures = plot_run(ctx.run_dir, evals=suite.types, num_classes=ctx.info.num_classes)
    record = timings.write(final, "finished")
    if ctx.is_main_process:
        summary = json.dumps({"final_step": final, **last, "timings": record}, indent=2)
        (ctx.run_dir / "summary.json").write_text(summary)
    return TrainResult(ctx.run_dir, final, resumed_from, last, state, figures, timings=record)


def _finished(ctx: RunContext, summary: dict, abstract: TrainState) -> TrainResult | None:
    """A finished run, rerun: its summary and last state, read from disk; nothing written.
    None when its final checkpoint cannot be restored (the run then resumes as usual)."""
    final = summary["final_step"]
    checkpoints = RunCheckpoints(ctx, read_only=True)
    try:
        state, _ = checkpoints.restore(final, abstract)
    except CheckpointDamagedError:
        return None
    finally:
        checkpoints.close()
    log.info("%s has finished (step %d): nothing to do", ctx.run_dir, final)
    last = {k: v for k, v in summary.items() if k not in ("final_step", "timings")}
    figures = sorted((ctx.run_dir / "figures").glob("*.png"))
    return TrainResult(ctx.run_dir, final, final, last, state, figures, finished=True)


def _early_stopping(ctx: RunContext, start: int):
    """The run's ``EarlyStopping`` (``dsb.early_stopping``), or None when it is off."""
    es = ctx.config.train.early_stopping
    if es.val_indices is None:
        return None
    from dsb.data.pipeline import load_indices
    from dsb.early_stopping import EarlyStopping

    n = len(ctx.full_train_data["label"])
    train_idx = ctx.config.data.train_indices
    train_idx = None if train_idx is None else load_indices(train_idx, n, "data.train_indices")
    return EarlyStopping(
        es, ctx.full_train_data, ctx.run_dir, train_idx, start, write=ctx.is_main_process
    )


def _make_mesh(cfg: Config):
    """The data-parallel mesh, after checking that the configuration can run on it."""
    mesh = parallel.make_mesh(cfg.parallel.num_devices)
    ndev = mesh.devices.size
    if cfg.data.batch_size % ndev:
        raise ValueError(
            f"data.batch_size={cfg.data.batch_size} is not divisible by the {ndev} devices"
        )
    platform = mesh.devices.flat[0].platform
    if platform == "cpu" and ndev > 1 and cfg.train.max_steps_in_flight > MAX_CPU_STEPS_IN_FLIGHT:
        raise ValueError(
            f"train.max_steps_in_flight={cfg.train.max_steps_in_flight}: XLA:CPU with "
            f"{ndev} devices deadlocks when a device has 32 computations queued; use at most "
            f"{MAX_CPU_STEPS_IN_FLIGHT}"
        )
    log.info("mesh: %d devices (%s), %d processes", ndev, platform, jax.process_count())
    return mesh


class _TimingsLog:
    """This invocation's line of ``<run_dir>/timings.jsonl`` (process 0): the phase
    record of ``timer`` with the steps the invocation started and ended at, and whether it
    finished the run; written once, when the run finishes or, failing that, when the
    training loop is left (preempted, or an error)."""

    FILE = "timings.jsonl"

    def __init__(self, ctx: RunContext, timer: PhaseTimer, start_step: int):
        self.path = ctx.run_dir / self.FILE
        self.enabled = ctx.is_main_process
        self.timer, self.start_step, self.written = timer, start_step, False

    def write(self, final_step: int, status: str) -> dict:
        record = self.timer.record()
        line = {"start_step": self.start_step, "final_step": final_step, "status": status}
        if self.enabled and not self.written:
            with self.path.open("a") as f:
                f.write(json.dumps(line | record) + "\n")
        self.written = True
        return record

    def write_stopped(self, final_step: int) -> None:
        try:
            self.write(final_step, "stopped")
        except OSError:
            pass  # the error being raised says what went wrong with the disk


class _InFlight:
    """The steps dispatched since the last host sync, and their metrics.

    No prefetch thread: JAX dispatch is asynchronous, so gathering and placing batch s + 1
    (~0.2 ms from host memory) already overlaps the device computing step s; a thread
    only added GIL contention (benchmarks/train_throughput.py measured it slower).

    Bounded asynchronous dispatch: before step s is dispatched, step s - N has finished (N =
    train.max_steps_in_flight), so at most N steps are queued or running. Without the bound,
    XLA:CPU with several devices deadlocks once a logging window dispatches more than ~32
    steps (seen with 2-8 simulated devices). Its client launches each device's share of a
    multi-device program from a thread pool of max(cores, devices) threads, and a launch
    blocks its pool thread while that device already has 32 computations queued
    (max_inflight_computations_per_device). A queued all-reduce needs one running pool
    thread per device to meet its rendezvous, so the blocked launchers starve it: "Expected
    4 threads to join the rendezvous, but only 3 of them arrived", then abort.
    Waiting on step s - N's loss (an output of the same program, so ready once the
    whole step is done) costs nothing while the device is busier than the host, on CPU
    and on accelerators alike; benchmarks/train_throughput.py measures it. ``pending``
    holds every step since the last host sync, so it holds every step in flight.
    """

    def __init__(self, limit: int, window: dict | None = None):
        self.limit = limit
        self.pending: list[tuple[int, dict[str, jax.Array]]] = []
        if window:  # the steps a preemption checkpoint saved before they were logged
            dtypes, values = window["dtypes"], window["values"]
            for i, s in enumerate(window["steps"]):
                self.add(s, {k: np.asarray(values[k][i], dtype) for k, dtype in dtypes.items()})
        self.restart_clock()

    def restart_clock(self) -> None:
        self.t0 = time.perf_counter()

    def wait_for_room(self) -> None:
        if len(self.pending) >= self.limit:
            jax.block_until_ready(self.pending[-self.limit][1]["loss"])

    def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
        self.pending.append((step, metrics))

    def window(self) -> dict:
        """The pending steps and their metrics on the host, as JSON (``{}`` if none): what
        a preemption checkpoint keeps so that the resumed run logs the same means."""
        if not self.pending:
            return {}
        host = jax.device_get([m for _, m in self.pending])
        return {
            "steps": [s for s, _ in self.pending],
            "dtypes": {k: str(np.asarray(v).dtype) for k, v in host[0].items()},
            "values": {k: [float(m[k]) for m in host] for k in host[0]},
        }

    def drain(self) -> dict[str, float]:
        """``train/<name>``: each metric's mean over the pending steps, and the steps per
        second since the clock was last restarted; raises on a non-finite loss."""
        host = jax.device_get([m for _, m in self.pending])
        for (s, _), m in zip(self.pending, host):
            if not math.isfinite(float(m["loss"])):
                raise NonFiniteLossError(s, float(m["loss"]))
        now = time.perf_counter()
        values = {f"train/{k}": float(np.mean([m[k] for m in host])) for k in host[0]}
        values["train/steps_per_s"] = len(self.pending) / (now - self.t0)
        self.pending.clear()
        self.t0 = now
        return values


class _Progress:
    """A tqdm bar on process 0 (``train.progress_bar``): loss and speed at each logging
    step, held-out accuracies at each checkpoint."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled:
            import tqdm

            self.bar = tqdm.tqdm(
                total=total,
                initial=initial,
                desc="train",
                unit="step",
                dynamic_ncols=True,
                mininterval=1.0,
            )

    def update(self, step: int, train_values: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{train_values['train/loss']:.4f}",
                steps_per_s=f"{train_values['train/steps_per_s']:.0f}",
            )
            self.bar.update(step - self.bar.n)

    def report(self, step: int, values: dict[str, float]) -> None:
        if self.bar is not None:
            shown = [
                f"{k}={v:.4f}"
                for k, v in values.items()
                if k.endswith("accuracy") and not k.startswith("train")
            ]
            self.bar.write(f"step {step}: " + ", ".join(shown[:6]))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
