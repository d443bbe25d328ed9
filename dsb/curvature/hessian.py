"""The loss Hessian (or Gauss-Newton matrix) of a classifier, matrix-free, data parallel.

``CurvatureOperator`` is ``v -> M v`` for ``M`` the Hessian ``H = d^2 L / d theta^2`` of the
mean training loss ``L`` over a fixed batch, or its Gauss-Newton part
``G = J^T H_z J / n`` (``J`` the Jacobian of the logits, ``H_z`` the Hessian of the
per-example loss in the logits: ``diag(p) - p p^T`` for cross-entropy, ``I`` for the square
loss), optionally preconditioned as ``P^{-1/2} M P^{-1/2}`` with ``P`` diagonal. Products run
per device on the device's share of the batch under ``jax.shard_map`` and are averaged with
``pmean``: with equal shares, the mean of per-device means is the batch mean, so N devices
compute what one does (up to the order of float additions).

On top of it:

* ``top_eigenpairs``: the top-``k`` eigenvalues by Lanczos (``dsb.jacobian.krylov.lanczos``,
  full reorthogonalisation), each with its residual ``||M y - theta y||`` and a converged
  flag ``residual <= rtol |theta|``. Adaptive: the Krylov dimension doubles until every
  requested pair converges or ``max_steps`` is reached. Unconverged values are reported as
  such: a Ritz value ``theta_i`` (descending) is always a lower bound of the eigenvalue
  ``lambda_i`` (Cauchy interlacing), and lies within its residual of *some* eigenvalue.
* ``hutchinson_trace``: ``tr M`` from Rademacher probes, with its standard error.
* ``stability_threshold``: the value the sharpness is compared with (Cohen et al. 2021
  for gradient descent and heavy-ball momentum; Cohen et al. 2022, "Adaptive Gradient
  Methods at the Edge of Stability", for Adam's preconditioned sharpness).

The model is evaluated in eval mode (BatchNorm with its running statistics, no dropout):
the Hessian of the function that the checkpoint computes, not of a training step's
stochastic forward pass.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.flatten_util import ravel_pytree
from jax.sharding import PartitionSpec as P

from dsb import parallel
from dsb.jacobian.krylov import lanczos
from dsb.losses import per_example_loss

__all__ = [
    "CurvatureOperator",
    "TopEigen",
    "TraceEstimate",
    "adam_preconditioner",
    "hutchinson_trace",
    "stability_threshold",
    "top_eigenpairs",
]

MATRICES = ("hessian", "gauss_newton")


class CurvatureOperator:
    """``v [P] -> M v [P]`` for the curvature matrix ``M`` of the mean loss over a batch.

    ``graphdef``, ``params``, ``rest``: the model (``nnx.split(model, nnx.Param, ...)``);
    ``x [n, ...]``, ``y [n]``: the batch (``n`` must divide over the mesh's devices);
    ``loss``: a ``dsb.losses.LOSSES`` name; ``matrix``: ``"hessian"`` or ``"gauss_newton"``;
    ``precond_sqrt_inv [P]``: ``P^{-1/2}`` (then the operator is ``P^{-1/2} M P^{-1/2}``);
    ``mesh``: the data mesh (default: the devices ``params`` live on, i.e. the run's mesh).
    ``dim`` is ``P``; ``theta`` the flat
    parameters; ``unravel`` maps a flat vector back to the parameter pytree.
    """

    def __init__(
        self,
        graphdef,
        params,
        rest,
        x,
        y,
        *,
        loss: str = "cross_entropy",
        matrix: str = "hessian",
        precond_sqrt_inv=None,
        mesh=None,
    ):
        if matrix not in MATRICES:
            raise ValueError(f"matrix={matrix!r}: must be one of {', '.join(MATRICES)}")
        theta, self.unravel = ravel_pytree(params)
        if mesh is None:  # the devices the parameters live on (the run's mesh), else one
            ndev = len(theta.devices()) if isinstance(theta, jax.Array) else 1
            mesh = parallel.make_mesh(ndev)
        self.mesh = mesh
        ndev = self.mesh.devices.size
        if len(y) % ndev:
            raise ValueError(f"{len(y)} examples do not divide over {ndev} devices")
        self.theta = jax.device_put(theta, parallel.replicated(self.mesh))
        self.dim = int(self.theta.shape[0])
        self.matrix = matrix
        dtype = self.theta.dtype
        unravel = self.unravel

        def logits_fn(theta, x_local):
            model = nnx.merge(graphdef, unravel(theta), rest, copy=True)
            return model(x_local).astype(dtype)

        def mean_loss_of_logits(z, y_local):
            return per_example_loss(loss, z, y_local).mean()

        def local_product(theta, v, x_local, y_local):
            if matrix == "hessian":
                grad = jax.grad(lambda t: mean_loss_of_logits(logits_fn(t, x_local), y_local))
                return jax.jvp(grad, (theta,), (v,))[1]
            z, jv = jax.jvp(lambda t: logits_fn(t, x_local), (theta,), (v,))
            hz = jax.jvp(jax.grad(lambda z: mean_loss_of_logits(z, y_local)), (z,), (jv,))[1]
            _, vjp = jax.vjp(lambda t: logits_fn(t, x_local), theta)
            return vjp(hz)[0]

        axis = parallel.DATA_AXIS

        def per_device(theta, s, x_local, y_local, v):
            # Per-device copies of the replicated inputs, so that the derivatives are this
            # device's (as in the train step), averaged explicitly.
            theta, v, s = (jax.lax.pcast(a, axis, to="varying") for a in (theta, v, s))
            return jax.lax.pmean(s * local_product(theta, s * v, x_local, y_local), axis)

        product = jax.shard_map(
            per_device,
            mesh=self.mesh,
            in_specs=(P(), P(), P(axis), P(axis), P()),
            out_specs=P(),
        )
        self._product = jax.jit(product)
        s = jnp.ones_like(self.theta) if precond_sqrt_inv is None else precond_sqrt_inv
        self.precond_sqrt_inv = jax.device_put(
            jnp.asarray(s, dtype), parallel.replicated(self.mesh)
        )
        batch = parallel.batch_sharding(self.mesh)
        self.x = jax.device_put(jnp.asarray(x), batch)
        self.y = jax.device_put(jnp.asarray(y), batch)

    def __call__(self, v: jax.Array) -> jax.Array:
        """``M v`` for a flat ``v [P]``."""
        v = jnp.asarray(v, self.theta.dtype)
        return self._product(self.theta, self.precond_sqrt_inv, self.x, self.y, v)

    def matvec(self) -> Callable[[jax.Array], jax.Array]:
        """The product as a pytree-compatible callable for ``dsb.jacobian.krylov``."""
        return jax.tree_util.Partial(
            self._product, self.theta, self.precond_sqrt_inv, self.x, self.y
        )

    def dense(self) -> np.ndarray:
        """``M`` as a dense ``[P, P]`` float64 array, one product per column (small P only)."""
        eye = np.eye(self.dim, dtype=self.theta.dtype)
        return np.stack([np.asarray(self(eye[:, i]), np.float64) for i in range(self.dim)], 1)


@dataclasses.dataclass
class TopEigen:
    """Top-``k`` eigenvalues of a symmetric operator, largest first.

    ``ritz [k]``: the Ritz values (lower bounds of the eigenvalues ``lambda_1..k``);
    ``residuals [k]``: ``||M y_i - theta_i y_i||`` (recurrence form; with full
    reorthogonalisation equal to the explicit residual up to rounding); ``converged [k]``:
    ``residual <= rtol |theta|``; ``values [k]``: ``ritz`` where converged, NaN elsewhere
    (never a value the method did not resolve); ``vectors [P, k]``; ``steps``: the Krylov
    dimension of the last attempt; ``products``: operator products spent in all attempts.
    """

    ritz: np.ndarray
    residuals: np.ndarray
    converged: np.ndarray
    values: np.ndarray
    vectors: np.ndarray
    steps: int
    products: int
    rtol: float

    @property
    def all_converged(self) -> bool:
        return bool(np.all(self.converged))


def top_eigenpairs(
    op: CurvatureOperator,
    k: int = 1,
    *,
    rtol: float = 1e-3,
    start_steps: int = 20,
    max_steps: int = 160,
    seed: int = 0,
) -> TopEigen:
    """Top-``k`` eigenpairs of ``op`` by Lanczos, doubling the Krylov dimension from
    ``start_steps`` until all ``k`` converge (``residual <= rtol |theta|``) or
    ``max_steps`` (capped at ``P``) is reached."""
    if not 1 <= k <= op.dim:
        raise ValueError(f"k={k}: must be in [1, P={op.dim}]")
    v0 = jax.random.normal(jax.random.key(seed), (op.dim,), op.theta.dtype)
    max_steps = min(max_steps, op.dim)
    steps = min(max(start_steps, k + 1), max_steps)
    products = 0
    while True:
        res = lanczos(op.matvec(), v0, steps)
        products += steps
        order = np.argsort(res.values)[::-1][:k]
        ritz, resid = res.values[order], res.residuals[order]
        converged = resid <= rtol * np.abs(ritz)
        if converged.all() or steps >= max_steps:
            break
        steps = min(2 * steps, max_steps)
    return TopEigen(
        ritz=ritz,
        residuals=resid,
        converged=converged,
        values=np.where(converged, ritz, np.nan),
        vectors=res.vectors[:, order],
        steps=steps,
        products=products,
        rtol=rtol,
    )


@dataclasses.dataclass
class TraceEstimate:
    """Hutchinson's ``tr M ~ mean_i z_i^T M z_i`` over ``probes`` Rademacher ``z_i``;
    ``stderr`` is the sample standard deviation over probes / sqrt(probes)."""

    mean: float
    stderr: float
    probes: int


def hutchinson_trace(op: CurvatureOperator, probes: int = 32, seed: int = 0) -> TraceEstimate:
    if probes < 2:
        raise ValueError(f"probes={probes}: need at least 2 for a standard error")
    keys = jax.random.split(jax.random.key(seed), probes)
    samples = []
    for key in keys:
        z = jax.random.rademacher(key, (op.dim,), op.theta.dtype)
        samples.append(float(jnp.vdot(z, op(z))))
    s = np.asarray(samples, np.float64)
    return TraceEstimate(float(s.mean()), float(s.std(ddof=1) / math.sqrt(probes)), probes)


def adam_preconditioner(opt_state, params, *, b1: float, eps: float, b2: float):
    """``P^{-1/2} [P]`` (flat, in ``params``' order) of Adam's preconditioner after ``t``
    updates (``t`` = the state's count, at least 1):
    ``P = (1 - b1^t) diag(sqrt(nu_t / (1 - b2^t)) + eps)``, the preconditioner of update
    ``t`` with its bias corrections. Adam's update is ``eta P^{-1} m`` with ``m`` an EMA of
    gradients; frozen ``P`` and quadratic loss make it heavy-ball momentum on
    ``P^{-1} H``, stable while ``lambda_max(P^{-1} H) < (2 + 2 b1) / ((1 - b1) eta)``
    (Cohen et al. 2022, "Adaptive Gradient Methods at the Edge of Stability", Sec. 2).
    ``P^{-1} H`` is similar to ``P^{-1/2} H P^{-1/2}``, which Lanczos takes."""
    import optax

    found = jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
    adam = [s for s in found if isinstance(s, optax.ScaleByAdamState)]
    if len(adam) != 1:
        raise ValueError("the optimizer state holds no (or several) Adam moment states")
    t = int(adam[0].count)
    if t < 1:
        raise ValueError("Adam's preconditioner is undefined before the first update")
    nu_flat, _ = ravel_pytree(adam[0].nu)
    theta, _ = ravel_pytree(params)
    if nu_flat.shape != theta.shape:
        raise ValueError("Adam's second moment does not match the parameters")
    nu_hat = nu_flat / (1.0 - b2**t)
    diag = (1.0 - b1**t) * (jnp.sqrt(nu_hat) + eps)
    return (1.0 / jnp.sqrt(diag)).astype(theta.dtype)


def stability_threshold(
    optimizer: str, lr: float, *, momentum: float = 0.0, nesterov: bool = False, b1: float = 0.9
) -> float:
    """The sharpness at which the optimizer's linearised dynamics turn unstable.

    * gradient descent (``sgd``, no momentum): ``2 / eta``;
    * heavy-ball momentum ``beta`` (``optax.sgd(momentum=beta)``, ``m <- g + beta m``,
      ``theta <- theta - eta m``): ``(2 + 2 beta) / eta``;
    * ``adamw``: ``(2 + 2 b1) / ((1 - b1) eta)`` for the *preconditioned* sharpness
      ``lambda_max(P^{-1} H)`` (38 / eta for ``b1 = 0.9``).

    Nesterov momentum has another threshold, not derived here: NaN.
    """
    if lr <= 0:
        return float("nan")
    if optimizer == "sgd":
        if nesterov and momentum:
            return float("nan")
        return (2.0 + 2.0 * momentum) / lr
    if optimizer == "adamw":
        return (2.0 + 2.0 * b1) / ((1.0 - b1) * lr)
    return float("nan")
