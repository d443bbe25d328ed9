"""What dsb guarantees about a run directory (``dsb.rundir``, ``dsb.checkpoint``,
``dsb.main``): the README section "What dsb guarantees about a run directory" names the
test of each guarantee. Failures that involve processes (two writers, a killed holder,
the command line's messages) are tested with real processes."""

import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dsb_testing import ROOT, TINY, tiny_config

from dsb.checkpoint import FILES_MANIFEST, CheckpointDamagedError, Checkpointer
from dsb.config import read_run_config
from dsb.metrics import read_metrics
from dsb.optim import make_schedule
from dsb.rundir import (
    ABSENT,
    ConfigChangedError,
    RunDirectory,
    RunDirError,
    RunLock,
    RunLockedError,
    change_is_free,
    config_diff,
    config_fingerprint,
)


# ------------------------------------------------------------------ config identity
def test_config_diff_and_which_changes_are_free():
    base = tiny_config()
    assert config_diff(base, tiny_config("optim.learning_rate=0.5")) == {
        "optim.learning_rate": (0.01, 0.5)
    }
    assert change_is_free("logging.tensorboard", True, False, base)
    assert change_is_free("train.progress_bar", False, True, base)
    assert change_is_free("evals.extra.type", ABSENT, "classification", base)
    assert not change_is_free("evals.val.split", "test", "train", base)
    assert not change_is_free("model.kwargs.widths", [32], [64], base)
    # The cosine schedule decays over total_steps: extending it changes the learning rate
    # of steps already run, so only a constant schedule may be extended.
    longer = tiny_config("train.total_steps=32")
    assert make_schedule(base.optim, 16)(8) != make_schedule(longer.optim, 32)(8)
    assert not change_is_free("train.total_steps", 16, 32, longer)
    constant = tiny_config("train.total_steps=32", "optim.schedule=constant")
    assert change_is_free("train.total_steps", 16, 32, constant)
    assert not change_is_free("train.total_steps", 32, 16, constant)
    # What one invocation does is not part of the run's identity.
    forced = tiny_config("ckpt.allow_config_change=true", "ckpt.resume_step=4")
    assert config_fingerprint(forced) == config_fingerprint(base)
    # Nor is where a multi-host launch meets, or which process this is.
    launch = ["parallel=multihost", "parallel.num_processes=2"]
    p0 = tiny_config(*launch, "parallel.coordinator_address=h:1", "parallel.process_id=0")
    p1 = tiny_config(*launch, "parallel.coordinator_address=h:2", "parallel.process_id=1")
    assert config_diff(p0, p1) == {}
    assert config_fingerprint(tiny_config("seed=1")) != config_fingerprint(base)


def _computed(run: Path, *steps: int) -> None:
    """Pretend checkpoints were written (the config checks only look at the directory)."""
    for s in steps:
        (run / "checkpoints" / str(s)).mkdir(parents=True, exist_ok=True)


def test_changed_config_refused_then_free_and_forced_changes_recorded(tmp_path):
    run = tmp_path / "run"
    with RunDirectory(run, tiny_config()):
        pass
    written = (run / "config.yaml").read_text()
    _computed(run, 0, 8)
    with pytest.raises(ConfigChangedError, match=r"optim\.learning_rate: 0\.01 -> 0\.001"):
        RunDirectory(run, tiny_config("optim.learning_rate=1e-3")).open()
    with pytest.raises(ConfigChangedError, match=r"train\.total_steps: 16 -> 32"):
        RunDirectory(run, tiny_config("train.total_steps=32")).open()  # warmup_cosine
    assert (run / "config.yaml").read_text() == written  # never silently rewritten
    assert not (run / "run.lock").exists()  # a refused process lets go of the lock

    free = tiny_config("logging.tensorboard=false", "+evals.extra={type: classification}")
    with RunDirectory(run, free) as rd:
        rd.resumed_at(8)
    forced = tiny_config(
        "logging.tensorboard=false",
        "+evals.extra={type: classification}",
        "optim.learning_rate=1e-3",
        "ckpt.allow_config_change=true",
    )
    with RunDirectory(run, forced) as rd:
        rd.resumed_at(4)
    events = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [(e["event"], e["step"], e["forced"]) for e in events] == [
        ("config_change", 8, False),
        ("config_change", 4, True),
    ]
    assert events[0]["changes"]["logging.tensorboard"] == [True, False]
    assert events[1]["changes"] == {"optim.learning_rate": [0.01, 0.001]}
    cfg = read_run_config(run)
    assert cfg.optim.learning_rate == 0.001 and not cfg.logging.tensorboard
    assert "extra" in cfg.evals and not cfg.ckpt.allow_config_change
    # Every fingerprint of the history is known: its checkpoints stay resumable.
    rd = RunDirectory(
        run,
        tiny_config(
            "logging.tensorboard=false",
            "optim.learning_rate=1e-3",
            "+evals.extra={type: classification}",
        ),
    ).open()
    rd.close()
    assert rd.known_fingerprints >= {e["fingerprint_before"] for e in events}


