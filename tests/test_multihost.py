"""``parallel=multihost`` on one machine: 2 processes x 2 simulated CPU devices, joined by
``jax.distributed.initialize`` on localhost, train as 1 process x 4 devices does; only
process 0 writes the run directory's reports; both take part in every checkpoint; and a
SIGKILL of both, then a restart of both, ends on the uninterrupted run's parameters."""

import json
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from dsb_testing import ROOT, tiny_config

from dsb.analysis import load_checkpoint
from dsb.parallel import distributed_args, simulated_devices_env

# Trains ``tiny_config(*overrides)`` in ``run_dir``, saves this process's copy of the
# final state to ``out`` (.npz, leaves in tree order) and prints a RESULT line with the
# files under ``run_dir`` this process opened for writing (an audit hook sees every
# Python-level open: metrics, reports, figures, TensorBoard; not tensorstore's writes).
CHILD = r"""
import json, os, sys
import numpy as np
run_dir, out, *overrides = sys.argv[1:]
written = set()
def audit(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path, mode, flags = os.path.abspath(os.fsdecode(args[0])), args[1], args[2]
        writes = any(c in mode for c in "wax+") if mode else flags & (os.O_WRONLY | os.O_RDWR)
        if writes and path.startswith(os.path.abspath(run_dir) + os.sep):
            written.add(os.path.relpath(path, run_dir))
sys.addaudithook(audit)
sys.path.insert(0, "tests")
from dsb_testing import tiny_config
import jax
from dsb.train import train
res = train(tiny_config(*overrides), run_dir)
leaves = jax.tree.leaves((res.state.params, res.state.rest, res.state.opt_state))
np.savez(out, *[np.asarray(x.addressable_data(0)) for x in leaves])
print("RESULT", json.dumps({
    "process": jax.process_index(), "processes": jax.process_count(),
    "devices": jax.device_count(), "local_devices": jax.local_device_count(),
    "final_step": res.final_step, "resumed_from": res.resumed_from,
    "written": sorted(written),
}), flush=True)
"""

STEPS = 64
# 2 x 2 against 1 x 4: the same gradients, summed in another order (in-process against
# gloo across processes), so equal up to float32 rounding: rel_fro 6.9e-8 after 64 Adam
# steps. The control, 1 x 4 from parameters one float32 ulp away, ends 1.3e-7 from 1 x 4:
# what 64 steps make of a rounding-level difference, so 2 x 2 is as close as rounding
# allows. The bound is equivalence.py's floor; reading the wrong data slice gives ~1e-1.
TOLERANCE = 1e-5
OVERRIDES = [
    f"train.total_steps={STEPS}",
    "train.log_every_steps=8",
    "ckpt.every_steps=8",
    "ckpt.async_save=true",
    # The DSB probes, small: both processes build (or load) the cached sets in run_dir.
    "evals.dsb.num_samples=64",
    "+evals.dsb.particle_steps=20",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch_2x2(run_dir, out_dir, tfds_dir, tag, base=OVERRIDES, child=CHILD, envs=({}, {})):
    """Both processes of a 2 x 2 run, through ``parallel.*`` config keys; ``envs[i]`` adds
    to process i's environment."""
    address = f"localhost:{_free_port()}"
    procs = []
    for i in range(2):
        overrides = [
            *base,
            "parallel=multihost",
            f"parallel.coordinator_address={address}",
            "parallel.num_processes=2",
            f"parallel.process_id={i}",
        ]
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    child,
                    str(run_dir),
                    str(out_dir / f"{tag}.p{i}.npz"),
                    *overrides,
                ],
                cwd=ROOT,
                env=simulated_devices_env(2, {"TFDS_DATA_DIR": tfds_dir, **envs[i]}),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return procs


def _finish(procs, timeout=300):
    """Each process's RESULT; a process that fails or hangs (a collective or checkpoint
    barrier its peer never joins) fails the test with both outputs."""
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        outs = [p.communicate()[0] for p in procs]
        pytest.fail("timed out:\n" + "\n----\n".join(o[-3000:] for o in outs))
    for p in procs:
        assert p.returncode == 0, "\n----\n".join(o[-3000:] for o in outs)
    lines = [next(ln for ln in out.splitlines() if ln.startswith("RESULT")) for out in outs]
    return [json.loads(ln.split(" ", 1)[1]) for ln in lines]


def _leaves(path):
    with np.load(path) as f:
        return [f[f"arr_{i}"] for i in range(len(f.files))]


