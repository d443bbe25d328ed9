"""Orbax checkpoints: what is saved, when it is kept, and how to restore it anywhere.

A checkpoint is the whole training state (params, non-parameter model state such as
BatchNorm statistics, optimizer state, step, RNG key) plus JSON metadata holding the data
iterator position. Preservation is explicit: every scheduled (log-spaced) checkpoint is
kept forever, interval checkpoints only as the latest ``keep_interval``.

Integrity: orbax verifies nothing it reads back (TensorStore's OCDBT files carry no
checksum of the array bytes, so a flipped byte in a data file restores as a wrong value
without any error). So the metadata of every checkpoint holds a crc32 of each array,
computed at save from the host copy of the state, and a crc32 of the metadata itself
(the data position, the config fingerprint); once orbax has finalised a checkpoint, its
``dsb_files.json`` lists the crc32 of every file in it (orbax's own metadata included; a
checkpoint of a killed run may lack it). ``restore`` (``ckpt.verify_checksums``) checks
the metadata's checksum, then every file against the manifest, or, without a manifest,
every restored array against its checksum. crc32 (zlib, in the
standard library, ~1 GB/s) detects every burst of up to 32 flipped bits and random
damage with probability 1 - 2^-32; it is no defence against deliberate tampering, which
is not the threat here.
``benchmarks/checkpoint_integrity.py`` measures what it costs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import zlib
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from dsb.run_context import RunContext
from dsb.step import TrainState

__all__ = ["CheckpointDamagedError", "Checkpointer", "RunCheckpoints", "array_checksums"]

log = logging.getLogger(__name__)

# Files without which a checkpoint cannot be restored (checked before orbax reads it, so a
# missing one is named instead of surfacing as a pytree-structure error).
_REQUIRED_FILES = ("state/_METADATA", "state/manifest.ocdbt", "meta/metadata")
# The crc32 of every file of a checkpoint, written once orbax has finalised it.
FILES_MANIFEST = "dsb_files.json"


class CheckpointDamagedError(RuntimeError):
    """A checkpoint that cannot be restored as written: ``step``, the ``path`` found
    damaged, and ``reason`` (one line)."""

    def __init__(self, step: int, path: str | Path, reason: str):
        super().__init__(f"checkpoint {step} is damaged: {path}: {reason}")
        self.step, self.path, self.reason = step, Path(path), reason


def _host(x) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_shards[0].data  # the state is replicated: any shard is all of it
    return np.asarray(x)


def array_checksums(tree: Any) -> dict[str, str]:
    """``keypath -> "<crc32 hex>"`` of every array of ``tree``, over its dtype, shape and
    bytes (the host copy; replicated arrays read from this process's first shard)."""
    paths_leaves = jax.tree_util.tree_leaves_with_path(tree)
    host = jax.device_get([_host(x) for _, x in paths_leaves])
    out = {}
    for (path, _), a in zip(paths_leaves, host, strict=True):
        a = np.ascontiguousarray(a)
        crc = zlib.crc32(f"{a.dtype}{a.shape}".encode())
        crc = zlib.crc32(a.reshape(-1).view(np.uint8), crc)
        out[jax.tree_util.keystr(path)] = f"{crc:08x}"
    return out


def _file_crc32(path: Path) -> str:
    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def _meta_checksum(meta: dict[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "meta_crc32"}
    return f"{zlib.crc32(json.dumps(body, sort_keys=True).encode()):08x}"


def _storage_error(e: BaseException) -> OSError | None:
    """The OSError behind an orbax / TensorStore failure (they report a failed write as
    ``ValueError: RESOURCE_EXHAUSTED ... No space left on device [os_error_code='28']``),
    else None."""
    if isinstance(e, OSError):
        return e
    m = re.search(r"os_error_code='(\d+)'", str(e))
    if m is None:
        return None
    code = int(m.group(1))
    path = re.search(r'Failed (?:writing|to open|reading)[^"]*"([^"]+)"', str(e))
    return OSError(code, os.strerror(code), path.group(1) if path else None)


@contextlib.contextmanager
def _storage_errors():
    """Raise a storage failure inside orbax as the OSError it is."""
    try:
        yield
    except Exception as e:
        if (os_error := _storage_error(e)) is None or os_error is e:
            raise
        raise os_error from e


def _one_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception (orbax and TensorStore add tens of lines of context)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Checkpointer:
    def __init__(
        self,
        directory: str | Path,
        keep_steps: list[int] | tuple[int, ...] = (),
        keep_interval: int = 2,
        async_save: bool = True,
        read_only: bool = False,
        checksums: bool = True,
    ):
        self.directory = Path(directory).absolute()
        # Record (save) and verify (restore) per-array checksums in the metadata, and
        # per-file checksums in each checkpoint's FILES_MANIFEST.
        self.checksums = checksums
        self._unlisted: list[int] = []  # saved, not yet in a manifest
        self.async_save = async_save
        policies = [ocp.checkpoint_managers.LatestN(max(1, keep_interval))]
        if keep_steps:
            policies.append(ocp.checkpoint_managers.CustomSteps(list(keep_steps)))
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=async_save,
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            # The trainer's schedule decides when to save (``save(..., force=True)``).
            save_decision_policy=ocp.checkpoint_managers.SpecificStepsPolicy(steps=[]),
            create=not read_only,
            read_only=read_only,
            cleanup_tmp_directories=not read_only,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        if self.checksums:
            meta = {**meta, "array_crc32": array_checksums(state)}
            self.wait()  # orbax waits for the previous save anyway; then it gets its manifest
        meta = {**meta, "meta_crc32": _meta_checksum(meta)}
        self._unlisted.append(step)
        with _storage_errors():
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
                force=True,
            )
            if not self.async_save:  # finalised on return
                self._write_manifests()

    def _write_manifests(self) -> None:
        """``<step>/FILES_MANIFEST``: the crc32 of every file of each checkpoint saved
        since the last call, once orbax has finalised it (process 0 writes it)."""
        steps, self._unlisted = self._unlisted, []
        if not self.checksums or jax.process_index() != 0:
            return
        for step in steps:
            d = self.directory / str(step)
            if not d.is_dir():  # already removed by the preservation policy
                continue
            files = {
                str(p.relative_to(d)): _file_crc32(p)
                for p in sorted(d.rglob("*"))
                if p.is_file() and p.name != FILES_MANIFEST
            }
            tmp = d / (FILES_MANIFEST + ".tmp")
            tmp.write_text(json.dumps({"crc32": files}, indent=0))
            tmp.replace(d / FILES_MANIFEST)

    def verify_files(self, step: int) -> bool:
        """Compare checkpoint ``step``'s files with its manifest; False if it has none."""
        d = self.directory / str(step)
        manifest = d / FILES_MANIFEST
        if not self.checksums or not manifest.is_file():
            return False
        try:
            listed = json.loads(manifest.read_text())["crc32"]
        except (OSError, UnicodeDecodeError, ValueError, KeyError) as e:
            raise CheckpointDamagedError(step, manifest, _one_line(e)) from e
        for rel, crc in listed.items():
            path = d / rel
            if not path.is_file():
                raise CheckpointDamagedError(step, path, "file missing")
            if _file_crc32(path) != crc:
                raise CheckpointDamagedError(step, path, "file checksum mismatch")
        return True

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Checkpoint ``step``, verified; raises ``CheckpointDamagedError`` when a file is
        missing, unreadable, or its arrays or metadata differ from what was saved."""
        d = self.directory / str(step)
        for name in _REQUIRED_FILES:
            if not (d / name).is_file():
                raise CheckpointDamagedError(step, d / name, "file missing")
        # Every byte orbax reads is then verified; the arrays' own checksums are the check
        # of a checkpoint without a manifest (its run was killed before it was written).
        files_verified = self.verify_files(step)
        try:
            meta = json.loads((d / "meta" / "metadata").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointDamagedError(step, d / "meta" / "metadata", _one_line(e)) from e
        if "meta_crc32" in meta and meta["meta_crc32"] != _meta_checksum(meta):
            raise CheckpointDamagedError(
                step, d / "meta" / "metadata", "metadata checksum mismatch"
            )
        try:
            with _quiet_orbax():
                out = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        meta=ocp.args.JsonRestore(),
                    ),
                )
        except Exception as e:  # orbax and TensorStore raise many types for damaged files
            raise CheckpointDamagedError(step, _named_path(e, d / "state"), _one_line(e)) from e
        state, meta = out["state"], out["meta"]
        if self.checksums and not files_verified and "array_crc32" in meta:
            got = array_checksums(state)
            bad = [k for k, v in meta["array_crc32"].items() if got.get(k) != v]
            if bad or got.keys() != meta["array_crc32"].keys():
                what = f"array {bad[0]}" if bad else "the set of arrays"
                more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
                raise CheckpointDamagedError(
                    step, d / "state", f"checksum mismatch in {what}{more}"
                )
        return state, meta

    def restore_latest(self, abstract_state: Any, max_step: int | None = None):
        """Restore the newest readable checkpoint; ``None`` if there is none.

        A checkpoint that fails to restore (partially written, truncated, corrupt, a
        checksum mismatch) is skipped with one warning line naming the step, the file and
        the reason, and the one before it is tried.
        """
        for step in reversed(self.all_steps()):
            if max_step is not None and step > max_step:
                continue
            try:
                state, meta = self.restore(step, abstract_state)
            except CheckpointDamagedError as e:
                log.warning("%s; trying the previous checkpoint", e)
                continue
            return step, state, meta
        return None

    def wait(self) -> None:
        with _storage_errors():
            self.manager.wait_until_finished()
            self._write_manifests()

    def close(self) -> None:
        self.wait()
        self.manager.close()


# ------------------------------------------------------------------ a run's checkpoints
class RunCheckpoints:
    """A run's checkpoints: the ``TrainState`` at each scheduled step, with the position
    of the data stream it was written at (``meta["data"]``).

    A checkpoint written on preemption (``dsb.preemption``) may be at any step; it also
    holds the training metrics of the steps since the last logging step
    (``meta["train_window"]``), which ``resume`` hands back as ``resumed_window`` so that
    the resumed run logs the same means.
    """

    def __init__(self, ctx: RunContext, read_only: bool = False):
        from dsb.rundir import config_fingerprint

        cfg = ctx.config
        self.ctx = ctx
        self.resumed_window: dict[str, Any] = {}
        # Recorded in every checkpoint's metadata (dsb.rundir: config identity).
        self.fingerprint = config_fingerprint(cfg)
        with _quiet_read_only(read_only):
            self.checkpointer = Checkpointer(
                Path(ctx.run_dir) / "checkpoints",
                keep_steps=() if read_only else ctx.schedule.kept_checkpoints,
                keep_interval=cfg.ckpt.keep_interval,
                async_save=cfg.ckpt.async_save and not read_only,
                read_only=read_only,
                checksums=cfg.ckpt.verify_checksums,
            )

    @property
    def directory(self) -> Path:
        return self.checkpointer.directory

    def steps(self) -> list[int]:
        return self.checkpointer.all_steps()

    def save(self, step: int, state: TrainState, train_window: dict | None = None) -> None:
        """Save ``state`` after ``step`` updates; ``train_window``: the host metrics of the
        steps not yet logged (``dsb.train._InFlight.window``), for a preemption checkpoint.
        """
        d = self.ctx.config.data
        meta = {
            "step": step,
            "config_fingerprint": self.fingerprint,
            "data": {
                "next_step": step,
                "shuffle_seed": d.shuffle_seed,
                "global_batch_size": d.batch_size,
            },
        }
        if train_window:
            meta["train_window"] = train_window
        self.checkpointer.save(step, state.to_dict(), meta)

    def wait(self) -> None:
        """Block until every checkpoint saved so far is on disk."""
        self.checkpointer.wait()

    def restore(self, step: int, target: TrainState) -> tuple[TrainState, dict[str, Any]]:
        state, meta = self.checkpointer.restore(step, target.to_dict())
        return TrainState(**state), meta

    def restore_latest(
        self, target: TrainState, max_step: int | None = None
    ) -> tuple[int, TrainState, dict[str, Any]] | None:
        """The newest readable checkpoint (up to ``max_step``): ``(step, state, meta)``,
        or ``None``; unreadable ones are skipped with a warning."""
        restored = self.checkpointer.restore_latest(target.to_dict(), max_step=max_step)
        if restored is None:
            return None
        step, state, meta = restored
        return step, TrainState(**state), meta

    def resume(
        self, target: TrainState, known_fingerprints: set[str] | None = None
    ) -> tuple[int, TrainState] | None:
        """The newest readable checkpoint up to the last step, or ``None``. Later (damaged)
        checkpoints are deleted, since the run retrains and saves them anew; when none is
        readable, nothing is deleted and ``RunDirError`` says so. ``known_fingerprints``:
        the config fingerprints of the run's history (``dsb.rundir``); a checkpoint
        written under another config is refused."""
        restored = self.restore_latest(target, max_step=self.ctx.schedule.total_steps)
        if restored is None:
            if self.steps():
                from dsb.rundir import RunDirError

                raise RunDirError(
                    f"none of the checkpoints {self.steps()} in {self.directory} can be "
                    "restored (each is named above); nothing was deleted. Start over with "
                    "ckpt.start_over=true (moves the run's files aside) or use a new directory"
                )
            return None
        start, state, meta = restored
        for later in [s for s in self.steps() if s > start]:
            self.checkpointer.manager.delete(later)
        fingerprint = meta.get("config_fingerprint")
        if known_fingerprints and fingerprint is not None and fingerprint not in known_fingerprints:
            from dsb.rundir import ConfigChangedError

            raise ConfigChangedError(
                f"checkpoint {start} in {self.directory} was written under a config "
                f"(fingerprint {fingerprint}) that is neither config.yaml's nor one in the "
                "run's history.jsonl: another run wrote into this directory. Start a new "
                "run in another directory"
            )
        seed = self.ctx.config.data.shuffle_seed
        if meta["data"]["next_step"] != start or meta["data"]["shuffle_seed"] != seed:
            raise ValueError(
                f"checkpoint {start} was written by a run with another data order: {meta['data']}"
            )
        self.resumed_window = meta.get("train_window", {})
        log.info("resumed from checkpoint %d in %s", start, self.directory)
        return start, state

    def close(self) -> None:
        self.checkpointer.close()


def _named_path(e: BaseException, default: Path) -> Path:
    """The file of the checkpoint an orbax / TensorStore error names, else ``default``."""
    m = re.search(r"(/[^\s\"']+)", str(e))
    return Path(m.group(1)) if m and str(default.parent) in m.group(1) else default


@contextlib.contextmanager
def _quiet_orbax():
    """Orbax logs a damaged checkpoint's error itself (with TensorStore's context) before
    raising it; the caller reports it in one line instead."""
    loggers = [logging.getLogger(n) for n in ("absl", "orbax")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def _quiet_read_only(read_only: bool):
    """Orbax logs two warnings for every read-only manager it opens ("read_only=True,
    setting ...", "Given directory is read only"): they restate what was asked for, and
    a notebook opening 16 checkpoints printed 32 of them."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    if read_only:
        absl_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl_logger.setLevel(level)