def test_nothing_computed_yet_config_is_replaced(tmp_path):
    run = tmp_path / "run"
    with RunDirectory(run, tiny_config()):
        pass
    with RunDirectory(run, tiny_config("optim.learning_rate=1e-3")):
        pass
    assert read_run_config(run).optim.learning_rate == 0.001


def test_resume_step_moves_later_checkpoints_and_metrics_aside(tmp_path):
    run = tmp_path / "run"
    with RunDirectory(run, tiny_config()):
        pass
    _computed(run, 0, 1, 2, 4, 8)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in (0, 4, 8)))
    (run / "summary.json").write_text("{}")
    with pytest.raises(RunDirError, match="no checkpoint 3"):
        RunDirectory(run, tiny_config("ckpt.resume_step=3")).open()
    with RunDirectory(run, tiny_config("ckpt.resume_step=2")) as rd:
        dest = rd.discarded_dir()
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir()) == [0, 1, 2]
    assert sorted(int(p.name) for p in (dest / "checkpoints").iterdir()) == [4, 8]
    assert [r["step"] for r in read_metrics(run)] == [0]
    assert [r["step"] for r in read_metrics(dest / "metrics.jsonl")] == [4, 8]
    assert not (run / "summary.json").exists()
    (event,) = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert event["event"] == "rewind" and event["step"] == 2
    assert event["checkpoints_moved"] == [4, 8]


def test_start_over_moves_the_run_aside(tmp_path):
    run = tmp_path / "run"
    with RunDirectory(run, tiny_config()):
        pass
    _computed(run, 0, 8)
    (run / "metrics.jsonl").write_text('{"step": 0}\n')
    with RunDirectory(run, tiny_config("ckpt.start_over=true", "seed=3")) as rd:
        dest = rd.discarded_dir()
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "discarded", "history.jsonl"]
    assert (dest / "checkpoints" / "8").is_dir() and (dest / "metrics.jsonl").exists()
    assert read_run_config(run).seed == 3


# ------------------------------------------------------------------------- the lock
LOCKER = r"""
import sys, time
from pathlib import Path
from dsb.rundir import RunLock, RunLockedError
lock = RunLock(Path(sys.argv[1]))
try:
    lock.acquire()
except RunLockedError as e:
    print("REFUSED", e, flush=True)
    sys.exit(3)
print("HOLDING", flush=True)
time.sleep(float(sys.argv[2]))
lock.release()
"""


