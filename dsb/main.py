"""Command-line entry: ``python -m dsb.main [experiment=NAME] [key=value ...]`` (or ``dsb-train``).

A thin Hydra app: compose ``conf/``, validate it against ``dsb.config``, train, and print
where everything was written. ``-m`` runs sweeps. Rerunning with the same
``hydra.run.dir=<run dir>`` resumes from that directory's newest checkpoint (``dsb.rundir``
says what a resume checks); rerunning a finished run prints its summary and writes nothing.

Failures the user can act on (storage errors, damaged checkpoints, a refused resume, a
diverged loss, an interrupt) end with one line on the terminal saying what happened and
what to run next; the full traceback goes to the run's log file (``<run dir>/main.log``,
Hydra's job log). A config that fails validation leaves no run directory behind.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
import threading
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dsb.config import CONF_DIR, register_schemas, to_config
from dsb.timing import format_timings

log = logging.getLogger("dsb")


def _report(result) -> str:
    d = result.run_dir
    steps = sorted(int(p.name) for p in (d / "checkpoints").iterdir() if p.name.isdigit())
    lines = [
        f"run directory : {d}",
        f"metrics       : {d / 'metrics.jsonl'}",
        f"tensorboard   : {d / 'tensorboard'}",
        f"checkpoints   : {d / 'checkpoints'} (steps {', '.join(map(str, steps))})",
        f"config        : {d / 'config.yaml'}",
    ]
    lines += [f"figure        : {f}" for f in result.figures]
    # One line per evaluator group (``val``, ``dsb/maxent/ics``, ...): its final accuracy
    # and loss; every value is in metrics.jsonl and summary.json.
    groups: dict[str, list[str]] = {}
    for k, v in sorted(result.last_metrics.items()):
        group, _, name = k.rpartition("/")
        if group and not group.startswith("time") and name.endswith(("accuracy", "loss")):
            groups.setdefault(group, []).append(f"{name}={v:.4f}")
    if groups:
        lines.append(f"final metrics (step {result.final_step}):")
        width = max(24, *(len(g) + 2 for g in groups))  # long group names stay apart
        lines += [f"  {g:<{width}}{', '.join(vals)}" for g, vals in groups.items()]
    if result.timings is not None:
        lines.append("where the time went (summary.json: timings; timings.jsonl):")
        lines += ["  " + line for line in format_timings(result.timings).splitlines()]
    if result.finished:
        lines.append("(the run had already finished: nothing was trained or written)")
    elif result.resumed_from is not None:
        lines.append(f"(resumed from checkpoint {result.resumed_from})")
    return "\n".join(lines)


# Overrides that say what one invocation does; a resume command leaves them out.
_ONE_OFF = ("ckpt.resume_step=", "ckpt.allow_config_change=", "ckpt.start_over=")


def resume_command(overrides: list[str], run_dir: Path) -> str:
    """The command that resumes the run in ``run_dir`` (its own overrides, quoted)."""
    keep = [o for o in overrides if not o.startswith(_ONE_OFF)]
    return " ".join(
        ["python -m dsb.main", *map(shlex.quote, keep), shlex.quote(f"hydra.run.dir={run_dir}")]
    )


def _remove_if_fresh(run_dir: Path) -> None:
    """Hydra creates the run directory (``.hydra/``, ``main.log``) before the app runs; a
    run that fails validation removes it again if that is all it holds."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", "main.log"}:
        shutil.rmtree(run_dir, ignore_errors=True)


def _unfinished_siblings(run_dir: Path, cfg) -> list[Path]:
    """Other directories next to a new ``run_dir`` holding an unfinished run of the same
    config and no live writer: the run the user probably meant to resume."""
    from dsb.rundir import LOCK_FILE, config_fingerprint

    if (run_dir / "config.yaml").exists() or not run_dir.parent.is_dir():
        return []
    mine, found = config_fingerprint(cfg), []
    for d in sorted(run_dir.parent.iterdir()):
        if d == run_dir or not (d / "config.yaml").is_file() or (d / "summary.json").exists():
            continue
        if not (d / "checkpoints").is_dir() or _lock_is_live(d / LOCK_FILE):
            continue
        try:
            from omegaconf import OmegaConf

            theirs = config_fingerprint(OmegaConf.to_container(OmegaConf.load(d / "config.yaml")))
        except Exception:
            continue
        if theirs == mine:
            found.append(d)
    return found


