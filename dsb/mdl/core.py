"""Prequential minimum description length (MDL) of a labelled training split, built on
dsb's trainer: the learning-speed measure of "Slowing Learning by Erasing Simple Features"
(its public code: EleutherAI/mdl).

The data flow (``run_mdl``):

1. The training split, as the trainer samples it (concept-erased when ``data.erasure`` is
   set, the erasure FITTED ONCE ON THE WHOLE SPLIT), is put in a random order
   (``mdl.order_seed``, default the run's seed), cut to its first ``mdl.num_examples``
   when that is set (a random subset; the erasure is still the whole split's). With
   ``mdl.validation: holdout`` (the default) its last ``val_fraction`` is the validation
   set of every prefix model (early stopping only; never coded, so its labels are used
   without being paid for); with ``strict`` nothing is held out. The ``n`` coded
   examples are cut into ``num_chunks`` chunks with log-spaced ends (``chunk_bounds``).
2. Chunk 0 (``first_chunk`` examples) is coded with the uniform code: log2 K bits each.
3. For each j >= 1, a fresh model (a normal dsb run in ``prefix_<j-1>/``, its own seed,
   checkpoints, metrics and resume) trains on chunks 0 .. j-1 (``data.train_indices``)
   with early stopping on the validation set (``train.early_stopping``). ``strict``: the
   validation set is a random ``val_fraction`` of that prefix (at least one example;
   ``prefix_sets``) and the model trains on the rest, so every label it sees was paid for.
   Chunk j is coded with the BEST-VALIDATION model of that run: the cross-entropy in bits
   of each of its examples, measured at the best validation step
   (``early_stopping.json``, ``early_stopping_bits/step_<best>.npz``).
4. MDL = (sum of the code lengths) / n, in bits per sample. Lower: faster learning.
   Random labels give about log2 K; a trivially learnable split approaches
   ``first_chunk * log2 K / n``. ``mdl_code_lengths.npy`` holds every coded example's code
   length (fields ``chunk``, ``index`` into the training split, ``bits``; chunk 0 at
   log2 K): ``math.fsum(table["bits"])`` is ``total_bits`` of ``mdl.json`` exactly, so a
   published number can be audited after the prefix checkpoints are gone.

Every prefix run re-reads the split and takes the same erasure: the first fits it and
caches the erased split (``dsb.data.transforms.cached_erase_split``, keyed by the split's
bytes and every erasure option), the others load it; ``run_mdl`` checks that the
statistics hash recorded in every prefix's ``erasure.json`` is the same. Coded chunks and
the validation set are examples of that same erased split, erased with the same maps as
the training examples.

Resume: a prefix whose ``prefix_<j>/mdl_prefix.json`` exists is finished and is not
retrained; an unfinished one resumes from its newest checkpoint like any run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import numpy as np

from dsb.config import Config

__all__ = [
    "CODE_LENGTHS_DTYPE",
    "CODE_LENGTHS_FILE",
    "MdlResult",
    "chunk_bounds",
    "mdl_from_chunks",
    "mdl_from_code_lengths",
    "mdl_order",
    "prefix_config",
    "prefix_sets",
    "run_mdl",
    "uniform_code_bits",
]

log = logging.getLogger(__name__)

RESULT_FILE = "mdl.json"
PREFIX_MARKER = "mdl_prefix.json"
CODE_LENGTHS_FILE = "mdl_code_lengths.npy"
CODE_LENGTHS_DTYPE = np.dtype([("chunk", np.int32), ("index", np.int64), ("bits", np.float64)])
VALIDATION_MODES = ("holdout", "strict")


def chunk_bounds(n: int, num_chunks: int, first_chunk: int) -> list[int]:
    """Chunk ends ``[0, first_chunk, ..., n]`` (``num_chunks + 1`` strictly increasing
    ints): the ends after the first are log-spaced (``geomspace(first_chunk, n)``, rounded).
    Raises ValueError when ``n`` is too small for that many distinct chunks."""
    if not 1 <= first_chunk < n:
        raise ValueError(f"first_chunk={first_chunk}: must be in [1, {n}) (the coded examples)")
    ends = np.unique(np.round(np.geomspace(first_chunk, n, num_chunks)).astype(int))
    if len(ends) != num_chunks:
        raise ValueError(
            f"{n} coded examples cannot be cut into {num_chunks} distinct log-spaced chunks "
            f"starting at {first_chunk}; use fewer chunks or a larger first chunk"
        )
    return [0, *map(int, ends)]


def uniform_code_bits(num_examples: int, num_classes: int) -> float:
    """Code length in bits of ``num_examples`` labels under the uniform code over K classes."""
    return num_examples * math.log2(num_classes)


@dataclasses.dataclass
class MdlResult:
    """One prequential MDL measurement. ``chunk_bits[j]``: code length of chunk j in bits
    (chunk 0 uniform); ``mdl_bits_per_sample = sum(chunk_bits) / num_coded``."""

    bounds: list[int]
    chunk_bits: list[float]
    num_classes: int
    total_bits: float
    num_coded: int
    mdl_bits_per_sample: float
    best_steps: list[int] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def mdl_from_chunks(bounds: list[int], coded_bits: list[float], num_classes: int) -> MdlResult:
    """``MdlResult`` of chunk ends ``bounds`` and the model code lengths (bits) of chunks
    1 .. C-1 (``coded_bits``; chunk 0 gets the uniform code)."""
    if len(coded_bits) != len(bounds) - 2:
        raise ValueError(f"{len(bounds) - 1} chunks need {len(bounds) - 2} coded lengths")
    chunk_bits = [uniform_code_bits(bounds[1], num_classes), *map(float, coded_bits)]
    total = math.fsum(chunk_bits)
    n = bounds[-1]
    return MdlResult(list(bounds), chunk_bits, num_classes, total, n, total / n)


def mdl_from_code_lengths(table: np.ndarray, num_classes: int) -> MdlResult:
    """``MdlResult`` of a per-example code-length table (``CODE_LENGTHS_DTYPE``, rows in
    chunk order): ``chunk_bits[j] = fsum`` of chunk j's bits, ``total_bits = fsum`` of all
    of them (exactly what an auditor recomputes from ``mdl_code_lengths.npy``)."""
    chunks = table["chunk"]
    if np.any(np.diff(chunks) < 0) or chunks[0] != 0:
        raise ValueError("code-length table: rows must be in chunk order from chunk 0")
    sizes = np.bincount(chunks)
    bounds = [0, *np.cumsum(sizes).tolist()]
    chunk_bits = [math.fsum(table["bits"][chunks == j]) for j in range(len(sizes))]
    total = math.fsum(table["bits"])
    n = len(table)
    return MdlResult(bounds, chunk_bits, num_classes, total, n, total / n)


def _seed(cfg: Config) -> int:
    return cfg.seed if cfg.mdl.order_seed is None else cfg.mdl.order_seed


def mdl_order(cfg: Config, n_split: int) -> tuple[np.ndarray, np.ndarray]:
    """(coded examples in coding order, held-out validation examples): indices into the
    training split. A permutation of the split seeded by ``(seed, 0x3D1)``, cut to its
    first ``mdl.num_examples`` = m (all n_split when null); ``holdout``: the last
    ``max(1, round(val_fraction * m))`` of those are the validation set; ``strict``:
    nothing is held out (the validation set is empty)."""
    perm = np.random.default_rng((_seed(cfg), 0x3D1)).permutation(n_split)
    m = n_split if cfg.mdl.num_examples is None else cfg.mdl.num_examples
    if m > n_split:
        raise ValueError(f"mdl.num_examples={m}: the training split has {n_split} examples")
    perm = perm[:m]
    if cfg.mdl.validation == "strict":
        return perm, perm[:0]
    n_val = max(1, round(cfg.mdl.val_fraction * m))
    return perm[: m - n_val], perm[m - n_val :]


def prefix_sets(
    cfg: Config, coded: np.ndarray, holdout: np.ndarray, bounds: list[int], j: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, next chunk) indices of prefix ``j`` (it codes chunk ``j + 1``).

    ``holdout``: train on ``coded[:bounds[j + 1]]``, validate on ``holdout``. ``strict``:
    the validation set is ``max(1, round(val_fraction * p))`` positions of the prefix
    ``coded[:p]`` (``p = bounds[j + 1]``) drawn without replacement by
    ``default_rng((seed, 0x3D1, j + 1))``; train on the rest of the prefix, in order."""
    hi, nxt = bounds[j + 1], bounds[j + 2]
    prefix, chunk = coded[:hi], coded[hi:nxt]
    if cfg.mdl.validation == "holdout":
        return prefix, holdout, chunk
    n_val = max(1, round(cfg.mdl.val_fraction * hi))
    if n_val >= hi:
        raise ValueError(f"prefix {j}: {hi} examples cannot give {n_val} validation examples")
    rng = np.random.default_rng((_seed(cfg), 0x3D1, j + 1))
    is_val = np.zeros(hi, bool)
    is_val[rng.choice(hi, n_val, replace=False)] = True
    return prefix[~is_val], prefix[is_val], chunk


