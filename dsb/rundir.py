"""What dsb guarantees about a run directory, and the code that keeps the guarantees.

A run directory belongs to one run, with one config, written by one process at a time:

- ``config.yaml`` is the resolved config the run started with. It is written once; a
  resume whose config differs refuses at start-up, naming each differing key
  (``old -> new``), unless every difference is in ``FREE_KEYS`` (keys that cannot change
  the numbers already computed, see ``change_is_free``) or the resume opts in with
  ``ckpt.allow_config_change=true``. An accepted change is appended to ``history.jsonl``
  (old and new values, the step from which it took effect, forced or not) and
  ``config.yaml`` then holds the new values.
- Every checkpoint's metadata holds the fingerprint of the config it was written under
  (``config_fingerprint``); a resume refuses a checkpoint whose fingerprint is not one the
  run's history knows.
- ``run.lock`` names the process writing the directory (host, pid, start time); a second
  process refuses to start. A lock left by a dead process of this host is taken over
  with one warning. Several processes (``parallel=multihost``): process 0 holds it.
- ``ckpt.resume_step=N`` goes back to checkpoint N: later checkpoints and the
  ``metrics.jsonl`` lines after N are moved to ``discarded/<time>/`` and the rewind is
  recorded in ``history.jsonl``. ``ckpt.start_over=true`` moves everything the run wrote
  to ``discarded/<time>/`` and starts from step 0 (a new directory does the same, and is
  the usual way).

The control keys (``ckpt.resume_step``, ``ckpt.allow_config_change``,
``ckpt.start_over``, and a multi-host launch's ``parallel.coordinator_address`` and
``parallel.process_id``) say what one invocation or process does, not what the run is:
they are left out of ``config.yaml``'s comparison and of the fingerprint.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from dsb.config import Config

__all__ = [
    "CONTROL_KEYS",
    "FREE_KEYS",
    "ConfigChangedError",
    "RunDirError",
    "RunDirectory",
    "RunLock",
    "RunLockedError",
    "change_is_free",
    "config_diff",
    "config_fingerprint",
    "flat_config",
]

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
HISTORY_FILE = "history.jsonl"
DISCARDED_DIR = "discarded"
ABSENT = "<absent>"

# What one invocation (or one process of it) is told, never part of what the run is: the
# switches below, and where a multi-host launch meets and which process this is (each
# process of a run has its own process_id, and a requeued job a new coordinator port).
CONTROL_KEYS = (
    "ckpt.resume_step",
    "ckpt.allow_config_change",
    "ckpt.start_over",
    "parallel.coordinator_address",
    "parallel.process_id",
)

# Keys whose change cannot alter a number already computed (prefixes end with "."):
# where metrics are mirrored, what is shown, how saving is scheduled on the host.
FREE_KEYS = (
    "name",
    "logging.",
    "train.progress_bar",
    "train.max_steps_in_flight",
    "figures",
    "ckpt.async_save",
    "ckpt.keep_interval",
    "ckpt.verify_checksums",
    "mdl.",  # read by dsb.mdl only
)


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked; the message says what to do."""


class ConfigChangedError(RunDirError):
    pass


class RunLockedError(RunDirError):
    pass