def _steps(run_dir):
    d = run_dir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def test_distributed_args_from_config_then_environment():
    cfg = tiny_config("parallel=multihost").parallel
    assert distributed_args(cfg, {}) == {}  # left to JAX's cluster detection
    env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    want = {"coordinator_address": "h:1", "num_processes": 4, "process_id": 3}
    assert distributed_args(cfg, env) == want
    cfg = tiny_config(
        "parallel=multihost",
        "parallel.coordinator_address=c:2",
        "parallel.num_processes=2",
        "parallel.process_id=0",
    ).parallel
    want = {"coordinator_address": "c:2", "num_processes": 2, "process_id": 0}
    assert distributed_args(cfg, env) == want  # the config wins
    with pytest.raises(ValueError, match=r"process_id=3 .*must be in 0 \.\. num_processes - 1"):
        distributed_args(
            tiny_config("parallel=multihost", "parallel.num_processes=2").parallel, env
        )
    with pytest.raises(ValueError, match=r"\$JAX_PROCESS_ID='one': must be an integer"):
        distributed_args(tiny_config("parallel=multihost").parallel, {"JAX_PROCESS_ID": "one"})


def test_bad_multihost_keys_are_refused_with_the_key():
    with pytest.raises(ValueError, match=r"parallel\.num_processes=2: needs parallel\.distr"):
        tiny_config("parallel.num_processes=2")
    with pytest.raises(ValueError, match=r"parallel\.process_id=2: must be in 0 \.\. num_proc"):
        tiny_config("parallel=multihost", "parallel.num_processes=2", "parallel.process_id=2")
    with pytest.raises(ValueError, match=r"parallel\.num_processes=0: must be positive"):
        tiny_config("parallel=multihost", "parallel.num_processes=0")


def _param_diff(a, b):
    """equivalence.py's ``rel_fro``: ``||a - b|| / ||a||`` over the floating leaves (here
    the parameters and Adam's moments); integer leaves (step counts) must be equal."""
    num = den = 0.0
    for x, y in zip(a, b, strict=True):
        if not np.issubdtype(x.dtype, np.floating):
            np.testing.assert_array_equal(x, y)
            continue
        num += float(np.sum((x.astype(np.float64) - y) ** 2))
        den += float(np.sum(x.astype(np.float64) ** 2))
    return np.sqrt(num / den)


# Written by process 0 alone (each process writes the probe-set cache, atomically, in
# the user cache: $DSB_PROBE_CACHE of the tests).
REPORTS = (
    "config.yaml",
    "metrics.jsonl",
    "summary.json",
    "timings.jsonl",
    "dsb_probes_moments.json",
)


