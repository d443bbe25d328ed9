"""Prequential minimum description length (MDL) of a labelled training split, built on
dsb's trainer: the learning-speed measure of "Slowing Learning by Erasing Simple Features"
(its public code: EleutherAI/mdl).

The data flow (``run_mdl``):

1. The training split, as the trainer samples it (concept-erased when ``data.erasure`` is
   set, the erasure FITTED ONCE ON THE WHOLE SPLIT), is put in a random order
   (``mdl.order_seed``, default the run's seed). Its last ``val_fraction`` is the
   validation set of every prefix model (early stopping only; never coded); the other
   ``n`` examples are cut into ``num_chunks`` chunks with log-spaced ends
   (``chunk_bounds``).
2. Chunk 0 (``first_chunk`` examples) is coded with the uniform code: log2 K bits each.
3. For each j >= 1, a fresh model (a normal dsb run in ``prefix_<j-1>/``, its own seed,
   checkpoints, metrics and resume) trains on chunks 0 .. j-1 (``data.train_indices``)
   with early stopping on the validation set (``train.early_stopping``); chunk j is coded
   with the BEST-VALIDATION model of that run: its summed cross-entropy in bits, measured
   at the best validation step (``early_stopping.json``).
4. MDL = (sum of the chunk code lengths) / n, in bits per sample. Lower: faster learning.
   Random labels give about log2 K; a trivially learnable split approaches
   ``first_chunk * log2 K / n``.

Every prefix run re-reads the split and refits the same erasure (deterministic: the same
float64 statistics of the same examples, so the same maps; ``run_mdl`` checks that the
statistics hash recorded in every prefix's ``erasure.json`` is the same). Coded chunks and
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
    "MdlResult",
    "chunk_bounds",
    "mdl_from_chunks",
    "prefix_config",
    "run_mdl",
    "uniform_code_bits",
]

log = logging.getLogger(__name__)

RESULT_FILE = "mdl.json"
PREFIX_MARKER = "mdl_prefix.json"


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
    total = float(sum(chunk_bits))
    n = bounds[-1]
    return MdlResult(list(bounds), chunk_bits, num_classes, total, n, total / n)


def _order(cfg: Config, n_split: int) -> tuple[np.ndarray, np.ndarray]:
    """(coded examples in order, validation examples): indices into the training split."""
    seed = cfg.seed if cfg.mdl.order_seed is None else cfg.mdl.order_seed
    perm = np.random.default_rng((seed, 0x3D1)).permutation(n_split)
    n_val = max(1, round(cfg.mdl.val_fraction * n_split))
    return perm[: n_split - n_val], perm[n_split - n_val :]


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
    coded, val = _order(cfg, len(labels))
    bounds = chunk_bounds(len(coded), cfg.mdl.num_chunks, cfg.mdl.first_chunk)
    coded_bits, best_steps, hashes = [], [], set()
    for j in range(len(bounds) - 2):
        d = out / f"prefix_{j}"
        marker = d / PREFIX_MARKER
        lo, hi, nxt = 0, bounds[j + 1], bounds[j + 2]
        if marker.exists():
            rec = json.loads(marker.read_text())
            if rec["train"] != [lo, hi] or rec["coded"] != [hi, nxt]:
                raise ValueError(f"{marker}: written for another chunk schedule: {rec}")
            log.info("prefix %d already finished: skipped", j)
        else:
            d.mkdir(exist_ok=True)
            np.save(d / "train_indices.npy", coded[lo:hi])
            np.save(d / "next_chunk_indices.npy", coded[hi:nxt])
            np.save(d / "val_indices.npy", val)
            log.info("prefix %d: training on %d examples, coding %d", j, hi, nxt - hi)
            train(prefix_config(cfg, d), d)
            es = json.loads((d / "early_stopping.json").read_text())
            best = es["best"]
            rec = {
                "train": [lo, hi],
                "coded": [hi, nxt],
                "code_bits": best["next_chunk/sum_bits"],
                "best_step": best["step"],
                "best_val_loss": best["val/loss"],
            }
            if (d / "erasure.json").exists():
                rec["erasure_stats_hash"] = json.loads((d / "erasure.json").read_text())[
                    "stats_hash"
                ]
            marker.write_text(json.dumps(rec, indent=1))
        coded_bits.append(rec["code_bits"])
        best_steps.append(rec["best_step"])
        if "erasure_stats_hash" in rec:
            hashes.add(rec["erasure_stats_hash"])
        if after_prefix is not None:
            after_prefix(j)
    if len(hashes) > 1:
        raise RuntimeError(f"prefix runs fitted different erasures (stats hashes {hashes})")
    result = mdl_from_chunks(bounds, coded_bits, num_classes)
    result.best_steps = best_steps
    record = {
        **result.to_dict(),
        "units": "bits per sample",
        "erasure": cfg.data.erasure,
        "erasure_shrinkage": cfg.data.erasure_shrinkage,
        "dataset": cfg.data.name,
        "model": cfg.model.name,
        "seed": cfg.seed,
        "num_val": len(val),
        "log2_num_classes": math.log2(num_classes),
    }
    (out / RESULT_FILE).write_text(json.dumps(record, indent=1))
    log.info("MDL: %.4f bits per sample (%s)", result.mdl_bits_per_sample, cfg.data.erasure)
    return result
