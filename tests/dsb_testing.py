"""Shared test helpers: compose real configs from conf/, run tiny trainings, and sample
Markov chains with known statistics.

A module with a unique name rather than helpers in ``conftest.py``: pytest imports
conftest files itself (``tests/conftest.py`` holds the fixtures), and a test module's
``from conftest import ...`` would depend on how pytest put it on ``sys.path``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from dsb.parallel import simulated_devices_env

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


# For runs whose tests read checkpoints, the data order or held-out metrics only: no DSB
# probes or polynomial approximants at the checkpoints, no figures.
HELD_OUT_ONLY = ("evals=classification", "figures=false")


def tiny_config(*overrides: str):
    """A 16-step run of the default job, with a 32-unit MLP unless a model or experiment is
    named, and held-out metrics only (``evals=classification``) unless the overrides name
    the ``evals`` group or an experiment: a test that reads DSB-probe or polynomial metrics
    asks for them (``"evals=probes"``, or overrides of ``evals.dsb.*``), so no other test
    pays for building probe sets and fitting approximants at every checkpoint."""
    from dsb.config import to_config

    custom = any(o.startswith(("model=", "experiment=")) for o in overrides)
    model = [] if custom else ["model.kwargs.widths=[32]"]
    own_evals = any(
        o.startswith("experiment=") or re.match(r"~?evals(=|\.|$)", o) for o in overrides
    )
    evals = [] if own_evals else ["evals=classification"]
    return to_config(compose([*TINY, *model, *evals, *overrides]))


def run_python(code: str, devices: int = 1, timeout: int = 600, env: dict | None = None):
    """Run ``code`` in a fresh interpreter with ``devices`` simulated CPU devices."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env=simulated_devices_env(devices, env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


# Synthetic token sources with known statistics: first-order Markov chains, the ground truth
# for the n-gram machinery and for LM training. A chain with transition matrix
# ``P[a, b] = P(x_{t+1} = b | x_t = a)`` has stationary law ``pi`` (``pi P = pi``) and entropy
# rate ``H = -sum_a pi_a sum_b P_ab log P_ab`` (nats), the best achievable per-token loss.


def stationary(p_VxV: np.ndarray) -> np.ndarray:
    """Stationary distribution ``pi [V]`` of a row-stochastic matrix (irreducible chains)."""
    w, v = np.linalg.eig(np.asarray(p_VxV, dtype=np.float64).T)
    pi = np.abs(np.real(v[:, np.argmin(np.abs(w - 1))]))
    return pi / pi.sum()


def entropy_rate(p_VxV: np.ndarray) -> float:
    p = np.asarray(p_VxV, dtype=np.float64)
    logp = np.log(np.where(p > 0, p, 1.0))
    return float(-(stationary(p)[:, None] * p * logp).sum())


def random_transition_matrix(vocab_size: int, concentration: float, seed: int) -> np.ndarray:
    """Rows drawn from a symmetric Dirichlet (small ``concentration`` = peaky rows)."""
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(vocab_size, concentration), size=vocab_size)


def sample_markov_chain(
    p_VxV: np.ndarray, length: int, seed: int, start: int | None = None
) -> np.ndarray:
    """One trajectory ``[length]`` int64; ``x_0 ~ pi`` unless ``start`` is given."""
    p = np.asarray(p_VxV, dtype=np.float64)
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(p, axis=1)
    x = np.empty(length, dtype=np.int64)
    x[0] = rng.choice(len(p), p=stationary(p)) if start is None else start
    u = rng.random(length)
    for t in range(1, length):
        x[t] = min(np.searchsorted(cdf[x[t - 1]], u[t], side="right"), len(p) - 1)
    return x