def _locker(run: Path, hold_s: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(run), str(hold_s)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_two_processes_racing_for_a_run_directory(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    procs = [_locker(run, 8.0) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert sorted(p.returncode for p in procs) == [0, 3], outs
    holder = procs[[p.returncode for p in procs].index(0)]
    refused = outs[[p.returncode for p in procs].index(3)]
    assert f"in use by pid {holder.pid} on {socket.gethostname()}" in refused, outs
    assert not (run / "run.lock").exists()  # released by the holder


def test_lock_of_a_killed_process_is_taken_over_with_one_warning(tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    proc = _locker(run, 120.0)
    assert proc.stdout.readline().strip() == "HOLDING"
    with pytest.raises(RunLockedError, match=f"pid {proc.pid}"):
        RunLock(run).acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((run / "run.lock").read_text())["pid"] == proc.pid  # left behind
    lock = RunLock(run)
    with caplog.at_level("WARNING", logger="dsb.rundir"):
        lock.acquire()
    warned = [r.getMessage() for r in caplog.records if r.name == "dsb.rundir"]
    assert len(warned) == 1 and f"from pid {proc.pid}" in warned[0], warned
    assert json.loads((run / "run.lock").read_text())["pid"] == os.getpid()
    lock.release()
    # A lock of another host cannot be checked for liveness: it is honoured.
    (run / "run.lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "t"}))
    with pytest.raises(RunLockedError, match="pid 1 on elsewhere"):
        RunLock(run).acquire()


# ------------------------------------------------------------ checkpoint integrity
def _state(seed=0):
    """Random bits as float32 arrays: incompressible, so zstd stores them raw and a flipped
    byte in them restores silently as a wrong value (as it did in a real run's data file:
    4 KiB flipped, 1,179 wrong Adam entries, no error)."""
    rng = np.random.default_rng(seed)

    def bits(*shape):
        return jnp.asarray(rng.integers(0, 2**32, size=shape, dtype=np.uint32).view(np.float32))

    return {
        "params": {"w": bits(64, 256)},
        "opt_state": {"mu": bits(64, 256)},
        "step": jnp.asarray(4, jnp.int32),
    }


def _flip(path: Path, offset: int) -> None:
    b = bytearray(path.read_bytes())
    b[offset] ^= 0x55
    path.write_bytes(bytes(b))


@pytest.fixture
def saved_checkpoint(tmp_path):
    state = _state()
    ck = Checkpointer(tmp_path / "src", async_save=False)
    ck.save(4, state, {"step": 4, "data": {"next_step": 4, "shuffle_seed": 0}})
    ck.close()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    return tmp_path, state, abstract


def _restore(d: Path, abstract):
    ck = Checkpointer(d, async_save=False, read_only=True)
    try:
        return ck.restore(4, abstract)
    finally:
        ck.close()


def test_every_byte_flip_in_every_checkpoint_file_is_detected(saved_checkpoint):
    tmp, _, abstract = saved_checkpoint
    src = tmp / "src" / "4"
    files = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file())
    kinds = {str(f).split("/")[0] for f in files}
    assert {"state", "meta", "_CHECKPOINT_METADATA", FILES_MANIFEST} <= kinds
    _, meta = _restore(tmp / "src", abstract)
    assert meta["data"]["next_step"] == 4
    for rel in files:
        size = (src / rel).stat().st_size
        for offset in sorted({0, size // 2, size - 1}):
            work = tmp / "work"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(tmp / "src", work)
            _flip(work / "4" / rel, offset)
            with pytest.raises(CheckpointDamagedError) as ei:
                _restore(work, abstract)
            assert ei.value.step == 4 and "\n" not in str(ei.value), (rel, offset)


def _find(state_dir: Path, array) -> tuple[Path, int]:
    """The data file holding ``array``'s bytes and their offset in it."""
    head = np.asarray(array).tobytes()[:64]
    for f in sorted(state_dir.rglob("*")):
        if f.is_file() and (i := f.read_bytes().find(head)) >= 0:
            return f, i
    raise AssertionError("the array is not stored raw in any data file")


def test_array_and_metadata_checksums_without_the_file_manifest(saved_checkpoint):
    """A checkpoint whose manifest was never written (killed right after orbax finalised
    it): a flipped byte in the parameters or the optimizer state restores silently in
    orbax and is caught by the arrays' checksums; the data position by the metadata's."""
    tmp, state, abstract = saved_checkpoint
    for name, array, offset in [
        ("params", state["params"]["w"], 1000),
        ("opt_state", state["opt_state"]["mu"], 2000),
    ]:
        work = tmp / "work"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(tmp / "src", work)
        (work / "4" / FILES_MANIFEST).unlink()
        f, i = _find(work / "4" / "state", array)
        _flip(f, i + offset)
        with pytest.raises(CheckpointDamagedError, match=f"checksum mismatch in array \\['{name}'"):
            _restore(work, abstract)
    work = tmp / "work"
    shutil.rmtree(work)
    shutil.copytree(tmp / "src", work)
    (work / "4" / FILES_MANIFEST).unlink()
    meta = work / "4" / "meta" / "metadata"
    meta.write_text(meta.read_text().replace('"next_step": 4', '"next_step": 5'))
    with pytest.raises(CheckpointDamagedError, match="metadata checksum mismatch"):
        _restore(work, abstract)
    (work / "4" / "state" / "_METADATA").unlink()
    with pytest.raises(CheckpointDamagedError, match="_METADATA: file missing"):
        _restore(work, abstract)


# ------------------------------------------------------------ the command line
BASE = [
    *[o for o in TINY if not o.startswith("train.total_steps")],
    "train.total_steps=16",
    "model.kwargs.widths=[32]",
    "evals=classification",
    "figures=false",
]


def _cli(run_dir, *overrides, tfds_dir, env=None, wait=True, base=BASE):
    e = {**os.environ, "TFDS_DATA_DIR": tfds_dir, "JAX_PLATFORMS": "cpu", **(env or {})}
    e.pop("XLA_FLAGS", None)
    cmd = [sys.executable, "-m", "dsb.main", *base, *overrides]
    if run_dir is not None:
        cmd.append(f"hydra.run.dir={run_dir}")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    if not wait:
        return proc
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def _tree_hashes(run: Path) -> dict[str, str]:
    """Every file of the run but Hydra's own record of the latest invocation."""
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name != "main.log" and ".hydra" not in p.parts
    }


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_cli_validation_failure_leaves_no_directory(tmp_path, tfds_dir):
    code, out, err = _cli(tmp_path / "bad", "optim.warmup_steps=100", tfds_dir=tfds_dir)
    assert code != 0 and "warmup_steps=100" in out + err
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_cli_refuses_a_changed_config_and_records_a_forced_one(tmp_path, tfds_dir):
    run = tmp_path / "run"
    code, out, err = _cli(run, tfds_dir=tfds_dir)
    assert code == 0, err[-3000:]
    before = _tree_hashes(run)
    code, out, err = _cli(run, "optim.learning_rate=1e-3", tfds_dir=tfds_dir)
    assert code == 1
    (line,) = _errors(err)
    assert "optim.learning_rate: 0.01 -> 0.001" in line and "allow_config_change" in line
    assert "Traceback" not in err and _tree_hashes(run) == before
    code, out, err = _cli(
        run, "model.kwargs.widths=[64]", "logging.tensorboard=false", tfds_dir=tfds_dir
    )
    assert code == 1 and "model.kwargs.widths: [32] -> [64]" in _errors(err)[0]
    assert "logging" not in _errors(err)[0]  # a free change is not named as a refusal
    code, out, err = _cli(
        run,
        "optim.learning_rate=1e-3",
        "ckpt.resume_step=8",
        "ckpt.allow_config_change=true",
        tfds_dir=tfds_dir,
    )
    assert code == 0, err[-3000:]
    assert "resumed from checkpoint 8" in out
    events = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["rewind", "config_change"]
    assert events[1]["step"] == 8 and events[1]["forced"]
    assert read_run_config(run).optim.learning_rate == 0.001
    steps = [r["step"] for r in read_metrics(run)]
    assert steps == sorted(set(steps)) and steps[-1] == 16


@pytest.mark.slow
def test_cli_nan_stop_names_a_command_that_works(tmp_path, tfds_dir):
    run = tmp_path / "run"
    diverge = ["optim.name=sgd", "optim.schedule=constant", "optim.learning_rate=1e30"]
    code, out, err = _cli(run, *diverge, "train.log_every_steps=1", tfds_dir=tfds_dir)
    assert code == 1, err[-3000:]
    (line,) = _errors(err)
    assert "training loss is" in line and "Next: resume from checkpoint" in line, line
    command = line.split("with a lower learning rate: ", 1)[1].split("; or start fresh")[0]
    args = shlex.split(command)
    assert args[:3] == ["python", "-m", "dsb.main"]
    assert f"hydra.run.dir={run}" in args and "ckpt.allow_config_change=true" in args
    assert "optim.learning_rate=1e+29" in args
    # The named command, with a rate that does not diverge, resumes and finishes.
    args = [
        a if not a.startswith("optim.learning_rate=") else "optim.learning_rate=0.01" for a in args
    ]
    code, out, err = _cli(None, *args[3:], tfds_dir=tfds_dir, base=[])
    assert code == 0, err[-3000:]
    assert "resumed from checkpoint" in out
    assert json.loads((run / "history.jsonl").read_text().splitlines()[-1])["forced"]


@pytest.mark.slow
def test_cli_two_runs_in_one_directory(tmp_path, tfds_dir):
    run = tmp_path / "run"
    procs = [
        _cli(run, f"seed={seed}", "train.total_steps=64", tfds_dir=tfds_dir, wait=False)
        for seed in (0, 1)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 1], [o[1][-2000:] for o in outs]
    winner, loser = procs[codes.index(0)], outs[codes.index(1)]
    (line,) = _errors(loser[1])
    assert f"in use by pid {winner.pid}" in line
    seed = [0, 1][codes.index(0)]
    assert read_run_config(run).seed == seed
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))


@pytest.mark.slow
def test_cli_rerun_of_a_finished_run_changes_nothing(tmp_path, tfds_dir):
    run = tmp_path / "run"
    code, _, err = _cli(run, "train.progress_bar=true", tfds_dir=tfds_dir)
    assert code == 0, err[-3000:]
    before = _tree_hashes(run)
    summary = json.loads((run / "summary.json").read_text())
    assert "train/loss" in summary
    code, out2, err2 = _cli(run, "train.progress_bar=true", tfds_dir=tfds_dir)
    assert code == 0, err2[-3000:]
    assert _tree_hashes(run) == before
    assert "already finished" in out2 and "final metrics (step 16)" in out2
    assert "100%" not in err2  # no progress bar for a run with nothing to do
    # A free change (where metrics are mirrored) to a finished run: still nothing to do.
    code, out3, err3 = _cli(run, "logging.tensorboard=false", tfds_dir=tfds_dir)
    assert code == 0 and "already finished" in out3, err3[-3000:]
    assert _tree_hashes(run) == before


@pytest.mark.slow
def test_cli_damaged_checkpoint_is_one_warning_line(tmp_path, tfds_dir):
    run = tmp_path / "run"
    code, out, err = _cli(run, tfds_dir=tfds_dir)
    assert code == 0, err[-3000:]
    data = max(
        (p for p in (run / "checkpoints" / "16" / "state").rglob("*") if p.is_file()),
        key=lambda p: p.stat().st_size,
    )
    b = bytearray(data.read_bytes())
    lo = len(b) // 3
    b[lo : lo + 4096] = bytes(x ^ 0xFF for x in b[lo : lo + 4096])  # up to 4 KiB flipped
    data.write_bytes(bytes(b))
    code, out, err = _cli(run, tfds_dir=tfds_dir)
    assert code == 0, err[-3000:]
    warned = [x for x in (out + err).splitlines() if "is damaged" in x]
    assert len(warned) == 1 and "checkpoint 16" in warned[0] and data.name in warned[0], warned
    assert "resumed from checkpoint 8" in out
    assert "Traceback" not in out + err and "TensorStore" not in out + err


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)])
    return r.returncode == 0


