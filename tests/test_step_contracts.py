"""The compiled training step (``dsb.step.make_train_step``) by value, on one-layer
models small enough to recompute a step by hand: the text step's next-token targets, the
image step's loss, accuracy, gradient norm and learning rate, and the update applied."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dsb import parallel
from dsb.step import SplitModel, TrainState, make_train_step


class _Bigram(nnx.Module):
    """logits[b, t] = E[tokens[b, t]]: a next-token table."""

    def __init__(self, v, rngs):
        self.emb = nnx.Embed(v, v, rngs=rngs)

    def __call__(self, tokens, *, rngs=None):
        return self.emb(tokens)


class _Linear(nnx.Module):
    def __init__(self, d, k, rngs):
        self.fc = nnx.Linear(d, k, rngs=rngs)

    def __call__(self, x, *, rngs=None):
        return self.fc(x.reshape(x.shape[0], -1))


def _split(module):
    g, params, rest = nnx.split(module, nnx.Param, ...)
    return SplitModel(g, g, params, rest)


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_text_step_predicts_each_next_token():
    # Logits at position t predict token t + 1: the loss is the mean cross-entropy of
    # E[tokens[:, :-1]] against tokens[:, 1:].
    v = 5
    model = _split(_Bigram(v, nnx.Rngs(0)))
    table = np.asarray(model.params["emb"]["embedding"].value, np.float64)
    mesh = parallel.make_mesh(1)
    tx = optax.sgd(0.0)
    state = TrainState.create(model, tx, seed=0, sharding=parallel.replicated(mesh))
    tokens = np.random.default_rng(0).integers(0, v, (4, 7)).astype(np.int32)
    step = make_train_step(model.graphdef_train, tx, mesh, kind="text")
    _, metrics = step(state, parallel.put_global_batch({"tokens": tokens}, mesh))
    logp = _log_softmax(table[tokens[:, :-1]])
    nll = -np.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
    assert float(metrics["loss"]) == pytest.approx(nll.mean(), rel=1e-5)
    acc = np.mean(table[tokens[:, :-1]].argmax(-1) == tokens[:, 1:])
    assert float(metrics["accuracy"]) == pytest.approx(acc)
    with pytest.raises(ValueError, match="kind='audio': must be 'image' or 'text'"):
        make_train_step(model.graphdef_train, tx, mesh, kind="audio")


def test_randaugment_alone_is_applied_with_each_examples_own_key(monkeypatch):
    # RandAugment without crop or flip: example i gets randaugment(x_i, fold_in(k_flip, 7),
    # num_ops, magnitude) with (k_crop, k_flip) = split(fold_in(key, id_i)), as documented.
    # A stand-in for randaugment (tested in tests/data) that shows what it was given.
    import dsb.step
    from dsb.config import AugmentConfig

    def stand_in(x, key, num_ops, magnitude):
        return x + num_ops * 10 + magnitude + jax.random.uniform(key)

    monkeypatch.setattr(dsb.step, "randaugment", stand_in)
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (2, 3, 3, 1)), jnp.float32)
    aug = AugmentConfig(randaugment_num_ops=2, randaugment_magnitude=0.5)
    key, ids = jax.random.key(3), jnp.array([4, 9])
    out = np.asarray(dsb.step.augment_batch(x, key, ids, aug))
    for i, id_ in enumerate([4, 9]):
        _, k_flip = jax.random.split(jax.random.fold_in(key, id_))
        u = float(jax.random.uniform(jax.random.fold_in(k_flip, 7)))
        np.testing.assert_allclose(out[i], np.asarray(x[i]) + 20.5 + u, rtol=1e-6)


def test_crop_and_flip_are_the_documented_draws():
    # Example i: (k_crop, k_flip) = split(fold_in(key, id_i)); offsets (dy, dx) =
    # randint(k_crop, (2,), 0, 2 p + 1) into the zero-padded image; flipped left-right iff
    # bernoulli(k_flip). Recomputed in numpy for eight examples.
    from dsb.config import AugmentConfig
    from dsb.step import augment_batch

    p, n = 2, 8
    x = np.random.default_rng(1).uniform(0, 1, (n, 4, 5, 2)).astype(np.float32)
    key, ids = jax.random.key(11), np.arange(10, 10 + n)
    aug = AugmentConfig(crop_padding=p, horizontal_flip=True)
    out = np.asarray(jax.jit(lambda x, ids: augment_batch(x, key, ids, aug))(x, ids))

    @jax.jit  # one compile for all the draws (op-by-op dispatch compiles every op)
    @jax.vmap
    def draws(i):
        k_crop, k_flip = jax.random.split(jax.random.fold_in(key, i))
        return jax.random.randint(k_crop, (2,), 0, 2 * p + 1), jax.random.bernoulli(k_flip)

    offsets, flips = (np.asarray(a) for a in draws(ids))
    for i, ((dy, dx), flip) in enumerate(zip(offsets, flips, strict=True)):
        want = np.pad(x[i], ((p, p), (p, p), (0, 0)))[dy : dy + 4, dx : dx + 5]
        np.testing.assert_array_equal(out[i], want[:, ::-1] if flip else want, err_msg=str(i))
    assert offsets.max() == 2 * p and 0 < flips.sum() < n  # every case is drawn


def test_image_step_by_hand_loss_gradient_norm_learning_rate_and_update():
    # A linear classifier under SGD with a schedule: two steps recomputed in numpy.
    b, d, k = 6, 4, 3
    rng = np.random.default_rng(2)
    model = _split(_Linear(d, k, nnx.Rngs(1)))
    sched = optax.linear_schedule(0.5, 0.1, 4)
    tx = optax.sgd(sched)
    mesh = parallel.make_mesh(1)
    state = TrainState.create(model, tx, seed=0, sharding=parallel.replicated(mesh))
    step = make_train_step(model.graphdef_train, tx, mesh, lr_schedule=sched)
    w = np.asarray(model.params["fc"]["kernel"].value, np.float64)
    c = np.asarray(model.params["fc"]["bias"].value, np.float64)
    for s in range(2):
        x = rng.uniform(0, 1, (b, 2, 2, 1)).astype(np.float32)
        y = rng.integers(0, k, b).astype(np.int32)
        batch = parallel.put_global_batch({"image": x, "label": y}, mesh)
        state, metrics = step(state, batch)
        xf = x.reshape(b, -1).astype(np.float64)
        logits = xf @ w + c
        logp = _log_softmax(logits)
        r = (np.exp(logp) - np.eye(k)[y]) / b  # d loss / d logits
        gw, gc = xf.T @ r, r.sum(0)
        assert float(metrics["loss"]) == pytest.approx(-logp[np.arange(b), y].mean(), rel=1e-5)
        assert float(metrics["accuracy"]) == pytest.approx(np.mean(logits.argmax(1) == y))
        norm = np.sqrt(np.sum(gw**2) + np.sum(gc**2))
        assert float(metrics["grad_norm"]) == pytest.approx(norm, rel=1e-5)
        lr = float(sched(s))
        assert float(metrics["learning_rate"]) == pytest.approx(lr)
        w, c = w - lr * gw, c - lr * gc
        assert int(state.step) == s + 1
        np.testing.assert_allclose(state.params["fc"]["kernel"].value, w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state.params["fc"]["bias"].value, c, rtol=1e-5, atol=1e-6)


def test_predict_cuts_global_batches_and_pads_the_last(monkeypatch):
    # eval_batch_size 3 on one device: 7 rows go as three batches of 3 (the last padded
    # with zeros), and the outputs are the model's on the 7 rows alone.
    import dsb.step
    from dsb.step import make_predict

    model = _split(_Linear(4, 3, nnx.Rngs(0)))
    mesh = parallel.make_mesh(1)
    put = []
    real_put = parallel.put_global_batch

    def recording_put(local, mesh):
        put.append(np.asarray(local).copy())
        return real_put(local, mesh)

    monkeypatch.setattr(dsb.step.parallel, "put_global_batch", recording_put)
    predict = make_predict(model, mesh, eval_batch_size=3)
    x = np.random.default_rng(0).uniform(0, 1, (7, 2, 2, 1)).astype(np.float32)
    out = predict(model.params, model.rest, x)
    w = np.asarray(model.params["fc"]["kernel"].value)
    c = np.asarray(model.params["fc"]["bias"].value)
    np.testing.assert_allclose(out, x.reshape(7, -1) @ w + c, rtol=1e-5, atol=1e-6)
    assert [len(b) for b in put] == [3, 3, 3]
    np.testing.assert_array_equal(put[2][1:], 0.0)
    np.testing.assert_array_equal(np.concatenate(put)[:7], x)
    assert predict(model.params, model.rest, x[:0]).shape == (0,)


def test_step_donates_the_state_not_the_batch():
    # donate_argnums=0: the old state's buffers are handed to the new state (deleted once
    # the step has run); the batch stays readable.
    model = _split(_Linear(4, 3, nnx.Rngs(0)))
    tx = optax.sgd(0.1)
    mesh = parallel.make_mesh(1)
    state = TrainState.create(model, tx, seed=0, sharding=parallel.replicated(mesh))
    step = make_train_step(model.graphdef_train, tx, mesh)
    x = np.zeros((2, 2, 2, 1), np.float32)
    batch = parallel.put_global_batch({"image": x, "label": np.zeros(2, np.int32)}, mesh)
    new, _ = step(state, batch)
    jax.block_until_ready(new)
    assert state.params["fc"]["kernel"].value.is_deleted()
    assert not batch["image"].is_deleted()
