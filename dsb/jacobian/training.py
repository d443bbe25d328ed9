"""A training run as a pure function ``theta_0 [P] -> theta_T [P]``.

The run is a nested ``lax.scan`` (epochs x minibatches) over a fixed, deterministic
sequence of minibatches, so ``jax.jvp`` / ``jax.vjp`` / ``jax.linearize`` of it is the
training Jacobian ``J = d theta_T / d theta_0``. Parameters travel flat ([P]) across the
boundary and as a pytree inside, through ``jax.flatten_util.ravel_pytree``.

Any NNX model without mutable batch statistics works: ``nnx_apply`` splits it into
``graphdef, params, rest`` and returns a pure ``apply(params, x)``.

``notebook_mlp_init`` gives a dsb MLP the initial parameters of the public reference
notebook (EleutherAI/training-jacobian, flax linen), bit for bit, so dsb's run and J are
the notebook's run and J.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.flatten_util import ravel_pytree

__all__ = [
    "TrainingRun",
    "check_full_precision",
    "cross_entropy_loss",
    "fixed_minibatches",
    "linen_fold_in",
    "make_training_run",
    "nnx_apply",
    "notebook_mlp_init",
    "reference_optimizer",
    "reference_run",
    "softmax_cross_entropy",
]

Batch = dict[str, jax.Array]


def _floats_to(tree: Batch, dtype) -> Batch:
    """Floating leaves cast to ``dtype`` (inputs follow the run's dtype); labels kept."""
    return jax.tree_util.tree_map(
        lambda b: b.astype(dtype) if jnp.issubdtype(b.dtype, jnp.floating) else b, tree
    )


def nnx_apply(model) -> tuple[Callable[[Any, jax.Array], jax.Array], Any]:
    """Split an NNX model into a pure ``apply(params, x) -> logits`` and its params.

    Everything that is not an ``nnx.Param`` (RNG state, constants) is frozen into the
    closure. Models with BatchNorm running statistics are refused: their training step is
    not a function of the parameters alone.
    """
    from flax import nnx

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if jax.tree_util.tree_leaves(nnx.state(model, nnx.BatchStat)):
        raise ValueError("nnx_apply: models with BatchStat variables are not supported")

    def apply(p, x):
        return nnx.merge(graphdef, p, rest)(x)

    return apply, params


def linen_fold_in(key: jax.Array, *data: str | int) -> jax.Array:
    """``key`` with static names and counters folded in the way flax linen derives the key
    of a submodule's parameter: one ``jax.random.fold_in`` of the first 4 bytes (big
    endian) of the SHA-1 of the concatenated data, strings as UTF-8 and non-negative ints
    as their minimal big-endian bytes (flax's default, ``flax_fix_rng_separator`` off).

    In ``model.init(key, x)`` the ``n``-th parameter created by a direct child ``name``
    of the top module gets ``linen_fold_in(key, name, n)`` (``n`` counts from 1).
    """
    if not data:
        return key
    h = hashlib.sha1()
    for d in data:
        if isinstance(d, str):
            h.update(d.encode("utf-8"))
        elif isinstance(d, int) and not isinstance(d, bool) and d >= 0:
            h.update(d.to_bytes((d.bit_length() + 7) // 8, "big"))
        else:
            raise ValueError(f"linen_fold_in: expected str or int >= 0, got {d!r}")
    return jax.random.fold_in(key, jnp.uint32(int.from_bytes(h.digest()[:4], "big")))


def notebook_mlp_init(model, seed: int) -> None:
    """Overwrite a dsb ``MLP``'s parameters, in place, with the reference notebook's init.

    The notebook's linen MLP is ``Dense(w) -> gelu`` per hidden width, then
    ``Dense(num_classes)``, initialised by ``model.init(jax.random.key(seed), x)``:
    kernels ``lecun_normal`` (truncated normal, variance 1 / fan_in), biases
    ``normal(w ** -0.5)`` with ``w`` the width of the hidden layer (the output bias
    reuses the last hidden width's scale), and layer ``i`` (``Dense_i``) draws its kernel
    with ``linen_fold_in(key, "Dense_i", 1)`` and its bias with ``(..., 2)``. dsb's MLP
    flattens its parameters in the same order (per layer: bias, then kernel), so
    ``ravel_pytree`` gives the notebook's ``theta_0`` exactly. The model's activation
    and dtype are left alone: the notebook's is ``"gelu"`` (tanh) in float32.
    """
    layers = getattr(model, "layers", None)
    if layers is None or len(layers) < 2:
        raise ValueError(
            "notebook_mlp_init needs a dsb MLP with at least one hidden layer "
            "(the notebook's bias scale is the hidden width ** -0.5)"
        )
    key = jax.random.key(seed)
    kernel_init = jax.nn.initializers.lecun_normal()
    scale = None
    for i, layer in enumerate(layers):
        d_in, d_out = layer.kernel.value.shape
        if i < len(layers) - 1:
            scale = d_out**-0.5
        dtype = layer.kernel.value.dtype
        name = f"Dense_{i}"
        kernel = kernel_init(linen_fold_in(key, name, 1), (d_in, d_out), jnp.float32)
        bias = jax.nn.initializers.normal(scale)(linen_fold_in(key, name, 2), (d_out,), jnp.float32)
        layer.kernel.value = kernel.astype(dtype)
        layer.bias.value = bias.astype(dtype)


@jax.custom_jvp
def _softmax_minus_onehot(logits: jax.Array, onehot: jax.Array) -> jax.Array:
    """``softmax(logits) - onehot``: the cross-entropy gradient, with the closed-form JVP
    ``p * dz - p <p, dz>`` (``p`` computed once, behind an ``optimization_barrier``)."""
    return jax.nn.softmax(logits, axis=-1) - onehot


@_softmax_minus_onehot.defjvp
def _softmax_minus_onehot_jvp(primals, tangents):
    logits, onehot = primals
    dz = tangents[0]
    p = lax.optimization_barrier(jax.nn.softmax(logits, axis=-1))
    p_dz = p * dz
    return p - onehot, p_dz - p * jnp.sum(p_dz, axis=-1, keepdims=True)


@jax.custom_jvp
def softmax_cross_entropy(logits: jax.Array, onehot: jax.Array) -> jax.Array:
    """Per-example ``-sum(onehot * log_softmax(logits))`` (optax's value), with closed-form
    first and second derivatives in ``logits`` (``onehot`` is data: no derivative).

    Autodiff of the log-softmax (max shift, exp, log, select) leaves a chain of elementwise
    tangent operations that a batched JVP repeats per tangent and XLA duplicates into each
    consumer; the closed forms make the dense training Jacobian's chunks 16% faster on
    2 CPU cores (T = 125, reference run) and leave plain ``jit(jacfwd)`` unchanged."""
    return -jnp.sum(onehot * jax.nn.log_softmax(logits, axis=-1), axis=-1)


@softmax_cross_entropy.defjvp
def _softmax_cross_entropy_jvp(primals, tangents):
    logits, onehot = primals
    grad = lax.optimization_barrier(_softmax_minus_onehot(logits, onehot))
    return softmax_cross_entropy(logits, onehot), jnp.sum(grad * tangents[0], axis=-1)


def cross_entropy_loss(apply: Callable) -> Callable[[Any, Batch], jax.Array]:
    """``loss(params, {"image": x, "label": y})``: mean softmax cross-entropy
    (``softmax_cross_entropy``: optax's value, closed-form derivatives)."""

    def loss(params, batch):
        logits = apply(params, batch["image"])
        onehot = jax.nn.one_hot(batch["label"], logits.shape[-1], dtype=logits.dtype)
        return softmax_cross_entropy(logits, onehot).mean()

    return loss


def _optax_cross_entropy_loss(apply: Callable) -> Callable[[Any, Batch], jax.Array]:
    """``cross_entropy_loss`` with optax's autodiff derivatives (the reference notebook's)."""

    def loss(params, batch):
        logits = apply(params, batch["image"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

    return loss


def reference_optimizer(
    num_steps: int = 625, peak_lr: float = 0.1, momentum: float = 0.9
) -> optax.GradientTransformation:
    """SGD with momentum 0.9, lr cosine-decayed from ``peak_lr`` to 0 over ``num_steps``."""
    return optax.sgd(optax.cosine_decay_schedule(peak_lr, num_steps), momentum=momentum)


def reference_run(
    seed: int = 0,
    *,
    num_steps: int = 625,
    dtype: Any = jnp.float32,
    closed_form: bool = True,
    init: str = "dsb",
    data: tuple[np.ndarray, np.ndarray] | None = None,
    optimizer: optax.GradientTransformation | None = None,
    with_apply: bool = False,
):
    """The reference training run (Belrose & Scherlis 2024, arXiv 2412.07003): MLP
    64-GELU-10 (tanh GELU) with N(0, 0.125^2) biases (P = 4810), the digits train split in
    25 fixed minibatches of 64, ``reference_optimizer(num_steps)``; returns
    ``(run, theta0)`` as ``make_training_run`` does, and the model's ``apply(params, x)``
    third with ``with_apply``. The tests, benchmarks, the matrix-free reference numbers and
    ``dsb.jacobian.study`` all use this one setup.

    ``init="dsb"`` is dsb's own initial draw (``nnx.Rngs(seed)``); ``init="notebook"`` the
    public notebook's exact theta_0 (``notebook_mlp_init``; EleutherAI/training-jacobian).
    ``data=(x, y)`` replaces the digits train split (controls: shuffled labels, white-noise
    inputs) and ``optimizer`` the reference optimizer. ``closed_form=False`` gives the same
    function with the notebook's autodiff derivatives (``jax.nn.gelu``, optax's
    cross-entropy) instead of dsb's closed forms, for benchmarks."""
    from flax import nnx

    from dsb.data.digits import digits_arrays
    from dsb.models import build_model

    if init not in ("dsb", "notebook"):
        raise ValueError(f"reference_run: init must be 'dsb' or 'notebook', got {init!r}")
    x, y = digits_arrays()["train"] if data is None else data
    model = build_model(
        "mlp",
        num_classes=10,
        input_shape=(8, 8, 1),
        rngs=nnx.Rngs(seed),
        widths=(64,),
        activation="gelu" if closed_form else "gelu_tanh_autodiff",
        bias_init_std=0.125,
        dtype=dtype,
    )
    if init == "notebook":
        notebook_mlp_init(model, seed)
    apply, params = nnx_apply(model)
    run, theta0 = make_training_run(
        cross_entropy_loss(apply) if closed_form else _optax_cross_entropy_loss(apply),
        params,
        reference_optimizer(num_steps) if optimizer is None else optimizer,
        fixed_minibatches(x, y, 64),
        num_steps=num_steps,
        dtype=dtype,
    )
    return (run, theta0, apply) if with_apply else (run, theta0)


def fixed_minibatches(
    x: np.ndarray, y: np.ndarray, batch_size: int, *, drop_last: bool = True
) -> Batch:
    """Cut ``x [n, ...]``, ``y [n]`` in order into ``{"image": [nb, b, ...], "label": [nb, b]}``.

    The reference setup: 1600 digits, batch 64 -> 25 minibatches, same order every epoch.
    """
    n = (len(x) // batch_size) * batch_size if drop_last else len(x)
    if n % batch_size:
        raise ValueError(f"{len(x)} examples do not split into batches of {batch_size}")
    nb = n // batch_size
    return {
        "image": jnp.asarray(x[:n]).reshape(nb, batch_size, *x.shape[1:]),
        "label": jnp.asarray(y[:n]).reshape(nb, batch_size),
    }


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: jax.jit(run) works
class TrainingRun:
    """A deterministic training run, as pure functions of the flat initial parameters.

    ``__call__(theta0 [P]) -> theta_T [P]``; ``trajectory(theta0)`` also returns the
    per-step losses ``[T]``. ``num_steps`` may stop mid-epoch (the ``training_jacobian`` evaluator).
    ``remat`` wraps the step in ``jax.checkpoint`` so reverse mode stores only the
    carries, not every activation, of the ``T`` steps.
    """

    loss_fn: Callable[[Any, Batch], jax.Array]
    optimizer: optax.GradientTransformation
    batches: Batch
    num_steps: int
    unravel: Callable[[jax.Array], Any]
    num_params: int
    remat: bool = False

    @property
    def num_batches(self) -> int:
        return int(jax.tree_util.tree_leaves(self.batches)[0].shape[0])

    def _step(self, carry, batch):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(self.loss_fn)(params, batch)
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    def trajectory(self, theta0: jax.Array, batches: Batch | None = None):
        """``(theta_T [P], losses [T])``; ``batches`` overrides the stored ones (controls)."""
        batches = self.batches if batches is None else batches
        params = self.unravel(theta0)
        batches = _floats_to(batches, theta0.dtype)
        step = jax.checkpoint(self._step) if self.remat else self._step
        nb = self.num_batches
        num_epochs, rest = divmod(self.num_steps, nb)
        carry = (params, self.optimizer.init(params))

        def epoch(c, _):
            return lax.scan(step, c, batches)

        carry, losses = lax.scan(epoch, carry, None, length=num_epochs)
        losses = losses.reshape(-1)
        if rest:
            partial = jax.tree_util.tree_map(lambda b: b[:rest], batches)
            carry, more = lax.scan(step, carry, partial)
            losses = jnp.concatenate([losses, more])
        flat, _ = ravel_pytree(carry[0])
        return flat, losses

    def __call__(self, theta0: jax.Array) -> jax.Array:
        return self.trajectory(theta0)[0]

    def with_steps(self, num_steps: int) -> TrainingRun:
        return dataclasses.replace(self, num_steps=num_steps)


def _narrowing_float_casts(jaxpr) -> list[str]:
    """``"old->new"`` for every float cast to a narrower float in ``jaxpr`` and its
    sub-jaxprs (scan/cond/pjit/custom-derivative bodies)."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "convert_element_type":
            old, new = eqn.invars[0].aval.dtype, jnp.dtype(eqn.params["new_dtype"])
            floats = jnp.issubdtype(old, jnp.floating) and jnp.issubdtype(new, jnp.floating)
            if floats and jnp.finfo(new).bits < jnp.finfo(old).bits:
                found.append(f"{old}->{new}")
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found += _narrowing_float_casts(inner)
    return found


def check_full_precision(loss_fn, params, batch) -> None:
    """Raise if the gradient of ``loss_fn`` casts the parameters' float dtype down anywhere.

    A float64 training Jacobian is only float64 if every step is: an NNX layer built with
    ``dtype=jnp.float32`` (the dsb model default) silently computes in float32, and the
    result then carries float32 rounding amplified by the run.
    """
    closed = jax.make_jaxpr(jax.grad(loss_fn))(params, batch)
    casts = _narrowing_float_casts(closed.jaxpr)
    if casts:
        kinds = ", ".join(sorted(set(casts)))
        raise ValueError(
            f"the loss gradient narrows float precision at {len(casts)} places ({kinds}); "
            "a float64 run needs a float64 model: build it with dtype=jnp.float64"
        )


def make_training_run(
    loss_fn: Callable[[Any, Batch], jax.Array],
    params: Any,
    optimizer: optax.GradientTransformation,
    batches: Batch,
    *,
    num_epochs: int | None = None,
    num_steps: int | None = None,
    remat: bool = False,
    dtype: Any = jnp.float32,
) -> tuple[TrainingRun, jax.Array]:
    """Build the pure run and return it with the flat initial parameters ``theta0 [P]``.

    Give ``num_epochs`` (each a pass over all ``batches`` in order) or ``num_steps``.
    ``dtype`` is the dtype of the whole run (parameters, optimizer state, inputs); float64
    needs ``jax.config.update("jax_enable_x64", True)`` first and a model that computes in
    float64 throughout (``check_full_precision`` refuses one that casts down).
    """
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError("float64 training needs jax.config.update('jax_enable_x64', True)")
    params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, dtype), params)
    theta0, unravel = ravel_pytree(params)
    nb = int(jax.tree_util.tree_leaves(batches)[0].shape[0])
    if (num_epochs is None) == (num_steps is None):
        raise ValueError("give exactly one of num_epochs and num_steps")
    steps = num_epochs * nb if num_steps is None else num_steps
    run = TrainingRun(loss_fn, optimizer, batches, steps, unravel, theta0.size, remat)
    if dtype == jnp.float64:
        first = jax.tree_util.tree_map(lambda b: b[0], batches)
        check_full_precision(loss_fn, params, _floats_to(first, dtype))
    return run, theta0
