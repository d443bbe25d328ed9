"""A run's model and training state, and the compiled programs that act on them.

``SplitModel`` is the configured model split for pure functions (graph definitions plus
variables; ``SplitModel.module()`` merges it back into an ``nnx.Module``); ``TrainState``
is everything an optimizer step reads and writes, and what a checkpoint holds.
``init_model`` builds the configured model straight into a sharding; ``make_train_step``
is the jitted data-parallel optimizer step (per-device code under ``shard_map`` with an
explicit ``pmean``); ``make_predict`` the batched eval-mode forward pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import PartitionSpec as P

from dsb import parallel
from dsb.config import AugmentConfig, Config
from dsb.data.pipeline import data_info
from dsb.data.randaugment import randaugment
from dsb.losses import LOSSES, per_example_loss
from dsb.models.registry import build_model

__all__ = [
    "SplitModel",
    "TrainState",
    "augment_batch",
    "init_model",
    "make_predict",
    "make_train_step",
]


# --------------------------------------------------------------------------- model state
@dataclasses.dataclass
class SplitModel:
    """A model split for pure functions: graph definitions for each mode plus state.

    ``params`` are the ``nnx.Param`` variables, ``rest`` everything else (BatchNorm
    statistics). ``nnx.merge(graphdef_train, params, rest)`` rebuilds the module.
    """

    graphdef_train: Any
    graphdef_eval: Any
    params: nnx.State
    rest: nnx.State

    def module(self, train: bool = False) -> nnx.Module:
        return nnx.merge(
            self.graphdef_train if train else self.graphdef_eval, self.params, self.rest
        )


def init_model(
    cfg: Config, sharding=None, norm_axis_name: str | None = parallel.DATA_AXIS
) -> SplitModel:
    """Build the configured model: abstractly for its structure, then materialised by a
    jitted initialiser directly into ``sharding`` (no host round trip)."""
    info = data_info(cfg)

    def construct(key):
        return build_model(
            cfg.model.name,
            num_classes=info.num_outputs,
            input_shape=info.input_shape,
            rngs=nnx.Rngs(params=key),
            norm_axis_name=norm_axis_name,
            dtype=jnp.dtype(cfg.model.dtype),
            **cfg.model.kwargs,
        )

    key = jax.random.key_data(jax.random.fold_in(jax.random.key(cfg.seed), 0))
    abstract = nnx.eval_shape(lambda: construct(key))
    abstract.train()
    graphdef_train = nnx.graphdef(abstract)
    abstract.eval()
    graphdef_eval = nnx.graphdef(abstract)

    def create(key):
        _, params, rest = nnx.split(construct(key), nnx.Param, ...)
        return params, rest

    options = _INIT_COMPILER_OPTIONS.get(jax.default_backend())
    init = jax.jit(create, out_shardings=sharding).lower(key).compile(compiler_options=options)
    params, rest = init(key)
    return SplitModel(graphdef_train, graphdef_eval, params, rest)


# The initialiser runs once, so its compile time is all it costs. XLA:CPU's optimising
# backend spends most of a conv net's start-up there: ResNet-18 (width 4) compiled its
# initialiser in 28 s against 3 s unoptimised, on 2 cores; the zoo models alike. On CPU it is
# compiled unoptimised. Its values are those of the optimised build up to the last bit of
# a float (1.2e-7 at most, from contracted multiply-adds), so a run started before this
# change and one started after differ from step 0 by rounding. Other backends are unchanged.
_INIT_COMPILER_OPTIONS = {"cpu": {"xla_backend_optimization_level": 0}}


# ----------------------------------------------------------------------- training state
@struct.dataclass
class TrainState:
    """Everything an optimizer step reads and writes, and what a checkpoint holds.

    ``params`` and ``rest`` are the model's ``nnx.Param`` and other variables (BatchNorm
    statistics), ``opt_state`` the optax state, ``step`` the number of updates done
    (int32) and ``rng`` the run's key data (each step folds ``step`` into it).
    """

    params: Any
    rest: Any
    opt_state: Any
    step: jax.Array
    rng: jax.Array

    @classmethod
    def create(
        cls, model: SplitModel, tx: optax.GradientTransformation, seed: int, sharding=None
    ) -> TrainState:
        """Step 0 of a run: the model's initial variables, ``tx.init`` and the run's key,
        placed in ``sharding`` (default: the default device)."""
        return cls(
            params=model.params,
            rest=model.rest,
            opt_state=jax.jit(tx.init, out_shardings=sharding)(model.params),
            step=jax.device_put(jnp.asarray(0, jnp.int32), sharding),
            rng=jax.device_put(_run_key(seed), sharding),
        )

    @classmethod
    def abstract(
        cls, model: SplitModel, tx: optax.GradientTransformation, sharding=None
    ) -> TrainState:
        """Shapes, dtypes and ``sharding`` of the state, without computing it: the target a
        checkpoint is restored into."""
        state = cls(
            params=model.params,
            rest=model.rest,
            opt_state=jax.eval_shape(tx.init, model.params),
            step=jax.ShapeDtypeStruct((), jnp.int32),
            rng=jax.eval_shape(_run_key, 0),
        )
        return parallel.abstract_like(state, sharding=sharding)

    def to_dict(self) -> dict[str, Any]:
        """The checkpointed form (a dict, as checkpoints have always been written)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _run_key(seed: int) -> jax.Array:
    return jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1))