def prefix_config(cfg: Config, prefix_dir: Path) -> Config:
    """The config of one prefix run: ``cfg`` training on ``prefix_dir``'s index files
    (written by ``run_mdl``) with early stopping on the validation set; no evaluators and
    no figures (the early-stopping metrics are in its metrics.jsonl)."""
    es = dataclasses.replace(
        cfg.train.early_stopping,
        val_indices=str(prefix_dir / "val_indices.npy"),
        report_indices={"next_chunk": str(prefix_dir / "next_chunk_indices.npy")},
    )
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, train_indices=str(prefix_dir / "train_indices.npy")),
        train=dataclasses.replace(cfg.train, early_stopping=es),
        evals={},
        figures=False,
    )


def run_mdl(cfg: Config, out_dir: str | Path, *, after_prefix=None) -> MdlResult:
    """Prequential MDL of ``cfg``'s training split (see the module docstring) in
    ``out_dir``: ``prefix_<j>/`` runs, ``mdl.json`` (the ``MdlResult`` and the settings).
    Finished prefixes (their ``mdl_prefix.json``) are not retrained.
    ``after_prefix(j)``: called after prefix j is finished (tests simulate a kill)."""
    from dsb.run_context import RunContext
    from dsb.train import train

    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(cfg, out, write_reports=False)
    labels = ctx.load_split(cfg.data.train_split)["label"]  # the order needs no erasure
    num_classes = ctx.info.num_classes
    mode = cfg.mdl.validation
    if mode not in VALIDATION_MODES:
        raise ValueError(f"mdl.validation={mode!r}: must be one of {VALIDATION_MODES}")
    coded, holdout = mdl_order(cfg, len(labels))
    bounds = chunk_bounds(len(coded), cfg.mdl.num_chunks, cfg.mdl.first_chunk)
    table = [_rows(0, coded[: bounds[1]], np.full(bounds[1], math.log2(num_classes)))]
    best_steps, num_val, hashes = [], [], set()
    for j in range(len(bounds) - 2):
        d = out / f"prefix_{j}"
        marker = d / PREFIX_MARKER
        train_idx, val_idx, chunk_idx = prefix_sets(cfg, coded, holdout, bounds, j)
        hi, nxt = bounds[j + 1], bounds[j + 2]
        if marker.exists():
            rec = json.loads(marker.read_text())
            if rec["train"] != [0, hi] or rec["coded"] != [hi, nxt]:
                raise ValueError(f"{marker}: written for another chunk schedule: {rec}")
            if rec.get("validation", "holdout") != mode:
                raise ValueError(f"{marker}: written with mdl.validation={rec['validation']}")
            log.info("prefix %d already finished: skipped", j)
        else:
            d.mkdir(exist_ok=True)
            sets = {"train": train_idx, "next_chunk": chunk_idx, "val": val_idx}
            for name, idx in sets.items():
                path = d / f"{name}_indices.npy"
                # An unfinished prefix resumes its checkpoints: only on the same sets.
                if path.exists() and not np.array_equal(np.load(path), idx):
                    raise ValueError(
                        f"{path}: an unfinished prefix with other {name} indices (another "
                        "mdl.validation, val_fraction or order?); use another directory"
                    )
                np.save(path, idx)
            log.info(
                "prefix %d: training on %d examples (validation %d, %s), coding %d",
                j, len(train_idx), len(val_idx), mode, nxt - hi,
            )  # fmt: skip
            train(prefix_config(cfg, d), d)
            es = json.loads((d / "early_stopping.json").read_text())
            best = es["best"]
            rec = {
                "train": [0, hi],
                "coded": [hi, nxt],
                "validation": mode,
                "num_train": len(train_idx),
                "num_val": len(val_idx),
                "code_bits": best["next_chunk/sum_bits"],
                "best_step": best["step"],
                "best_val_loss": best["val/loss"],
            }
            if (d / "erasure.json").exists():
                rec["erasure_stats_hash"] = json.loads((d / "erasure.json").read_text())[
                    "stats_hash"
                ]
            marker.write_text(json.dumps(rec, indent=1))
        table.append(_rows(j + 1, chunk_idx, _chunk_bits(d, rec, chunk_idx)))
        best_steps.append(rec["best_step"])
        num_val.append(len(val_idx))
        if "erasure_stats_hash" in rec:
            hashes.add(rec["erasure_stats_hash"])
        if after_prefix is not None:
            after_prefix(j)
    if len(hashes) > 1:
        raise RuntimeError(f"prefix runs fitted different erasures (stats hashes {hashes})")
    table = np.concatenate(table)
    np.save(out / CODE_LENGTHS_FILE, table)
    result = mdl_from_code_lengths(table, num_classes)
    result.best_steps = best_steps
    record = {
        **result.to_dict(),
        "units": "bits per sample",
        "erasure": cfg.data.erasure,
        "erasure_shrinkage": cfg.data.erasure_shrinkage,
        "dataset": cfg.data.name,
        "model": cfg.model.name,
        "seed": cfg.seed,
        "validation": mode,
        "split_size": len(labels),
        "num_examples": len(coded) + len(holdout),
        # holdout: the one held-out set's size; strict: each prefix's validation size.
        "num_val": len(holdout) if mode == "holdout" else num_val,
        "log2_num_classes": math.log2(num_classes),
        "code_lengths_file": CODE_LENGTHS_FILE,
    }
    (out / RESULT_FILE).write_text(json.dumps(record, indent=1))
    log.info(
        "MDL: %.4f bits per sample (%s, validation %s)",
        result.mdl_bits_per_sample, cfg.data.erasure, mode,
    )  # fmt: skip
    return result


