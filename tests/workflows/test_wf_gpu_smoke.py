"""benchmarks/gpu_smoke.py: the ``--quick`` run on CPU end to end, and its failure handling."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
from dsb_testing import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_smoke.py"


def _smoke():
    spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(out, *args, timeout=900):
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false",
        "OMP_NUM_THREADS": "1",
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc, json.loads(out.read_text())


def _numbers(x):
    """Every int / float in a nested record."""
    if isinstance(x, dict):
        for v in x.values():
            yield from _numbers(v)
    elif isinstance(x, list):
        for v in x:
            yield from _numbers(v)
    elif isinstance(x, int | float) and not isinstance(x, bool):
        yield x


@pytest.mark.slow
def test_quick_run_on_cpu_runs_every_step(tmp_path, tfds_dir):
    proc, rec = _run(tmp_path / "smoke.json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert rec["device_kind"] == "cpu" and rec["platform"] == "cpu"
    assert rec["jax"] and rec["jaxlib"] and rec["quick"] is True
    steps = rec["steps"]
    assert list(steps) == ["main_job", "cifar10_recipe", "jacobian_dense", "model_throughput",
                           "equivalence"]  # fmt: skip
    for name, s in steps.items():
        assert s["status"] == "ok", (name, s)
        assert s["seconds"] > 0
    values = list(_numbers(steps))
    assert values and all(math.isfinite(v) for v in values)
    main, cifar = steps["main_job"]["numbers"], steps["cifar10_recipe"]["numbers"]
    assert main["final_step"] == 64 and main["val/accuracy"] > 0.5  # digits learn fast
    assert cifar["final_step"] == 8 and 0 <= cifar["val/accuracy"] <= 1
    assert "dsb/maxent/ics/accuracy" in cifar["probe_metrics"]
    jac = steps["jacobian_dense"]["numbers"]
    assert jac["num_params"] == 4810 and jac["all_finite"] and jac["frobenius_norm"] > 0
    models = steps["model_throughput"]["numbers"]["models"]
    assert set(models) == {"mlp", "lenet5"}
    assert all(m["examples_per_s"] > 0 for m in models.values())
    eq = steps["equivalence"]["numbers"]
    assert eq["devices"] == [1, 2] and "simulated" in eq["how"]
    assert eq["final_rel_fro_2_vs_1"] <= eq["final_tolerance"]
    assert "main_job" in proc.stdout and "wrote" in proc.stdout  # the summary table


@pytest.mark.slow
def test_a_failing_step_is_recorded_and_the_rest_still_run(tmp_path, tfds_dir):
    proc, rec = _run(
        tmp_path / "smoke.json",
        "--only", "jacobian_dense", "model_throughput",
        "--fail-step", "jacobian_dense",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    steps = rec["steps"]
    assert steps["jacobian_dense"]["status"] == "failed"
    assert "injected failure (--fail-step jacobian_dense)" in steps["jacobian_dense"]["error"]
    assert steps["model_throughput"]["status"] == "ok", steps["model_throughput"]
    for name in ("main_job", "cifar10_recipe", "equivalence"):
        assert steps[name] == {"status": "skipped", "reason": "not selected by --only",
                               "seconds": 0.0}  # fmt: skip
    assert "failed" in proc.stdout and "RuntimeError: injected failure" in proc.stdout


def test_runner_records_skips_and_errors_and_plans_the_devices(monkeypatch):
    smoke = _smoke()
    monkeypatch.setitem(smoke.STEP_FNS, "equivalence", lambda quick: {"x": 1.0})
    assert smoke.run_step("equivalence", True, False)["numbers"] == {"x": 1.0}

    def skip(quick):
        raise smoke.Skip("no second GPU")

    monkeypatch.setitem(smoke.STEP_FNS, "equivalence", skip)
    rec = smoke.run_step("equivalence", True, False)
    assert (rec["status"], rec["reason"]) == ("skipped", "no second GPU")
    assert smoke.key_numbers(rec) == "no second GPU"

    def boom(quick):
        raise ValueError("boom at step 3")

    monkeypatch.setitem(smoke.STEP_FNS, "equivalence", boom)
    rec = smoke.run_step("equivalence", True, False)
    assert rec["status"] == "failed" and "ValueError: boom at step 3" in rec["error"]
    assert smoke.key_numbers(rec) == "ValueError: boom at step 3"

    assert smoke.equivalence_plan("cpu", 1)[0] == [1, 2]
    assert smoke.equivalence_plan("gpu", 4)[0] == [1, 4]
    with pytest.raises(smoke.Skip, match="needs at least 2 devices; this machine has 1 gpu"):
        smoke.equivalence_plan("gpu", 1)
    assert smoke.gpu_env(["3", "5", "7"])(2)["CUDA_VISIBLE_DEVICES"] == "3,5"
    assert smoke.device_slug("NVIDIA H100 80GB HBM3") == "nvidia_h100_80gb_hbm3"