# ------------------------------------------------------------------ config identity
def _flatten(node: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(node, dict) and node:
        for k, v in node.items():
            _flatten(v, f"{prefix}{k}.", out)
    else:
        out[prefix[:-1]] = node


def flat_config(cfg: Config | dict[str, Any]) -> dict[str, Any]:
    """``dotted.key -> value`` of a config (lists are values), control keys left out."""
    if isinstance(cfg, Config):
        tree = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    else:  # a config.yaml's dict, possibly from an older dsb: filled with the defaults
        merged = OmegaConf.merge(OmegaConf.structured(Config), cfg)
        tree = OmegaConf.to_container(merged, resolve=True)
    out: dict[str, Any] = {}
    _flatten(tree, "", out)
    return {k: v for k, v in out.items() if k not in CONTROL_KEYS}


def config_fingerprint(cfg: Config | dict[str, Any]) -> str:
    """sha256 (16 hex digits) of the config's keys and values, control keys left out."""
    text = json.dumps(flat_config(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_diff(old: Config | dict, new: Config | dict) -> dict[str, tuple[Any, Any]]:
    """``key -> (old, new)`` for every key whose value differs (``ABSENT`` if missing)."""
    a, b = flat_config(old), flat_config(new)
    return {
        k: (a.get(k, ABSENT), b.get(k, ABSENT))
        for k in sorted(a.keys() | b.keys())
        if a.get(k, ABSENT) != b.get(k, ABSENT)
    }


def change_is_free(key: str, old: Any, new: Any, new_cfg: Config) -> bool:
    """Whether changing ``key`` from ``old`` to ``new`` on resume leaves every number the
    run already computed as it is: a ``FREE_KEYS`` key; a new evaluator entry (it runs
    from the resume step on); ``train.total_steps`` made larger when the learning rate
    does not depend on it (``optim.schedule=constant``: the cosine schedules decay over
    ``total_steps``, so extending them changes the rate of steps already run)."""
    if any(key == k or (k.endswith(".") and key.startswith(k)) for k in FREE_KEYS):
        return True
    if key.startswith("evals.") and old == ABSENT:
        return True
    if key == "train.total_steps":
        return new > old and new_cfg.optim.schedule == "constant"
    return False


def _describe(diff: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k}: {o!r} -> {n!r}" for k, (o, n) in diff.items())


# ------------------------------------------------------------------------- the lock
class RunLock:
    """``<run dir>/run.lock``: an exclusive ``flock`` held for the life of the run, and the
    holder's host, pid and start time as JSON (what a refused process reports; ``flock``
    does not reach across hosts on every file system, so a lock of another host is
    honoured from its contents)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise RunLockedError(self._refusal(self._read())) from None
        # The file may have been replaced between open and flock (a holder releasing it).
        if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
            os.close(fd)
            raise RunLockedError(self._refusal(self._read()))
        holder = self._read()
        host = socket.gethostname()
        if holder:
            if holder.get("host") != host:
                os.close(fd)
                raise RunLockedError(
                    self._refusal(holder)
                    + f"; if that process is gone, delete {self.path} and rerun"
                )
            log.warning(
                "taking over %s from pid %s (started %s), which is no longer running",
                self.path,
                holder.get("pid"),
                holder.get("started"),
            )
        me = {
            "host": host,
            "pid": os.getpid(),
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "argv": sys.argv,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = None

    def _read(self) -> dict[str, Any]:
        try:
            text = self.path.read_text()
            return json.loads(text) if text.strip() else {}
        except (OSError, json.JSONDecodeError):
            return {}

    def _refusal(self, holder: dict[str, Any]) -> str:
        who = (
            f"pid {holder.get('pid')} on {holder.get('host')} (started {holder.get('started')})"
            if holder
            else "another process"
        )
        return f"{self.path.parent} is in use by {who}: one process writes a run directory"


# ------------------------------------------------------------------- the directory
def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _checkpoint_steps(run_dir: Path) -> list[int]:
    d = run_dir / "checkpoints"
    if not d.is_dir():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit())


class RunDirectory:
    """The run directory as one run owns it: ``open`` takes the lock (process 0), checks
    the config against ``config.yaml`` and applies ``ckpt.start_over`` /
    ``ckpt.resume_step``; ``resumed_at(step)`` records an accepted config change;
    ``close`` releases the lock."""

    def __init__(self, run_dir: Path, config: Config, is_main_process: bool = True):
        self.run_dir = Path(run_dir)
        self.config = config
        self.is_main_process = is_main_process
        self.lock = RunLock(self.run_dir)
        self.pending_change: dict[str, tuple[Any, Any]] = {}
        self.forced = False
        self.fingerprint = config_fingerprint(config)
        self.known_fingerprints = {self.fingerprint}
        self._stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d_%H-%M-%S")

    @property
    def config_path(self) -> Path:
        return self.run_dir / "config.yaml"

    @property
    def history_path(self) -> Path:
        return self.run_dir / HISTORY_FILE

    def history(self) -> list[dict[str, Any]]:
        if not self.history_path.exists():
            return []
        out = []
        for line in self.history_path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
        return out

    def open(self) -> RunDirectory:
        ck = self.config.ckpt
        if self.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
        try:
            if ck.start_over and self.is_main_process:
                self._start_over()
            self._check_config()
            if ck.resume_step is not None:
                self._rewind(ck.resume_step)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        self.lock.release()

    def __enter__(self) -> RunDirectory:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- config identity
    def _check_config(self) -> None:
        if not self.config_path.exists():
            self._write_config()
            return
        recorded = OmegaConf.to_container(OmegaConf.load(self.config_path), resolve=False)
        for event in self.history():
            self.known_fingerprints.update(
                event[k] for k in ("fingerprint_before", "fingerprint_after") if k in event
            )
        self.known_fingerprints.add(config_fingerprint(recorded))
        diff = config_diff(recorded, self.config)
        if not diff:
            return
        if not _checkpoint_steps(self.run_dir) and not (self.run_dir / "metrics.jsonl").exists():
            log.info("nothing was computed in %s yet: its config.yaml is replaced", self.run_dir)
            self._write_config()
            return
        fixed = {k: v for k, v in diff.items() if not change_is_free(k, *v, self.config)}
        if fixed and not self.config.ckpt.allow_config_change:
            raise ConfigChangedError(
                f"{self.run_dir} holds a run with another config; changed: {_describe(fixed)}. "
                "These keys change numbers the run already computed. Start a new run "
                "(another hydra.run.dir, or ckpt.start_over=true to move this one's files "
                "aside), or resume with the change anyway and have it recorded: add "
                "ckpt.allow_config_change=true"
            )
        self.pending_change = diff
        self.forced = bool(fixed)
        self._before = config_fingerprint(recorded)

    def resumed_at(self, step: int) -> None:
        """Record an accepted config change as taking effect from ``step`` and write the
        new ``config.yaml`` (process 0; no-op without a change)."""
        if not self.pending_change or not self.is_main_process:
            return
        self._append(
            {
                "event": "config_change",
                "step": step,
                "changes": {k: [o, n] for k, (o, n) in self.pending_change.items()},
                "forced": self.forced,
                "fingerprint_before": self._before,
                "fingerprint_after": self.fingerprint,
            }
        )
        self._write_config()
        how = "forced by ckpt.allow_config_change" if self.forced else "no computed value changes"
        log.warning(
            "config changed from step %d on (%s): %s", step, how, _describe(self.pending_change)
        )
        self.pending_change = {}

    def _write_config(self) -> None:
        if not self.is_main_process:
            return
        cfg = OmegaConf.structured(self.config)
        # The control keys describe this invocation, not the run.
        cfg.ckpt.resume_step, cfg.ckpt.allow_config_change, cfg.ckpt.start_over = None, False, False
        tmp = self.config_path.with_name("config.yaml.tmp")
        tmp.write_text(OmegaConf.to_yaml(cfg))
        os.replace(tmp, self.config_path)

    def _append(self, event: dict[str, Any]) -> None:
        with self.history_path.open("a") as f:
            f.write(json.dumps({"time": _now(), **event}, default=str) + "\n")

    # -- going back, starting over
    def discarded_dir(self) -> Path:
        return self.run_dir / DISCARDED_DIR / self._stamp

    def _start_over(self) -> None:
        keep = {LOCK_FILE, DISCARDED_DIR, ".hydra", "main.log", HISTORY_FILE}
        moved = [p for p in self.run_dir.iterdir() if p.name not in keep]
        if not moved:
            return
        dest = self.discarded_dir()
        dest.mkdir(parents=True, exist_ok=True)
        for p in moved:
            shutil.move(str(p), dest / p.name)
        self._append({"event": "start_over", "moved_to": str(dest.relative_to(self.run_dir))})
        log.warning("ckpt.start_over: the run's files were moved to %s", dest)

    def _rewind(self, step: int) -> None:
        steps = _checkpoint_steps(self.run_dir)
        if step not in steps:
            raise RunDirError(
                f"ckpt.resume_step={step}: {self.run_dir / 'checkpoints'} has no checkpoint "
                f"{step}; it has {steps}"
            )
        later = [s for s in steps if s > step]
        if not self.is_main_process:
            return
        from dsb.metrics import read_metrics

        path = self.run_dir / "metrics.jsonl"
        records = read_metrics(path)
        dropped = [r for r in records if r["step"] > step]
        if not later and not dropped:
            return
        dest = self.discarded_dir()
        (dest / "checkpoints").mkdir(parents=True, exist_ok=True)
        for s in later:
            shutil.move(str(self.run_dir / "checkpoints" / str(s)), dest / "checkpoints" / str(s))
        if dropped:
            (dest / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dropped))
            kept = "".join(json.dumps(r) + "\n" for r in records if r["step"] <= step)
            tmp = path.with_name("metrics.jsonl.tmp")
            tmp.write_text(kept)
            os.replace(tmp, path)
        with contextlib.suppress(FileNotFoundError):
            (self.run_dir / "summary.json").rename(dest / "summary.json")
        self._append(
            {
                "event": "rewind",
                "step": step,
                "checkpoints_moved": later,
                "metrics_steps_moved": [r["step"] for r in dropped],
                "moved_to": str(dest.relative_to(self.run_dir)),
            }
        )
        log.warning(
            "ckpt.resume_step=%d: checkpoints %s and later metrics moved to %s", step, later, dest
        )

    # -- a finished run
    def finished_summary(self) -> dict[str, Any] | None:
        """The run's ``summary.json`` when the run has finished (its last checkpoint is the
        summary's final step, which is ``train.total_steps`` unless early stopping ended
        it): nothing to do, and an accepted config change is not applied, since nothing
        runs under it. Else None."""
        path = self.run_dir / "summary.json"
        if self.config.ckpt.resume_step is not None or not path.exists():
            return None
        try:
            summary = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        steps = _checkpoint_steps(self.run_dir)
        if not steps or summary.get("final_step") != steps[-1]:
            return None
        early = self.config.train.early_stopping.val_indices is not None
        if summary["final_step"] != self.config.train.total_steps and not early:
            return None
        return summary
