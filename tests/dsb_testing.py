"""Shared test helpers: compose real configs from conf/ and run tiny trainings.

A module with a unique name (several test folders have a ``conftest.py``, so
``from conftest import ...`` would resolve to whichever was imported first)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = str(ROOT / "conf")


def compose(overrides: list[str] | None = None, config_name: str = "config", **kw):
    """The composed DictConfig of conf/ with ``overrides`` (as the command line would)."""
    from dsb.config import compose as dsb_compose

    return dsb_compose(overrides, config_name, **kw)


TINY = [
    "train.total_steps=16",
    "train.log_every_steps=4",
    "train.progress_bar=false",
    "data.batch_size=32",
    "optim.warmup_steps=2",
    "optim.learning_rate=1e-2",
    "ckpt.async_save=false",
]


# A 1-layer byte-level transformer on the embedded corpus with small n-gram probes.
TINY_LM = [
    "experiment=lm_ngram_default",
    "model.kwargs.num_layers=1",
    "model.kwargs.d_model=32",
    "data.text.context_length=32",
    "data.batch_size=16",
    "evals.ngram.num_sequences=16",
    "+evals.ngram.max_val_sequences=16",
    "+evals.ngram.num_bootstrap=50",
    "optim.warmup_steps=2",
]


def tiny_config(*overrides: str):
    from dsb.config import to_config

    custom = any(o.startswith(("model=", "experiment=")) for o in overrides)
    model = [] if custom else ["model.kwargs.widths=[32]"]
    return to_config(compose([*TINY, *model, *overrides]))


def run_python(code: str, devices: int = 1, timeout: int = 600, env: dict | None = None):
    """Run ``code`` in a fresh interpreter with ``devices`` simulated CPU devices."""
    full_env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-c", code],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