@pytest.mark.slow
def test_cli_disk_full_is_one_line(tmp_path, tfds_dir):
    small = tmp_path / "small"
    if not _mount_tmpfs(small, "300k"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        code, out, err = _cli(small / "run", "train.total_steps=64", tfds_dir=tfds_dir)
    finally:
        subprocess.run(["umount", "-l", str(small)])
    assert code == 1, (out + err)[-3000:]
    (line,) = _errors(err)
    assert "No space left on device" in line and "hydra.run.dir=" in line, line
    assert "Event loop is closed" not in out + err and "Traceback" not in out + err
    assert len((out + err).splitlines()) < 40, (out + err)[-3000:]


@pytest.mark.slow
def test_cli_interrupt_names_the_resume_command(tmp_path, tfds_dir):
    run = tmp_path / "run"
    proc = _cli(
        run, "train.total_steps=4000", "ckpt.every_steps=100", tfds_dir=tfds_dir, wait=False
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "checkpoints" / "100").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    (line,) = _errors(err)
    assert "interrupted; resume with:" in line and f"hydra.run.dir={run}" in line, line
    # A new plain invocation of the same config points at the unfinished run.
    new = _cli(
        tmp_path / "new",
        "train.total_steps=4000",
        "ckpt.every_steps=100",
        tfds_dir=tfds_dir,
        wait=False,
    )
    seen = []
    for text in new.stdout:
        seen.append(text)
        if "holds an unfinished run" in text or "resume it with" in text:
            break
    new.kill()
    new.communicate()
    hint = [x for x in seen if "holds an unfinished run" in x]
    assert hint and f"hydra.run.dir={run}" in hint[0], seen[-5:]
