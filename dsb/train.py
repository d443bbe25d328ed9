"""The training lifecycle, top to bottom.

``train(cfg, run_dir)``: set up the mesh, the data and the model; resume from the run
directory's newest readable checkpoint if there is one; run data-parallel optimizer steps;
at each scheduled step save a checkpoint and run the configured evaluators; write
metrics and figures; return a summary. ``load_checkpoint`` reopens any saved step on CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import PartitionSpec as P
from omegaconf import OmegaConf

from dsb import parallel, schedule
from dsb.checkpoint import Checkpointer, abstract_like
from dsb.config import AugmentConfig, Config, to_config
from dsb.data.loader import BatchSampler
from dsb.data.randaugment import randaugment
from dsb.data.registry import get_dataset_spec
from dsb.data.sources import load_split
from dsb.evals.base import EvalContext, Snapshot, build_evaluator, runs_at, split_entry
from dsb.metrics import MetricsWriter, NonFiniteLossError
from dsb.models.registry import build_model
from dsb.optim import make_optimizer, make_schedule

__all__ = [
    "Model",
    "RestoredRun",
    "TrainResult",
    "augment_batch",
    "init_model",
    "load_checkpoint",
    "make_predict",
    "make_train_step",
    "train",
]

log = logging.getLogger(__name__)

# XLA:CPU queues at most 32 computations per device before a launch blocks a thread of its
# client's pool (see the bounded dispatch in ``train``); half of that leaves room for the
# other programs (evaluators, initialisers) that may be queued beside the steps.
MAX_CPU_STEPS_IN_FLIGHT = 16


# --------------------------------------------------------------------------- model state
@dataclasses.dataclass
class Model:
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


def dataset_info(cfg: Config) -> tuple[str, int, tuple[int, ...]]:
    """``(kind, num_classes, input_shape)`` of the configured data; for text, the vocab
    size and ``(context_length,)`` (the corpus is tokenized on first use)."""
    spec = get_dataset_spec(cfg.data.name)
    if spec.kind == "text":
        from dsb.data.text import vocab_size

        return "text", vocab_size(cfg.data.text), (cfg.data.text.context_length,)
    return spec.kind, spec.num_classes, spec.input_shape


def make_loader(cfg: Config) -> Callable[[str], dict[str, np.ndarray]]:
    """``split -> host arrays`` of the configured dataset (cached)."""
    if get_dataset_spec(cfg.data.name).kind == "text":
        from dsb.data.text import load_text_split

        return functools.cache(functools.partial(load_text_split, cfg.data.text))
    return functools.partial(_load, cfg.data.name, cfg.data.data_dir)


def init_model(
    cfg: Config, sharding=None, norm_axis_name: str | None = parallel.DATA_AXIS
) -> Model:
    """Build the configured model: abstractly for its structure, then materialised by a
    jitted initialiser directly into ``sharding`` (no host round trip)."""
    _, num_classes, input_shape = dataset_info(cfg)

    def construct(key):
        return build_model(
            cfg.model.name,
            num_classes=num_classes,
            input_shape=input_shape,
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

    params, rest = jax.jit(create, out_shardings=sharding)(key)
    return Model(graphdef_train, graphdef_eval, params, rest)


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
) -> Callable:
    """``(state, batch) -> (state, metrics)``, jitted, data parallel, donating ``state``.

    ``state`` is ``{"params", "rest", "opt_state", "step", "rng"}`` replicated on every
    device; ``batch`` is ``{"image": [B, H, W, C], "label": [B]}`` sharded over ``data``.
    Per device: forward and backward on the local slice, then ``pmean`` over ``data`` of
    gradients, loss and accuracy (BatchNorm layers pmean their batch statistics
    themselves through ``norm_axis_name``). With equal local batches, the mean of local
    means is the global-batch mean, so N devices compute what one device would.
    """
    axis = parallel.DATA_AXIS
    aug = aug or AugmentConfig()

    def per_device(state, batch):
        step_key = jax.random.fold_in(state["rng"], state["step"])
        if "tokens" in batch:  # language model: logits at t predict token t + 1
            x, y = batch["tokens"][:, :-1], batch["tokens"][:, 1:]
        else:
            x, y = batch["image"], batch["label"]
            local_b = y.shape[0]
            ids = jax.lax.axis_index(axis) * local_b + jnp.arange(local_b)
            x = augment_batch(x, jax.random.fold_in(step_key, 1), ids, aug)
        dropout_key = jax.random.fold_in(jax.random.fold_in(step_key, 2), jax.lax.axis_index(axis))

        def loss_fn(params, rest):
            model = nnx.merge(graphdef_train, params, rest, copy=True)
            logits = model(x, rngs=nnx.Rngs(dropout=dropout_key)).astype(jnp.float32)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            _, _, rest = nnx.split(model, nnx.Param, ...)
            return loss, (logits, rest)

        # Differentiate per-device copies of the replicated parameters: the gradient is
        # then this device's local gradient (as under pmap), averaged explicitly below.
        # Differentiating the replicated (mesh-invariant) value itself would make JAX
        # psum the cotangents on its own.
        local_params = jax.lax.pcast(state["params"], axis, to="varying")
        (loss, (logits, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            local_params, state["rest"]
        )
        grads = jax.lax.pmean(grads, axis)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {
            "loss": jax.lax.pmean(loss, axis),
            "accuracy": jax.lax.pmean(jnp.mean(jnp.argmax(logits, -1) == y), axis),
            "grad_norm": optax.global_norm(grads),
        }
        if lr_schedule is not None:
            metrics["learning_rate"] = lr_schedule(state["step"])
        new_state = {
            "params": params,
            "rest": rest,
            "opt_state": opt_state,
            "step": state["step"] + 1,
            "rng": state["rng"],
        }
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


# ---------------------------------------------------------------------------- the driver
@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    final_step: int
    resumed_from: int | None
    last_metrics: dict[str, float]
    state: dict[str, Any]
    figures: list[Path]


def _save_config(cfg: Config, run_dir: Path) -> None:
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    import tqdm

    return tqdm.tqdm(
        total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, mininterval=1.0
    )


def train(cfg: Config, run_dir: str | Path) -> TrainResult:
    """Train ``cfg`` in ``run_dir``, resuming from its newest readable checkpoint."""
    run_dir = Path(run_dir).absolute()
    parallel.initialize(cfg.parallel)
    is_main = jax.process_index() == 0
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _save_config(cfg, run_dir)
    mesh = parallel.make_mesh(cfg.parallel.num_devices)
    ndev = mesh.devices.size
    if cfg.data.batch_size % ndev:
        raise ValueError(
            f"data.batch_size={cfg.data.batch_size} is not divisible by the {ndev} devices"
        )
    platform = mesh.devices.flat[0].platform
    if platform == "cpu" and ndev > 1 and cfg.train.max_steps_in_flight > MAX_CPU_STEPS_IN_FLIGHT:
        raise ValueError(
            f"train.max_steps_in_flight={cfg.train.max_steps_in_flight}: XLA:CPU with "
            f"{ndev} devices deadlocks when a device has 32 computations queued; use at most "
            f"{MAX_CPU_STEPS_IN_FLIGHT}"
        )
    log.info("mesh: %d devices (%s), %d processes", ndev, platform, jax.process_count())

    load = make_loader(cfg)
    _, num_classes, input_shape = dataset_info(cfg)
    train_data = load(cfg.data.train_split)
    if cfg.data.erasure:
        from dsb.data.transforms import erase_split

        train_data = erase_split(
            train_data,
            cfg.data.erasure,
            num_classes,
            cfg.data.erasure_shrinkage,
            report_path=run_dir / "erasure.json" if is_main else None,
        )
    sampler = BatchSampler(
        train_data,
        cfg.data.batch_size,
        seed=cfg.data.shuffle_seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        reshuffle_each_epoch=cfg.data.reshuffle_each_epoch,
    )

    total = cfg.train.total_steps
    tx = make_optimizer(cfg.optim, total)
    lr = make_schedule(cfg.optim, total)
    rep = parallel.replicated(mesh)
    model = init_model(cfg, sharding=rep)
    state = {
        "params": model.params,
        "rest": model.rest,
        "opt_state": jax.jit(tx.init, out_shardings=rep)(model.params),
        "step": jax.device_put(jnp.asarray(0, jnp.int32), rep),
        "rng": jax.device_put(
            jax.random.key_data(jax.random.fold_in(jax.random.key(cfg.seed), 1)), rep
        ),
    }
    init_params = jax.tree.map(jnp.copy, model.params)

    ckpt_steps = schedule.checkpoint_steps(total, cfg.ckpt.log_spaced, cfg.ckpt.every_steps)
    ckpt_set = set(ckpt_steps)
    checkpointer = Checkpointer(
        run_dir / "checkpoints",
        keep_steps=schedule.checkpoint_steps(total, cfg.ckpt.log_spaced, None),
        keep_interval=cfg.ckpt.keep_interval,
        async_save=cfg.ckpt.async_save,
    )
    writer = MetricsWriter(run_dir, enabled=is_main)
    start, resumed_from = 0, None
    restored = checkpointer.restore_latest(abstract_like(state), max_step=total)
    if restored is not None:
        start, state, meta = restored
        resumed_from = start
        for later in [s for s in checkpointer.all_steps() if s > start]:
            checkpointer.manager.delete(later)  # unreadable ones: retrained and saved anew
        if (
            meta["data"]["next_step"] != start
            or meta["data"]["shuffle_seed"] != cfg.data.shuffle_seed
        ):
            raise ValueError(
                f"checkpoint {start} was written by a run with another data order: {meta['data']}"
            )
        writer.truncate_after(start)
        log.info("resumed from checkpoint %d in %s", start, checkpointer.directory)

    ctx = EvalContext(
        load_split=load,
        train_split=cfg.data.train_split,
        num_classes=num_classes,
        input_shape=input_shape,
        run_dir=run_dir,
        seed=cfg.seed,
        is_main_process=is_main,
        config=cfg,
        train_batch=BatchSampler(
            train_data,
            cfg.data.batch_size,
            seed=cfg.data.shuffle_seed,
            reshuffle_each_epoch=cfg.data.reshuffle_each_epoch,
        ),
    )
    evaluators: dict[str, Any] | None = None
    predict = make_predict(model, mesh, cfg.train.eval_batch_size)

    def checkpoint_and_evaluate(step: int) -> dict[str, float]:
        nonlocal evaluators
        if step != resumed_from:
            checkpointer.save(
                step,
                state,
                {
                    "step": step,
                    "data": {
                        "next_step": step,
                        "shuffle_seed": cfg.data.shuffle_seed,
                        "global_batch_size": cfg.data.batch_size,
                    },
                },
            )
        if evaluators is None:  # built lazily: set-up cost is paid once, on first use
            evaluators = {}
            for key, entry in cfg.evals.items():
                type_name, when, options = split_entry(key, entry)
                evaluators[key] = (when, build_evaluator(ctx, key, type_name, options))
        snap = Snapshot(
            step=step,
            predict=functools.partial(predict, state["params"], state["rest"]),
            graphdef=model.graphdef_eval,
            params=state["params"],
            rest=state["rest"],
            init_params=init_params,
        )
        values = {}
        for key, (when, ev) in evaluators.items():
            if not runs_at(when, step, total):
                continue
            t0 = time.perf_counter()
            for name, value in ev.run(snap):
                values[f"{key}/{name}"] = float(value)
            values[f"time/eval_{key}_s"] = time.perf_counter() - t0
        writer.write(step, values)
        writer.flush()
        return values

    train_step = make_train_step(model.graphdef_train, tx, mesh, cfg.data.augment, lr)
    last: dict[str, float] = {}
    # Step 0 is the initialisation; a resumed run re-evaluates its restored step, since a
    # kill between saving a checkpoint and finishing its evaluations loses them.
    last = checkpoint_and_evaluate(start)

    bar = _progress(total, start, cfg.train.progress_bar and is_main)
    # No prefetch thread: JAX dispatch is asynchronous, so gathering and placing batch s + 1
    # (~0.2 ms from host memory) already overlaps the device computing step s; a thread
    # only added GIL contention (benchmarks/train_throughput.py measured it slower).
    pending: list[tuple[int, dict[str, jax.Array]]] = []
    # Bounded asynchronous dispatch: before step s is dispatched, step s - N has finished
    # (N = train.max_steps_in_flight), so at most N steps are queued or running. Without
    # the bound, XLA:CPU with several devices deadlocks once a logging window dispatches
    # more than ~32 steps (issue 11). Its client launches each device's share of a
    # multi-device program from a thread pool of max(cores, devices) threads, and a launch
    # blocks its pool thread while that device already has 32 computations queued
    # (max_inflight_computations_per_device). A queued all-reduce needs one running pool
    # thread per device to meet its rendezvous, so the blocked launchers starve it:
    # "Expected 4 threads to join the rendezvous, but only 3 of them arrived", then abort.
    # Waiting on step s - N's loss (an output of the same program, so ready once the
    # whole step is done) costs nothing while the device is busier than the host, on CPU
    # and on accelerators alike; benchmarks/train_throughput.py measures it. ``pending``
    # holds every step since the last host sync, so it holds every step in flight.
    t_window, steps_window = time.perf_counter(), 0
    try:
        for batch_index in range(start, total):
            batch = parallel.put_global_batch(sampler(batch_index), mesh)
            if len(pending) >= cfg.train.max_steps_in_flight:
                pending[-cfg.train.max_steps_in_flight][1]["loss"].block_until_ready()
            state, metrics = train_step(state, batch)
            step = batch_index + 1
            pending.append((step, metrics))
            steps_window += 1
            if not (
                schedule.is_log_step(step, cfg.train.log_every_steps, total) or step in ckpt_set
            ):
                continue
            host = jax.device_get([m for _, m in pending])
            for (s, _), m in zip(pending, host):
                if not math.isfinite(float(m["loss"])):
                    raise NonFiniteLossError(s, float(m["loss"]))
            now = time.perf_counter()
            train_values = {f"train/{k}": float(np.mean([m[k] for m in host])) for k in host[0]}
            train_values["train/steps_per_s"] = steps_window / (now - t_window)
            pending.clear()
            t_window, steps_window = now, 0
            writer.write(step, train_values)
            last.update(train_values)
            if bar is not None:
                bar.set_postfix(
                    loss=f"{train_values['train/loss']:.4f}",
                    steps_per_s=f"{train_values['train/steps_per_s']:.0f}",
                )
                bar.update(step - bar.n)
            if step in ckpt_set:
                last.update(checkpoint_and_evaluate(step))
                if bar is not None:
                    shown = {
                        k: v
                        for k, v in last.items()
                        if k.endswith("accuracy") and not k.startswith("train")
                    }
                    bar.write(
                        f"step {step}: "
                        + ", ".join(f"{k}={v:.4f}" for k, v in list(shown.items())[:6])
                    )
                t_window = time.perf_counter()  # evaluation time is not training speed
    finally:
        if bar is not None:
            bar.close()
        checkpointer.close()
        writer.close()

    figures = []
    if cfg.figures and is_main:
        from dsb.plots import plot_run

        figures = plot_run(run_dir, num_classes=num_classes)
    if is_main:
        (run_dir / "summary.json").write_text(json.dumps({"final_step": total, **last}, indent=2))
    return TrainResult(run_dir, total, resumed_from, last, state, figures)


@functools.lru_cache(maxsize=8)
def _load(name: str, data_dir: str | None, split: str) -> dict[str, np.ndarray]:
    return load_split(name, split, data_dir)


# -------------------------------------------------------------------- notebooks, anywhere
@dataclasses.dataclass
class RestoredRun:
    config: Config
    step: int
    model: nnx.Module  # eval mode, on the default (e.g. CPU) device
    state: dict[str, Any]
    meta: dict[str, Any]
    available_steps: list[int]


def load_checkpoint(run_dir: str | Path, step: int | None = None) -> RestoredRun:
    """Open checkpoint ``step`` (default: the newest readable one) of a run directory on
    the local default device, without the training mesh: a GPU run opens on a laptop CPU.
    """
    run_dir = Path(run_dir)
    cfg = to_config(
        OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(run_dir / "config.yaml"))
    )
    model = init_model(cfg, norm_axis_name=None)
    tx = make_optimizer(cfg.optim, cfg.train.total_steps)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = {
        "params": model.params,
        "rest": model.rest,
        "opt_state": jax.eval_shape(tx.init, model.params),
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "rng": jax.ShapeDtypeStruct((2,), jnp.uint32),
    }
    target = abstract_like(target, sharding=device)
    ckpt = Checkpointer(run_dir / "checkpoints", read_only=True, async_save=False)
    steps = ckpt.all_steps()
    if not steps:
        raise FileNotFoundError(f"no checkpoints in {run_dir / 'checkpoints'}")
    if step is None:
        restored = ckpt.restore_latest(target)
        if restored is None:
            raise RuntimeError(f"no readable checkpoint in {run_dir / 'checkpoints'}")
        step, state, meta = restored
    else:
        if step not in steps:
            raise ValueError(f"no checkpoint at step {step}; available: {steps}")
        state, meta = ckpt.restore(step, target)
    ckpt.close()
    module = nnx.merge(model.graphdef_eval, state["params"], state["rest"])
    return RestoredRun(cfg, step, module, state, meta, steps)