@pytest.mark.slow
@pytest.mark.multidevice
def test_two_processes_of_two_devices_train_checkpoint_and_resume(tmp_path):
    # A data dir of its own, empty: both processes build the digits dataset at once (they
    # leave jax.distributed.initialize together), as on a cluster's first run.
    tfds_dir = str(tmp_path / "tfds")
    (tmp_path / "out").mkdir()

    # 2 processes x 2 devices, uninterrupted.
    run = tmp_path / "two"
    results = _finish(_launch_2x2(run, tmp_path / "out", tfds_dir, tag="two"))
    for i, r in enumerate(results):
        expect = {
            "process": i,
            "processes": 2,
            "devices": 4,
            "local_devices": 2,
            "final_step": STEPS,
            "resumed_from": None,
        }
        assert {k: r[k] for k in expect} == expect, r
    p0, p1 = (_leaves(tmp_path / "out" / f"two.p{i}.npz") for i in range(2))
    for a, b in zip(p0, p1, strict=True):
        np.testing.assert_array_equal(a, b)  # one replicated state

    # The same training as 1 x 4, up to the order of float32 additions.
    one = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(tmp_path / "one"),
            str(tmp_path / "out" / "one.npz"),
            *OVERRIDES,
        ],
        cwd=ROOT,
        env=simulated_devices_env(4, {"TFDS_DATA_DIR": tfds_dir}),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-4000:]
    assert '"devices": 4, "local_devices": 4' in one.stdout
    diff = _param_diff(_leaves(tmp_path / "out" / "one.npz"), p0)
    assert diff < TOLERANCE, diff

    # Process 0 wrote the reports, process 1 none of them.
    # (config.yaml is written atomically, through config.yaml.tmp.)
    w0, w1 = ({f.removesuffix(".tmp") for f in r["written"]} for r in results)
    assert set(REPORTS) <= w0, w0
    assert any(f.startswith("figures/") for f in w0) and any(
        f.startswith("tensorboard/") for f in w0
    ), w0
    assert not [f for f in w1 if not f.startswith(("dsb_probe_sets/", "checkpoints/"))], w1
    steps = [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS, steps

    # Both processes took part in every checkpoint (orbax's multi-process save: each
    # writes its own array metadata); the last one opens on one process and holds the
    # final state.
    def saved_by(written, i):
        return {int(f.split(".")[0].split("/")[1]) for f in written if f.endswith(f"/process_{i}")}

    every = {0, 1, 2, 4, *range(8, STEPS + 1, 8)}
    assert saved_by(w0, 0) == saved_by(w1, 1) == every, (saved_by(w0, 0), saved_by(w1, 1))
    restored = load_checkpoint(run)
    assert restored.step == STEPS and STEPS // 2 in restored.available_steps
    s = restored.state
    for a, b in zip(
        p0, [np.asarray(x) for x in jax.tree.leaves((s.params, s.rest, s.opt_state))], strict=True
    ):
        np.testing.assert_array_equal(a, b)

    # SIGKILL both processes once a checkpoint after step 8 exists, restart both: the
    # resumed run ends on the uninterrupted run's state, bitwise.
    killed = tmp_path / "killed"
    procs = _launch_2x2(killed, tmp_path / "out", tfds_dir, tag="killed")
    deadline = time.time() + 300
    while time.time() < deadline and not any(8 <= s < STEPS for s in _steps(killed)):
        time.sleep(0.02)
    assert all(p.poll() is None for p in procs), "the run finished before it could be killed"
    for p in procs:
        p.send_signal(signal.SIGKILL)
    for p in procs:
        p.communicate()
    killed_at = max(_steps(killed))
    assert killed_at < STEPS, killed_at
    again = _finish(_launch_2x2(killed, tmp_path / "out", tfds_dir, tag="again"))
    assert again[0]["resumed_from"] == again[1]["resumed_from"], again
    for r in again:
        assert r["final_step"] == STEPS and r["resumed_from"] is not None, r
        assert killed_at <= r["resumed_from"] < STEPS, (killed_at, r)
    written = again[1]["written"]
    assert not [f for f in written if not f.startswith(("dsb_probe_sets/", "checkpoints/"))]
    for a, b in zip(p0, _leaves(tmp_path / "out" / "again.p0.npz"), strict=True):
        np.testing.assert_array_equal(a, b)
    steps = [json.loads(ln)["step"] for ln in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS, steps


# CHILD with a stand-in for submitit's handler of SIGUSR2 (it exits with submitit's
# requeue code, 144) and, where $SIGNAL_AT_STEP is set, the signal raised by this process
# while that update is dispatched: as when SLURM's signal reaches the tasks at different
# steps, or one of them only.
PREEMPT_CHILD = (
    r"""
import os, signal, sys
def _requeue(signum, frame):
    print("REQUEUED", flush=True)
    sys.exit(144)
signal.signal(signal.SIGUSR2, _requeue)
if os.environ.get("SIGNAL_AT_STEP"):
    from dsb.run_context import RunContext
    _at, _sampler = int(os.environ["SIGNAL_AT_STEP"]), RunContext.sampler
    def _signalling(self, *args):
        draw = _sampler(self, *args)
        def draw_and_signal(i):
            if i == _at - 1:
                signal.raise_signal(signal.SIGUSR2)
            return draw(i)
        return draw_and_signal
    RunContext.sampler = _signalling
"""
    + CHILD
)
# Logged every 4 steps, checkpoints at 0, 1, 2, 4, 8, 16, 32, 48, 64: a signal at step 10
# is agreed on at step 12, a logging step off the checkpoint schedule.
PREEMPT_OVERRIDES = [
    o for o in OVERRIDES if not o.startswith(("train.log_every_steps", "ckpt.every_steps"))
] + ["train.log_every_steps=4", "ckpt.every_steps=16", "figures=false"]


@pytest.mark.slow
@pytest.mark.multidevice
def test_one_process_signalled_both_checkpoint_the_same_step_and_resume(tmp_path):
    tfds_dir, out = str(tmp_path / "tfds"), tmp_path / "out"
    out.mkdir()
    ref = _finish(_launch_2x2(tmp_path / "ref", out, tfds_dir, "ref", PREEMPT_OVERRIDES))
    assert [r["final_step"] for r in ref] == [STEPS, STEPS]

    run = tmp_path / "run"
    envs = ({}, {"SIGNAL_AT_STEP": "10"})  # process 1 only
    procs = _launch_2x2(run, out, tfds_dir, "run", PREEMPT_OVERRIDES, PREEMPT_CHILD, envs)
    try:
        outs = [p.communicate(timeout=120)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("a process hung after the signal: the other left the collectives")
    both = "\n----\n".join(o[-3000:] for o in outs)
    # Both handed the signal to their handler (the one that never caught it raised it).
    assert [p.returncode for p in procs] == [144, 144], both
    assert all("REQUEUED" in o for o in outs), both
    assert "another process caught SIGUSR2" in outs[0], both
    assert "preempted: saved checkpoint 12" in outs[0] and "checkpoint 12" in outs[1], both
    assert _steps(run)[-1] == 12, _steps(run)

    again = _finish(_launch_2x2(run, out, tfds_dir, "again", PREEMPT_OVERRIDES))
    assert [r["resumed_from"] for r in again] == [12, 12], again
    for a, b in zip(_leaves(out / "ref.p0.npz"), _leaves(out / "again.p0.npz"), strict=True):
        np.testing.assert_array_equal(a, b)
    steps = [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS, steps
