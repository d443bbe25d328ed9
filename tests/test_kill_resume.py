"""A run killed with SIGKILL and restarted ends with the parameters of an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from dsb_testing import ROOT, TINY

from dsb.analysis import load_checkpoint

OVERRIDES = [
    *[o for o in TINY if not o.startswith(("train.total_steps", "ckpt.async_save"))],
    "model.kwargs.widths=[32]",
    "train.total_steps=3000",
    "ckpt.every_steps=100",
    "ckpt.async_save=true",
    "figures=false",
]


def _launch(run_dir, tfds_dir):
    env = {**os.environ, "TFDS_DATA_DIR": tfds_dir, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "dsb.main", *OVERRIDES, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _steps(run_dir):
    d = run_dir / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


@pytest.mark.slow
def test_sigkill_and_restart_equals_uninterrupted(tmp_path, tfds_dir):
    ref = _launch(tmp_path / "ref", tfds_dir)
    out, _ = ref.communicate(timeout=600)
    assert ref.returncode == 0, out[-3000:]

    run = tmp_path / "killed"
    proc = _launch(run, tfds_dir)
    deadline = time.time() + 300
    while time.time() < deadline and not any(100 <= s < 3000 for s in _steps(run)):
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(_steps(run))
    assert killed_at < 3000

    again = _launch(run, tfds_dir)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out[-3000:]
    assert "resumed from checkpoint" in out

    a, b = load_checkpoint(tmp_path / "ref"), load_checkpoint(run)
    assert a.step == b.step == 3000
    for x, y in zip(jax.tree.leaves(a.state.params), jax.tree.leaves(b.state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # Metrics were rewritten from the checkpoint on, one object per step.
    import json

    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))
