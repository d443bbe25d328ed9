"""A run's pieces: the train state (``dsb.step``), the evaluator suite's schedule
(``dsb.evals.suite``), checkpoints written the old way (``dsb.checkpoint``), and a run
context rebuilt from a run directory (``dsb.run_context``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dsb_testing import HELD_OUT_ONLY, tiny_config

from dsb.analysis import load_checkpoint
from dsb.checkpoint import Checkpointer, RunCheckpoints
from dsb.evals.base import Snapshot
from dsb.evals.suite import EvalSuite
from dsb.optim import make_optimizer
from dsb.run_context import RunContext
from dsb.rundir import ConfigChangedError
from dsb.schedule import Schedule
from dsb.step import TrainState, init_model
from dsb.train import train


def _spec(tree):
    return jax.tree.map(lambda x: (x.shape, jnp.dtype(x.dtype)), tree)


def test_train_state_abstract_matches_create_and_is_frozen():
    cfg = tiny_config()
    model = init_model(cfg, norm_axis_name=None)
    tx = make_optimizer(cfg.optim, cfg.train.total_steps)
    state = TrainState.create(model, tx, cfg.seed)
    abstract = TrainState.abstract(model, tx)
    assert jax.tree.structure(state) == jax.tree.structure(abstract)
    assert _spec(state) == _spec(abstract)
    assert int(state.step) == 0 and state.rng.shape == abstract.rng.shape
    with pytest.raises(Exception, match=r"cannot assign|frozen"):
        state.step = 1
    assert list(state.to_dict()) == ["params", "rest", "opt_state", "step", "rng"]


class _Recorder:
    """An evaluator that records the steps it ran at."""

    def __init__(self):
        self.steps = []

    def run(self, snapshot):
        self.steps.append(snapshot.step)
        yield "step", snapshot.step


def test_eval_suite_runs_each_entry_when_the_schedule_says(monkeypatch):
    schedule = Schedule(total_steps=16, log_every_steps=4, every_steps=6)
    assert schedule.checkpoints == [0, 1, 2, 4, 6, 8, 12, 16]
    evals = {
        "a": {"type": "classification"},
        "b": {"type": "classification", "when": "last"},
        "c": {"type": "classification", "when": [2, 6]},
    }
    suite = EvalSuite(ctx=None, evals=evals, schedule=schedule)
    assert suite.types == {"a": "classification", "b": "classification", "c": "classification"}
    recorders = {k: _Recorder() for k in evals}
    monkeypatch.setattr(
        "dsb.evals.suite.build_evaluator", lambda ctx, key, type_name, options: recorders[key]
    )
    for step in schedule.checkpoints:
        values = suite.run(Snapshot(step, None, None, None, None))
        assert set(values) == {f"{k}/step" for k in suite.due(step)} | {
            f"time/eval_{k}_s" for k in suite.due(step)
        }
    assert recorders["a"].steps == schedule.checkpoints
    assert recorders["b"].steps == [16]
    assert recorders["c"].steps == [2, 6]
    assert suite.due(3) == []  # not a checkpoint: nothing is due


def test_when_steps_that_are_not_checkpoints_are_refused():
    schedule = Schedule(total_steps=16, log_every_steps=4)
    with pytest.raises(ValueError, match=r"evals.c.when: steps \[3, 5\] are not checkpoint"):
        EvalSuite(None, {"c": {"type": "classification", "when": [2, 3, 5]}}, schedule)
    with pytest.raises(ValueError, match=r"evals.val.when: steps \[3\] are not checkpoint"):
        tiny_config("+evals.val.when=[3]")
    tiny_config("+evals.val.when=[2,16]")  # checkpoints: accepted
    tiny_config("+evals.val.when=[6]", "ckpt.every_steps=6")  # an interval checkpoint


def test_checkpoints_written_as_plain_dicts_restore_into_a_train_state(tmp_path, tfds_dir):
    """Runs saved before TrainState (a dict of the same fields) open unchanged."""
    cfg = tiny_config()
    ctx = RunContext(cfg, tmp_path)
    model = init_model(cfg, norm_axis_name=None)
    tx = make_optimizer(cfg.optim, cfg.train.total_steps)
    state = TrainState.create(model, tx, cfg.seed)
    state = state.replace(step=jnp.asarray(4, jnp.int32))
    old = Checkpointer(tmp_path / "checkpoints", async_save=False)
    meta = {"step": 4, "data": {"next_step": 4, "shuffle_seed": cfg.data.shuffle_seed}}
    old.save(4, dict(state.to_dict()), meta)
    old.close()
    ckpts = RunCheckpoints(ctx)
    start, restored = ckpts.resume(TrainState.abstract(model, tx))
    ckpts.close()
    assert start == 4 and isinstance(restored, TrainState)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(a, b)


def test_resume_refuses_a_checkpoint_of_another_data_order(tmp_path, tfds_dir):
    cfg = tiny_config("train.total_steps=4", "optim.warmup_steps=1", *HELD_OUT_ONLY)
    train(cfg, tmp_path)
    other = tiny_config(
        "train.total_steps=8", "optim.warmup_steps=1", "data.shuffle_seed=7", *HELD_OUT_ONLY
    )
    # Refused at start-up as a changed config (dsb.rundir) ...
    with pytest.raises(ConfigChangedError, match=r"data\.shuffle_seed: 0 -> 7"):
        train(other, tmp_path)
    # ... and, forced, by the checkpoint's own record of its data position.
    forced = tiny_config(
        "train.total_steps=8",
        "optim.warmup_steps=1",
        "data.shuffle_seed=7",
        "ckpt.allow_config_change=true",
        *HELD_OUT_ONLY,
    )
    with pytest.raises(ValueError, match="another data order"):
        train(forced, tmp_path)


def test_run_context_from_run_dir_rebuilds_the_trainers_batches(tmp_path, tfds_dir):
    cfg = tiny_config("train.total_steps=4", "optim.warmup_steps=1")
    train(cfg, tmp_path)
    trainer_ctx = RunContext(cfg, tmp_path)
    rebuilt = RunContext.from_run_dir(tmp_path)
    assert rebuilt.config == cfg and not rebuilt.write_reports
    assert rebuilt.schedule == trainer_ctx.schedule
    for step in (0, 3, 40):
        a, b = trainer_ctx.global_sampler(step), rebuilt.eval_context().train_batch(step)
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    restored = load_checkpoint(tmp_path)
    assert restored.step == 4 and restored.run_dir == tmp_path
    assert restored.available_steps == [0, 1, 2, 4]