def _lock_is_live(path: Path) -> bool:
    import json
    import socket

    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except (ProcessLookupError, KeyError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def _not_library_errors(record: logging.LogRecord) -> bool:
    """Console filter: orbax's own ERROR records (a failed background write or read,
    logged with its traceback from each of its threads) stay in the log file; dsb reports
    the failure itself, in one line."""
    return not (record.levelno >= logging.ERROR and record.name.startswith(("absl", "orbax")))


def _fail(message: str, code: int = 1) -> None:
    """One line on stderr; the traceback being handled goes to the log files only."""
    record = logging.LogRecord("dsb", logging.ERROR, __file__, 0, message, None, sys.exc_info())
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
            message += f" (traceback in {handler.baseFilename})"
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def _storage_advice(e: OSError) -> str:
    import errno

    if e.errno == errno.ENOSPC:
        return "free space on that disk (or use a run directory on another one)"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "make the run directory writable by you (or use another one)"
    return "fix the storage problem"


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _hydra_main(dcfg: DictConfig) -> float | None:
    import jax

    from dsb.checkpoint import CheckpointDamagedError
    from dsb.metrics import NonFiniteLossError
    from dsb.rundir import RunDirError
    from dsb.train import train

    run_dir = Path(HydraConfig.get().runtime.output_dir).absolute()
    for handler in logging.getLogger().handlers:  # Hydra's, configured for this job
        if not isinstance(handler, logging.FileHandler):
            handler.addFilter(_not_library_errors)
    try:
        cfg = to_config(dcfg)  # validates everything before any compute
    except Exception:
        _remove_if_fresh(run_dir)
        raise
    overrides = list(HydraConfig.get().overrides.task)
    resume = resume_command(overrides, run_dir)
    main_process = jax.process_index() == 0
    if main_process:
        for d in _unfinished_siblings(run_dir, cfg):
            log.warning(
                "%s holds an unfinished run of this config; to resume it instead of starting "
                "this new one: %s",
                d,
                resume_command(overrides, d),
            )
        log.info("run directory %s; if this run stops, resume it with: %s", run_dir, resume)
    try:
        result = train(cfg, run_dir)
    except NonFiniteLossError as e:
        _fail(f"{e} Next: {e.how_to_continue(cfg.optim.learning_rate, overrides)}")
    except RunDirError as e:
        _fail(str(e))
    except CheckpointDamagedError as e:
        _fail(f"{e}. Go back to an earlier checkpoint with ckpt.resume_step=<step>")
    except OSError as e:
        _fail(f"storage error: {e}. {_storage_advice(e).capitalize()}, then resume: {resume}")
    except KeyboardInterrupt:
        _fail(f"interrupted; resume with: {resume}", code=130)
    if main_process:
        print(_report(result), flush=True)
    # Returned for sweepers that optimise an objective.
    return result.last_metrics.get("val/loss")


def run_app(hydra_main) -> None:
    """Run a ``@hydra.main`` app of dsb's configs: the config schemas registered, INFO
    logging with the libraries' chatter at WARNING (``dsb.main`` and ``dsb.mdl`` share it)."""
    register_schemas()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("absl", "orbax", "jax._src", "tensorflow_datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _route_background_errors()
    # A log file on a full disk must not add its own tracebacks ("--- Logging error ---")
    # to the one line that says the disk is full.
    logging.raiseExceptions = False
    hydra_main()


def _route_background_errors() -> None:
    """Orbax's asyncio readers and writers, once a checkpoint read or write has failed,
    leave coroutines that raise after their event loop closed ("Event loop is closed",
    "Exception ignored in: <coroutine ...>", with TensorStore's spec): tens of lines per
    array on the terminal, each saying again what the one error line says. They go to
    the run's log file (the file handlers) instead."""

    def to_log_files(exc_type, exc, tb, what: str) -> bool:
        text = f"{exc_type.__name__}: {exc}"
        origin = "".join(traceback.format_tb(tb)) if tb is not None else ""
        if "Event loop is closed" not in text and "orbax" not in origin:
            return False
        record = logging.LogRecord(
            "dsb.background", logging.DEBUG, __file__, 0, what, None, (exc_type, exc, tb)
        )
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)
        return True

    default_unraisable, default_thread = sys.unraisablehook, threading.excepthook

    def unraisable(u) -> None:
        what = f"ignored in {u.object!r}"
        if not to_log_files(u.exc_type, u.exc_value, u.exc_traceback, what):
            default_unraisable(u)

    def thread_hook(a) -> None:
        what = f"in thread {a.thread.name if a.thread else '?'}"
        if not to_log_files(a.exc_type, a.exc_value, a.exc_traceback, what):
            default_thread(a)

    sys.unraisablehook, threading.excepthook = unraisable, thread_hook


def main() -> None:
    run_app(_hydra_main)


if __name__ == "__main__":
    sys.exit(main())