def _rows(chunk: int, indices: np.ndarray, bits: np.ndarray) -> np.ndarray:
    rows = np.empty(len(indices), CODE_LENGTHS_DTYPE)
    rows["chunk"], rows["index"], rows["bits"] = chunk, indices, bits
    return rows


def _chunk_bits(prefix_dir: Path, rec: dict, chunk_idx: np.ndarray) -> np.ndarray:
    """Per-example code lengths (bits) of the chunk a finished prefix coded, read from its
    best-validation step's ``early_stopping_bits`` file and checked against the marker."""
    from dsb.early_stopping import report_bits_path

    path = report_bits_path(prefix_dir, rec["best_step"])
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: missing (a prefix finished before per-example code lengths were "
            f"saved?); delete {prefix_dir / PREFIX_MARKER} to retrain and recode it"
        )
    with np.load(path) as f:
        idx, bits = f["next_chunk_indices"], f["next_chunk_bits"]
    if not np.array_equal(idx, chunk_idx):
        raise ValueError(f"{path}: coded other examples than the chunk of {prefix_dir}")
    if not math.isclose(math.fsum(bits), rec["code_bits"], rel_tol=1e-12):
        raise ValueError(f"{path}: sums to {math.fsum(bits)} bits, the marker says {rec}")
    return bits