# ------------------------------------------------------------------------------- the step
def augment_batch(x_BxHxWxC, key, example_ids_B, aug: AugmentConfig):
    """Random crop after zero padding, horizontal flip and RandAugment, one key per example.

    Keys are folded from the example's position in the *global* batch, so the augmented
    batch is the same whatever the number of devices.
    """
    if aug.crop_padding == 0 and not aug.horizontal_flip and aug.randaugment_num_ops == 0:
        return x_BxHxWxC
    _, h, w, _ = x_BxHxWxC.shape
    p = aug.crop_padding

    def one(x_HxWxC, i):
        k_crop, k_flip = jax.random.split(jax.random.fold_in(key, i))
        if p:
            padded = jnp.pad(x_HxWxC, ((p, p), (p, p), (0, 0)))
            dy, dx = jax.random.randint(k_crop, (2,), 0, 2 * p + 1)
            x_HxWxC = jax.lax.dynamic_slice(padded, (dy, dx, 0), x_HxWxC.shape)
        if aug.horizontal_flip:
            x_HxWxC = jnp.where(jax.random.bernoulli(k_flip), x_HxWxC[:, ::-1], x_HxWxC)
        if aug.randaugment_num_ops:
            x_HxWxC = randaugment(
                x_HxWxC,
                jax.random.fold_in(k_flip, 7),
                aug.randaugment_num_ops,
                aug.randaugment_magnitude,
            )
        return x_HxWxC

    assert (h, w) == x_BxHxWxC.shape[1:3]
    return jax.vmap(one)(x_BxHxWxC, example_ids_B)


