"""Typed configuration schemas.

Hydra composes YAML from ``conf/`` on top of these dataclasses (registered in the
ConfigStore as ``dsb_schema``), so a wrong key or a wrong value type fails at composition,
before any compute, with the full key in the message. ``to_config`` turns the composed
``DictConfig`` into these plain dataclasses and runs the semantic checks that types alone
cannot express; JAX code only ever sees the result.

Keys carry units: ``*_steps`` count optimizer updates.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

__all__ = [
    "AugmentConfig",
    "CheckpointConfig",
    "Config",
    "DataConfig",
    "LoggingConfig",
    "ModelConfig",
    "OptimConfig",
    "ParallelConfig",
    "SyntheticConfig",
    "TextConfig",
    "TrainConfig",
    "compose",
    "read_run_config",
    "register_schemas",
    "to_config",
    "validate",
]


@dataclass
class ModelConfig:
    name: str = "mlp"
    # Constructor hyperparameters of the registered model, checked against its signature.
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Compute dtype; parameters are always float32.
    dtype: str = "float32"


@dataclass
class AugmentConfig:
    # Random crop after zero-padding by this many pixels per side (0 = off).
    crop_padding: int = 0
    horizontal_flip: bool = False
    # RandAugment: operations per image (0 = off) and magnitude M in [0, 30].
    randaugment_num_ops: int = 0
    randaugment_magnitude: float = 9.0


@dataclass
class TextConfig:
    """Options of text datasets (``data.name=text``); ignored by image datasets."""

    # "default" (the embedded corpus), "files" (``paths``), or "tfds:<name>".
    source: str = "default"
    paths: list[str] = field(default_factory=list)
    tokenizer: str = "byte"  # byte | bpe
    # Vocabulary size of a BPE tokenizer trained on the corpus (byte-level: always 256).
    vocab_size: int = 1024
    # Tokens per training window (the model's context); a window gives context_length - 1
    # next-token targets.
    context_length: int = 128
    val_fraction: float = 0.1
    # Where the tokenized corpus is cached (None: ~/.cache/dsb/corpora/<hash of options>).
    corpus_dir: str | None = None


@dataclass
class SyntheticConfig:
    """Train on a synthetic set built from the training split's class statistics instead of
    the split itself; evaluation splits stay real (``dsb.data.synthetic``).

    The set is a DSB probe set of the same builders and on-disk cache as the ``dsb_probes``
    evaluator: a max-ent set (labels: the class it was drawn from) or an OT-edited set of
    training images (labels: the TARGET class t of each edit, drawn uniformly from the
    other classes; the source class is not used). ``<run dir>/synthetic_set.json`` holds
    its achieved moment errors.
    """

    # null (off) | maxent | ot.
    kind: str | None = None
    # The set: a name in dsb.stats.probesets.MAXENT_SETS (ics, box1, gaussian, truncnorm,
    # box2, box3) or OT_SETS (cqn, mean_shift, gaussian).
    set: str = "gaussian"
    # Size of the set; null: the size of the training split. An OT set edits at most the
    # whole split.
    num_samples: int | None = None
    # Fixes the samples and labels (OT: the edited images and their targets).
    seed: int = 0
    # Options of the set, by the dsb_probes option names its kind takes (clip,
    # particle_steps, gibbs_sweeps, truncnorm_ridge); others fail at validation.
    options: dict[str, Any] = field(default_factory=dict)
    # Class-covariance shrinkage [a, b] of the fitted statistics (as dsb_probes.shrinkage).
    shrinkage: list[float] | None = None
    # Cache directory of the built set, as the dsb_probes evaluator's cache_dir (and shared
    # with it): null: the user's probe-set cache ($DSB_PROBE_CACHE, else
    # ~/.cache/dsb/probe_sets); "data_dir": <data.data_dir>/dsb_probe_sets; "none": no cache.
    cache_dir: str | None = None


@dataclass
class DataConfig:
    # A name registered in dsb.data.registry (digits, mnist, fashion_mnist, cifar10, ...).
    name: str = "digits"
    # TFDS data directory; None means TFDS's default (~/tensorflow_datasets or $TFDS_DATA_DIR).
    data_dir: str | None = None
    train_split: str = "train"
    eval_split: str = "test"
    # Global batch size, summed over every device and host.
    batch_size: int = 128
    # Seed of the shuffling order (independent of the model seed).
    shuffle_seed: int = 0
    # False: draw one permutation and visit the same minibatches in the same order every
    # epoch (the training-Jacobian reference recipe).
    reshuffle_each_epoch: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Train-time concept erasure of the training split (evaluation splits stay real unless
    # erase_eval_splits):
    # null, "leace" (class means made equal) or "qleace" (means and covariances equal,
    # exactly, also for singular image covariances: OT maps on the common support of the
    # class covariances, the rest replaced class-independently; dsb/stats/erasure.py).
    # <run dir>/erasure.json records the residuals and checks them against 1e-6.
    erasure: str | None = None
    # Class-covariance shrinkage (a, b): a S_y + b (tr S_y / d) I. null (default): the raw
    # covariances, exact erasure. With shrinkage QLEACE is approximate (its maps are exact
    # for the shrunk covariances only; erasure.json flags the covariance residual) and
    # LEACE uses another metric (same equal class means, a different least change).
    # concept-erasure's LEACE default shrinks the total covariance S (n samples, t = tr S)
    # to alpha S + (1 - alpha)(t / d) I, alpha = 1 - t^2 / (n (||S||_F^2 - t^2 / d)); dsb
    # reproduces it exactly with [1, (1 - alpha) t / (alpha tr W)], W the prior-weighted
    # within-class covariance (data-dependent: dsb.stats.erasure.concept_erasure_shrinkage).
    erasure_shrinkage: list[float] | None = None
    # Evaluate on erased data too: every split other than train_split (the classification
    # evaluators' val/test) goes through the maps fitted on the training split, each example
    # by its own label's map. Off (default): evaluation splits stay real, so an erased run
    # is scored on the real distribution (after QLEACE on digits: 0.02 accuracy).
    erase_eval_splits: bool = False
    # Train on a subset of the training split as sampled: a .npy file of distinct int
    # indices into it, taken AFTER erasure, so the erasure is still fitted on the whole
    # split (dsb.mdl's prefix runs share one set of maps this way). null: the whole split.
    train_indices: str | None = None
    # Train on a synthetic max-ent or OT-edited set instead of the training split
    # (SyntheticConfig; off by default). data.train_indices then index the synthetic set.
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    text: TextConfig = field(default_factory=TextConfig)


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd (dsb.optim.OPTIMIZERS)
    learning_rate: float = 1e-3
    schedule: str = "constant"  # constant | cosine | warmup_cosine (dsb.optim.SCHEDULES)
    warmup_steps: int = 0
    # Cosine schedules decay to learning_rate * final_lr_fraction.
    final_lr_fraction: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    momentum: float = 0.0
    nesterov: bool = False
    # Clip the global gradient norm to this value; null disables clipping.
    grad_clip_norm: float | None = None


@dataclass
class ParallelConfig:
    # Call jax.distributed.initialize() before touching devices (multi-host runs;
    # on SLURM, Open MPI and TPU pods JAX discovers the three keys below by itself).
    distributed: bool = False
    # "host:port" of process 0's coordinator (null: $JAX_COORDINATOR_ADDRESS, else
    # detected); every process passes the same one.
    coordinator_address: str | None = None
    # How many processes, and which one this is (0 .. num_processes - 1); null:
    # $JAX_NUM_PROCESSES / $JAX_PROCESS_ID, else detected.
    num_processes: int | None = None
    process_id: int | None = None
    # Use only the first N devices (None = every device of every host).
    num_devices: int | None = None


@dataclass
class CheckpointConfig:
    # Save at steps 0, 1, 2, 4, ..., 2^k and at the last step.
    log_spaced: bool = True
    # Also save every N steps (None = off); only the latest `keep_interval` of these are kept.
    every_steps: int | None = None
    keep_interval: int = 2
    async_save: bool = True
    # Verify each array's crc32, recorded at save, when a checkpoint is restored.
    verify_checksums: bool = True
    # What one invocation does with an existing run directory (dsb/rundir.py; never part
    # of the run's recorded config):
    # resume from this checkpoint step; later checkpoints and metrics lines are moved to
    # <run dir>/discarded/<time>/ and the rewind is recorded in history.jsonl.
    resume_step: int | None = None
    # Resume although the config differs from config.yaml in keys that change computed
    # numbers; the change is recorded in history.jsonl with the step it took effect.
    allow_config_change: bool = False
    # Move everything the run wrote to <run dir>/discarded/<time>/ and train from step 0.
    start_over: bool = False


@dataclass
class EarlyStoppingConfig:
    """Early stopping on held-out examples of the training split as sampled (erased with
    the same maps as the training examples when ``data.erasure`` is set).

    Off unless ``val_indices`` is set. At every checkpoint step the mean cross-entropy
    (nats) of the validation examples is measured; the run stops after ``patience``
    checkpoint evaluations in a row without a decrease of more than ``min_delta`` below
    the best so far. ``<run dir>/early_stopping.json`` records the history, the best
    step, and the ``report_indices`` losses measured AT THE BEST VALIDATION STEP (the
    best-validation model, not the last one): that is how dsb.mdl codes a chunk.
    """

    # .npy of int indices into the training split (disjoint from data.train_indices);
    # null: no early stopping (the default; runs train for train.total_steps).
    val_indices: str | None = None
    # Checkpoint evaluations without improvement before stopping (>= 1).
    patience: int = 5
    # Improvement needed to reset the patience counter, in nats per example (>= 0).
    min_delta: float = 0.0
    # Further held-out subsets {name: .npy of indices into the training split} whose
    # summed cross-entropy (bits) and mean loss (nats) are measured with the validation set.
    report_indices: dict[str, str] = field(default_factory=dict)


@dataclass
class TrainConfig:
    total_steps: int = 4096
    # Print/write training metrics every N steps.
    log_every_steps: int = 64
    progress_bar: bool = True
    # Evaluation batch size (global); evaluation sets of any size are padded to it.
    eval_batch_size: int = 1024
    # Most optimizer steps dispatched but not finished: the loop waits for step s - N to
    # finish before it dispatches step s. An unbounded queue deadlocks XLA:CPU with
    # several devices (dsb/train.py explains why); on accelerators it only holds more
    # batches in device memory. A few steps in flight hide the host's dispatch time
    # whenever a step takes longer than dispatching one.
    max_steps_in_flight: int = 4
    # The per-example training loss (dsb.losses.LOSSES): cross_entropy, or mse (the square
    # loss of the edge-of-stability experiments). Evaluators report cross-entropy anyway.
    loss: str = "cross_entropy"
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)


@dataclass
class MdlConfig:
    """Prequential MDL (``python -m dsb.mdl``; ignored by ``dsb.main``). The training
    split, shuffled with ``order_seed``, is cut into ``num_chunks`` log-spaced chunks;
    chunk 0 (``first_chunk`` examples) is coded uniformly (log2 K bits each), chunk
    j >= 1 by a fresh model trained on chunks 0 .. j-1 with early stopping on a validation
    set (see dsb/mdl/core.py). ``validation`` says where that set comes from:
    ``holdout``: a tail of the split (``val_fraction`` of it), shared by every prefix and
    never coded (its labels are used but not paid for); ``strict``: ``val_fraction`` of
    each prefix, carved out of the prefix (every label used is paid for; the whole split
    is coded, and each model trains on the rest of its prefix)."""

    num_chunks: int = 10
    # Examples in the first (uniformly coded) chunk; the chunk ends are log-spaced from
    # it to the number of coded examples.
    first_chunk: int = 16
    # holdout | strict: where the early-stopping validation set comes from (docstring).
    validation: str = "holdout"
    # Fraction held out for early stopping: of the training split (holdout) or of each
    # prefix (strict; at least one example).
    val_fraction: float = 0.1
    # Seed of the order of the examples; null: the run's ``seed``.
    order_seed: int | None = None
    # Measure on a random subset of this many examples of the training split (the first
    # ones of the shuffled order; held-out validation included): the erasure is still
    # fitted on the whole split, as a training run's is. null: the whole split.
    num_examples: int | None = None


@dataclass
class LoggingConfig:
    """Where metrics go besides ``metrics.jsonl`` (always written; the source of truth)."""

    # TensorBoard event files in <run dir>/tensorboard/.
    tensorboard: bool = True
    # Also send every metrics.jsonl record to Weights & Biases; needs the extra
    # `pip install -e '.[wandb]'`. A resumed run continues the same W&B run.
    wandb: bool = False
    wandb_project: str = "dsb"
    # W&B user or team; null: the default entity of the logged-in account.
    wandb_entity: str | None = None
    # online | offline (sync later with `wandb sync <run dir>/wandb/offline-run-*`) |
    # disabled (W&B is not called at all) | null: W&B's default, the WANDB_MODE
    # environment variable or else online. (Values set here win over WANDB_* variables.)
    wandb_mode: str | None = None
    wandb_tags: list[str] = field(default_factory=list)
    # Display name of the W&B run; null: the run directory's name.
    wandb_name: str | None = None
    # W&B group, e.g. one per sweep; null: no group.
    wandb_group: str | None = None


@dataclass
class Config:
    name: str = "default"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    ckpt: CheckpointConfig = field(default_factory=CheckpointConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Evaluators run at every checkpoint: {key: {type: <registered type>, **options}}.
    evals: dict[str, Any] = field(default_factory=dict)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    mdl: MdlConfig = field(default_factory=MdlConfig)
    # Write PNG figures at the end of the run.
    figures: bool = True


CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def register_schemas() -> None:
    ConfigStore.instance().store(name="dsb_schema", node=Config)


def compose(overrides: list[str] | None = None, config_name: str = "config", **kw) -> DictConfig:
    """The composed Hydra config of ``conf/`` with command-line style ``overrides``, for
    scripts and notebooks that train without ``@hydra.main``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_schemas()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides or [], **kw)


