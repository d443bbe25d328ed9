"""Contracts of the training loop (``dsb.train.train``), observed on tiny digits runs:

* at most ``train.max_steps_in_flight`` steps are dispatched and not known to be finished
  (a step is known finished once the host has waited on it or on a later step: steps are
  sequential, each reads the previous one's state);
* each step draws its own augmentation from ``fold_in(state.rng, state.step)`` (the
  augmentation key is ``fold_in(step_key, 1)``), so consecutive steps differ;
* a run resumed from a checkpoint with augmentation (crop, flip) and dropout on ends with
  exactly the parameters of the uninterrupted run.
"""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dsb_testing import tiny_config
from flax import nnx

from dsb.models.registry import MODELS, register

AUGMENT = ["data.augment.crop_padding=1", "data.augment.horizontal_flip=true"]
QUIET = ["~evals", "figures=false", "logging.tensorboard=false"]  # the loop only
DROPOUT_MODEL = "contracts_dropout_mlp"


if DROPOUT_MODEL not in MODELS:

    @register(DROPOUT_MODEL)
    class DropoutMLP(nnx.Module):
        """flatten -> Linear -> relu -> Dropout(0.3) -> Linear: the smallest image model with
        a stochastic layer (no registered image model has dropout)."""

        def __init__(
            self, *, num_classes, input_shape, rngs, dtype=jnp.float32, norm_axis_name=None,
            widths=(32,), activation="relu",
        ):  # fmt: skip
            h, w, c = input_shape
            self.fc1 = nnx.Linear(h * w * c, widths[0], rngs=rngs)
            self.drop = nnx.Dropout(0.3)
            self.fc2 = nnx.Linear(widths[0], num_classes, rngs=rngs)

        def __call__(self, x, *, rngs=None):
            h = jax.nn.relu(self.fc1(x.reshape(x.shape[0], -1)))
            return self.fc2(self.drop(h, rngs=rngs))


def _train(cfg, run_dir):
    from dsb.train import train

    return train(cfg, run_dir)


@pytest.fixture(scope="module")
def instrumented_run(tmp_path_factory):
    """One 16-step run with augmentation and ``max_steps_in_flight=2``, logging every 8
    steps, that records (a) at each dispatch the steps dispatched and not known finished
    and (b) every augmentation's input, key, example ids and output."""
    import dsb.step
    import dsb.train

    limit = 2
    dispatched = 0
    finished = 0  # the newest step the host is known to have waited on
    step_of = {}  # id(loss) -> step, losses kept alive so ids are not reused
    kept = []
    in_flight = []
    augmentations = []

    real_make = dsb.train.make_train_step
    real_augment = dsb.step.augment_batch

    def make_train_step(*args, **kwargs):
        step_fn = real_make(*args, **kwargs)

        def counted(state, batch):
            nonlocal dispatched
            dispatched += 1
            in_flight.append(dispatched - finished)  # after the loop's wait for room
            state, metrics = step_fn(state, batch)
            step_of[id(metrics["loss"])] = dispatched
            kept.append(metrics["loss"])
            return state, metrics

        return counted

    def waited(tree):
        nonlocal finished
        for leaf in jax.tree.leaves(tree):
            finished = max(finished, step_of.get(id(leaf), 0))

    real_block, real_get = jax.block_until_ready, jax.device_get

    def block_until_ready(x):
        out = real_block(x)
        waited(x)
        return out

    def device_get(x):
        out = real_get(x)
        waited(x)
        return out

    def recording_augment(x, key, ids, aug):
        out = real_augment(x, key, ids, aug)

        def record(x, key_data, ids, out):
            augmentations.append(tuple(np.asarray(a) for a in (x, key_data, ids, out)))

        jax.debug.callback(record, x, jax.random.key_data(key), ids, out)
        return out

    cfg = tiny_config(
        "train.total_steps=16",
        "train.log_every_steps=8",
        "ckpt.log_spaced=false",
        "ckpt.every_steps=16",
        f"train.max_steps_in_flight={limit}",
        *QUIET,
        *AUGMENT,
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TFDS_DATA_DIR", str(tmp_path_factory.getbasetemp() / "tfds"))
        mp.setattr(dsb.train, "make_train_step", make_train_step)
        mp.setattr(dsb.step, "augment_batch", recording_augment)
        mp.setattr(jax, "block_until_ready", block_until_ready)
        mp.setattr(jax, "device_get", device_get)
        result = _train(cfg, tmp_path_factory.mktemp("instrumented"))
    return {
        "cfg": cfg,
        "result": result,
        "limit": limit,
        "dispatched": dispatched,
        "in_flight": in_flight,
        "augmentations": augmentations,
        "augment_batch": real_augment,
    }


def test_steps_in_flight_never_exceed_the_bound(instrumented_run):
    run = instrumented_run
    assert run["result"].final_step == run["dispatched"] == 16
    # Reached (8-step windows between host syncs) and never exceeded.
    assert max(run["in_flight"]) == run["limit"], run["in_flight"]


def test_each_step_draws_its_own_augmentation(instrumented_run):
    calls, augment = instrumented_run["augmentations"], instrumented_run["augment_batch"]
    assert len(calls) == 16
    rng = jax.random.wrap_key_data(jnp.asarray(instrumented_run["result"].state.rng))
    aug = instrumented_run["cfg"].data.augment

    def key_of(step):  # the documented derivation: fold_in(rng, step), then 1
        return jax.random.fold_in(jax.random.fold_in(rng, step), 1)

    keys = [np.asarray(jax.random.key_data(key_of(s))) for s in range(16)]
    for s, (x, key_data, ids, out) in enumerate(calls):
        np.testing.assert_array_equal(key_data, keys[s], err_msg=f"step {s}")
        if s in (0, 1, 15):  # the images too (each eager call takes a while)
            expect = augment(jnp.asarray(x), key_of(s), jnp.asarray(ids), aug)
            np.testing.assert_array_equal(out, np.asarray(expect), err_msg=f"step {s}")
    # Consecutive steps augment the same images differently.
    x0, _, ids0, out0 = calls[0]
    again = augment(jnp.asarray(x0), key_of(1), jnp.asarray(ids0), aug)
    assert not np.array_equal(np.asarray(again), out0)
    assert len({k.tobytes() for k in keys}) == 16


def test_resume_with_augmentation_and_dropout_equals_uninterrupted(tmp_path, tfds_dir):
    cfg = tiny_config(
        f"model.name={DROPOUT_MODEL}",
        "train.total_steps=8",
        "seed=3",
        *QUIET,
        *AUGMENT,
    )
    full = _train(cfg, tmp_path / "full")
    assert full.final_step == 8
    run = tmp_path / "run"
    shutil.copytree(tmp_path / "full", run)
    shutil.rmtree(run / "checkpoints" / "8")  # as if killed after saving step 4
    resumed = _train(cfg, run)
    assert resumed.resumed_from == 4 and resumed.final_step == 8
    leaves = jax.tree.leaves(full.state.params)
    for a, b in zip(leaves, jax.tree.leaves(resumed.state.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