def make_train_step(
    graphdef_train,
    tx: optax.GradientTransformation,
    mesh,
    aug: AugmentConfig | None = None,
    lr_schedule: optax.Schedule | None = None,
    kind: str = "image",
    loss: str = "cross_entropy",
) -> Callable:
    """``(state, batch) -> (state, metrics)``, jitted, data parallel, donating ``state``.

    ``state`` is a ``TrainState`` (fields ``params``, ``rest``, ``opt_state``,
    ``step``, ``rng``) replicated on every device. ``batch`` is sharded over ``data``: an
    ``ImageBatch`` for ``kind="image"`` (augmented, then classified) or a ``TokenBatch``
    for ``kind="text"`` (logits at position t predict token t + 1). ``loss`` names the
    per-example training loss (``dsb.losses.LOSSES``), averaged over the batch.
    Per device: forward and backward on the local slice, then ``pmean`` over ``data`` of
    gradients, loss and accuracy (BatchNorm layers pmean their batch statistics
    themselves through ``norm_axis_name``). With equal local batches, the mean of local
    means is the global-batch mean, so N devices compute what one device would.
    """
    axis = parallel.DATA_AXIS
    aug = aug or AugmentConfig()
    loss_name = loss  # ``loss`` names the batch loss below
    LOSSES.get(loss_name)
    if kind not in ("image", "text"):
        raise ValueError(f"kind={kind!r}: must be 'image' or 'text'")

    def inputs_and_targets(batch, step_key):
        if kind == "text":
            return batch["tokens"][:, :-1], batch["tokens"][:, 1:]
        x, y = batch["image"], batch["label"]
        local_b = y.shape[0]
        ids = jax.lax.axis_index(axis) * local_b + jnp.arange(local_b)
        return augment_batch(x, jax.random.fold_in(step_key, 1), ids, aug), y

    def per_device(state, batch):
        step_key = jax.random.fold_in(state.rng, state.step)
        x, y = inputs_and_targets(batch, step_key)
        dropout_key = jax.random.fold_in(jax.random.fold_in(step_key, 2), jax.lax.axis_index(axis))

        def loss_fn(params, rest):
            model = nnx.merge(graphdef_train, params, rest, copy=True)
            logits = model(x, rngs=nnx.Rngs(dropout=dropout_key)).astype(jnp.float32)
            loss = per_example_loss(loss_name, logits, y).mean()
            _, _, rest = nnx.split(model, nnx.Param, ...)
            return loss, (logits, rest)

        # Differentiate per-device copies of the replicated parameters: the gradient is
        # then this device's local gradient (as under pmap), averaged explicitly below.
        # Differentiating the replicated (mesh-invariant) value itself would make JAX
        # psum the cotangents on its own.
        local_params = jax.lax.pcast(state.params, axis, to="varying")
        (loss, (logits, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            local_params, state.rest
        )
        grads = jax.lax.pmean(grads, axis)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": jax.lax.pmean(loss, axis),
            "accuracy": jax.lax.pmean(jnp.mean(jnp.argmax(logits, -1) == y), axis),
            "grad_norm": optax.global_norm(grads),
        }
        if lr_schedule is not None:
            metrics["learning_rate"] = lr_schedule(state.step)
        new_state = state.replace(
            params=params, rest=rest, opt_state=opt_state, step=state.step + 1
        )
        return new_state, metrics

    step = parallel.data_parallel(per_device, mesh, in_specs=(P(), P(axis)), out_specs=(P(), P()))
    return jax.jit(step, donate_argnums=0)


def make_predict(model_or_graphdef, mesh, eval_batch_size: int = 1024) -> Callable:
    """Returns ``predict(params, rest, x) -> np.ndarray`` of eval-mode outputs for any n.

    ``x`` is the full input array, identical on every host; it is cut into global batches
    of ``eval_batch_size`` (rounded up to a multiple of the device count; the last one
    zero-padded), each host feeds its slice, and the outputs are gathered to every host.
    """
    graphdef = getattr(model_or_graphdef, "graphdef_eval", model_or_graphdef)
    ndev = mesh.devices.size
    batch = max(ndev, -(-eval_batch_size // ndev) * ndev)
    nproc, proc = jax.process_count(), jax.process_index()

    def per_device(params, rest, x):
        return nnx.merge(graphdef, params, rest)(x).astype(jnp.float32)

    fwd = jax.jit(
        parallel.data_parallel(
            per_device,
            mesh,
            in_specs=(P(), P(), P(parallel.DATA_AXIS)),
            out_specs=P(parallel.DATA_AXIS),
        )
    )

    def predict(params, rest, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        n = len(x)
        outs = []
        for start in range(0, n, batch):
            chunk = x[start : start + batch]
            m = len(chunk)
            if m < batch:
                chunk = np.concatenate([chunk, np.zeros((batch - m, *x.shape[1:]), x.dtype)])
            local = chunk[proc * batch // nproc : (proc + 1) * batch // nproc]
            out = fwd(params, rest, parallel.put_global_batch(local, mesh))
            outs.append(parallel.gather_to_host(out)[:m])
        return np.concatenate(outs) if outs else np.zeros((0,), np.float32)

    return predict