_CHOICES = {
    "model.dtype": ("float32", "bfloat16", "float16"),
    "data.text.tokenizer": ("byte", "bpe"),
}
_WANDB_MODES = ("online", "offline", "disabled")


WANDB_EXTRA_HINT = "pip install -e '.[wandb]'"


def import_wandb():
    """The ``wandb`` module, or an ImportError that names the extra to install."""
    try:
        import wandb
    except ImportError as e:
        raise ImportError(
            f"logging.wandb=true needs the wandb package, which is not installed: "
            f"{WANDB_EXTRA_HINT} (or pip install wandb), or set logging.wandb=false"
        ) from e
    return wandb


def validate(cfg: Config) -> None:
    """Semantic checks beyond types; raise ValueError naming the offending key."""
    from dsb.data.registry import get_dataset_spec
    from dsb.evals.base import check_evaluator_options, split_entry
    from dsb.models.registry import check_model_kwargs
    from dsb.optim import OPTIMIZERS, SCHEDULES
    from dsb.schedule import Schedule, check_when

    for key, allowed in _CHOICES.items():
        *path, attr = key.split(".")
        node = cfg
        for part in path:
            node = getattr(node, part)
        value = getattr(node, attr)
        if value not in allowed:
            raise ValueError(f"{key}={value!r}: must be one of {', '.join(allowed)}")
    OPTIMIZERS.get(cfg.optim.name)  # raise on unknown names, naming the key
    SCHEDULES.get(cfg.optim.schedule)
    if cfg.logging.wandb_mode is not None and cfg.logging.wandb_mode not in _WANDB_MODES:
        raise ValueError(
            f"logging.wandb_mode={cfg.logging.wandb_mode!r}: must be null or one of "
            f"{', '.join(_WANDB_MODES)}"
        )
    positive = {
        "train.total_steps": cfg.train.total_steps,
        "train.log_every_steps": cfg.train.log_every_steps,
        "train.eval_batch_size": cfg.train.eval_batch_size,
        "train.max_steps_in_flight": cfg.train.max_steps_in_flight,
        "data.batch_size": cfg.data.batch_size,
        "optim.learning_rate": cfg.optim.learning_rate,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ValueError(f"{key}={value}: must be positive")
    from dsb.losses import LOSSES

    LOSSES.get(cfg.train.loss)  # an unknown name fails here, naming train.loss
    if (
        cfg.optim.schedule == "warmup_cosine"
        and not 0 < cfg.optim.warmup_steps < cfg.train.total_steps
    ):
        raise ValueError(
            f"optim.warmup_steps={cfg.optim.warmup_steps}: warmup_cosine needs "
            f"0 < warmup_steps < train.total_steps={cfg.train.total_steps}"
        )
    if cfg.optim.grad_clip_norm is not None and cfg.optim.grad_clip_norm <= 0:
        raise ValueError(
            f"optim.grad_clip_norm={cfg.optim.grad_clip_norm}: must be positive or null"
        )
    par = cfg.parallel
    for key in ("coordinator_address", "num_processes", "process_id"):
        if getattr(par, key) is not None and not par.distributed:
            raise ValueError(
                f"parallel.{key}={getattr(par, key)!r}: needs parallel.distributed=true "
                "(parallel=multihost)"
            )
    if par.num_processes is not None and par.num_processes <= 0:
        raise ValueError(f"parallel.num_processes={par.num_processes}: must be positive")
    if par.process_id is not None and not (
        0 <= par.process_id < (par.num_processes or par.process_id + 1)
    ):
        raise ValueError(
            f"parallel.process_id={par.process_id}: must be in 0 .. num_processes - 1 "
            f"(parallel.num_processes={par.num_processes})"
        )
    if cfg.ckpt.resume_step is not None and cfg.ckpt.resume_step < 0:
        raise ValueError(f"ckpt.resume_step={cfg.ckpt.resume_step}: must be >= 0 or null")
    if cfg.ckpt.resume_step is not None and cfg.ckpt.start_over:
        raise ValueError("ckpt.resume_step and ckpt.start_over=true: choose one")
    if cfg.ckpt.every_steps is not None and cfg.ckpt.every_steps <= 0:
        raise ValueError(f"ckpt.every_steps={cfg.ckpt.every_steps}: must be positive or null")
    if (
        cfg.data.augment.randaugment_num_ops < 0
        or not 0 <= cfg.data.augment.randaugment_magnitude <= 30
    ):
        raise ValueError("data.augment.randaugment_*: num_ops >= 0 and 0 <= magnitude <= 30")
    if cfg.data.augment.crop_padding < 0:
        raise ValueError(f"data.augment.crop_padding={cfg.data.augment.crop_padding}: must be >= 0")
    if cfg.data.erasure not in (None, "leace", "qleace"):
        raise ValueError(f"data.erasure={cfg.data.erasure!r}: must be null, leace or qleace")
    if cfg.data.erasure_shrinkage is not None and len(cfg.data.erasure_shrinkage) != 2:
        raise ValueError("data.erasure_shrinkage: must be null or [a, b]")
    if cfg.data.erase_eval_splits and not cfg.data.erasure:
        raise ValueError("data.erase_eval_splits=true: needs data.erasure (leace or qleace)")
    if cfg.mdl.num_chunks < 2:
        raise ValueError(f"mdl.num_chunks={cfg.mdl.num_chunks}: must be >= 2")
    if cfg.mdl.first_chunk < 1:
        raise ValueError(f"mdl.first_chunk={cfg.mdl.first_chunk}: must be >= 1")
    if cfg.mdl.num_examples is not None and cfg.mdl.num_examples < 2:
        raise ValueError(f"mdl.num_examples={cfg.mdl.num_examples}: must be null or >= 2")
    if not 0 < cfg.mdl.val_fraction < 1:
        raise ValueError(f"mdl.val_fraction={cfg.mdl.val_fraction}: must be in (0, 1)")
    if cfg.mdl.validation not in ("holdout", "strict"):
        raise ValueError(f"mdl.validation={cfg.mdl.validation!r}: must be holdout or strict")
    if cfg.mdl.validation == "strict" and cfg.mdl.first_chunk < 2:
        raise ValueError(
            "mdl.first_chunk: must be >= 2 with mdl.validation=strict (the first prefix "
            "needs a training and a validation example)"
        )
    es = cfg.train.early_stopping
    if es.patience < 1:
        raise ValueError(f"train.early_stopping.patience={es.patience}: must be >= 1")
    if es.min_delta < 0:
        raise ValueError(f"train.early_stopping.min_delta={es.min_delta}: must be >= 0")
    if es.report_indices and es.val_indices is None:
        raise ValueError("train.early_stopping.report_indices: needs val_indices")
    spec = get_dataset_spec(cfg.data.name)  # raises on unknown names
    if cfg.data.synthetic.kind is not None:
        from dsb.data.synthetic import check_synthetic

        if spec.kind == "text":
            raise ValueError("data.synthetic: synthetic training sets are for image datasets")
        if cfg.data.erasure:
            raise ValueError("data.synthetic and data.erasure: choose one")
        check_synthetic(cfg.data.synthetic)
    if spec.kind == "text":
        if cfg.data.text.context_length < 2:
            raise ValueError(
                f"data.text.context_length={cfg.data.text.context_length}: must be >= 2"
            )
        if cfg.data.text.source == "files" and not cfg.data.text.paths:
            raise ValueError("data.text.paths: source 'files' needs at least one path")
        if cfg.data.erasure:
            raise ValueError("data.erasure: concept erasure applies to image datasets only")
        if cfg.data.train_indices or cfg.train.early_stopping.val_indices:
            raise ValueError("data.train_indices / train.early_stopping: image datasets only")
        if (
            cfg.data.augment.crop_padding
            or cfg.data.augment.horizontal_flip
            or cfg.data.augment.randaugment_num_ops
        ):
            raise ValueError("data.augment: image augmentation does not apply to text data")
    if cfg.logging.wandb and cfg.logging.wandb_mode != "disabled":
        try:
            import_wandb()
        except ImportError as e:
            raise ValueError(str(e)) from e
    check_model_kwargs(cfg.model.name, cfg.model.kwargs)
    checkpoints = Schedule.from_config(cfg).checkpoints
    for key, entry in cfg.evals.items():
        type_name, when, options = split_entry(key, entry)
        check_when(key, when, checkpoints)
        check_evaluator_options(key, type_name, options)


def to_config(cfg: DictConfig | Config) -> Config:
    """Composed Hydra config -> validated ``Config`` dataclass with plain Python values."""
    if isinstance(cfg, DictConfig):
        obj = OmegaConf.to_object(cfg)
        # Containers typed Any come back as DictConfig/ListConfig under some Hydra versions.
        syn = dataclasses.replace(obj.data.synthetic, options=_plain(obj.data.synthetic.options))
        obj = dataclasses.replace(
            obj,
            evals={k: _plain(v) for k, v in obj.evals.items()},
            model=dataclasses.replace(obj.model, kwargs=_plain(obj.model.kwargs)),
            data=dataclasses.replace(obj.data, synthetic=syn),
        )
    else:
        obj = cfg
    validate(obj)
    return obj


def _plain(value: Any) -> Any:
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def read_run_config(run_dir: str | Path, *, raw: bool = False) -> Config | dict[str, Any]:
    """The config a run directory was written with (``<run_dir>/config.yaml``): the
    validated ``Config``, or with ``raw=True`` the file's plain nested dict, unvalidated and
    with interpolations unresolved (for readers of many, possibly old or half-written, run
    directories, such as ``dsb.aggregate`` and the figure code). Every reader of a run's
    config goes through here."""
    loaded = OmegaConf.load(Path(run_dir) / "config.yaml")
    if raw:
        return OmegaConf.to_container(loaded, resolve=False)
    return to_config(OmegaConf.merge(OmegaConf.structured(Config), loaded))
