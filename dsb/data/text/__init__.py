"""Text datasets for language models: a tokenized corpus cut into fixed windows.

``data.name=text`` with ``data.text.*`` options. The corpus (embedded default, text files
or a prepared TFDS text set) is tokenized once into ``data.text.corpus_dir`` (default: a
cache directory named by a hash of the options) and each split is cut into
non-overlapping windows of ``context_length`` tokens: ``{"tokens": [n, t] int32}``.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np

from dsb.config import TextConfig

__all__ = ["corpus_dir", "load_text_split", "prepare", "vocab_size"]


def corpus_dir(cfg: TextConfig) -> Path:
    if cfg.corpus_dir:
        return Path(cfg.corpus_dir)
    options = {
        k: getattr(cfg, k) for k in ("source", "paths", "tokenizer", "vocab_size", "val_fraction")
    }
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "dsb" / "corpora" / digest


def _source_options(cfg: TextConfig) -> tuple[str, dict]:
    if cfg.source == "default":
        return "default", {}
    if cfg.source == "files":
        return "files", {"paths": list(cfg.paths)}
    if cfg.source.startswith("tfds:"):
        return "tfds", {"name": cfg.source.split(":", 1)[1]}
    raise ValueError(f"data.text.source={cfg.source!r}: use 'default', 'files' or 'tfds:<name>'")


@functools.lru_cache(maxsize=4)
def _prepare(cfg_key: str):
    from dsb.data.text.windows import prepare_text_corpus

    cfg = TextConfig(**json.loads(cfg_key))
    source, options = _source_options(cfg)
    return prepare_text_corpus(
        corpus_dir(cfg),
        source,
        tokenizer=cfg.tokenizer,
        vocab_size=256 if cfg.tokenizer == "byte" else cfg.vocab_size,
        val_fraction=cfg.val_fraction,
        **options,
    )


def prepare(cfg: TextConfig):
    """The tokenized corpus of ``cfg`` (a ``dsb.data.text.windows.TokenCorpus``), built once."""
    import dataclasses

    return _prepare(json.dumps(dataclasses.asdict(cfg), sort_keys=True))


def vocab_size(cfg: TextConfig) -> int:
    return prepare(cfg).vocab_size


def load_text_split(cfg: TextConfig, split: str) -> dict[str, np.ndarray]:
    corpus = prepare(cfg)
    if split not in ("train", "val"):
        raise ValueError(f"text datasets have splits 'train' and 'val', not {split!r}")
    windows = corpus.windows(split, cfg.context_length).all()
    return {"tokens": np.asarray(windows, np.int32)}
