"""Tokenized corpora as flat token arrays, and deterministic, resumable windows.

A prepared corpus is a directory::

    tokenizer.json   the tokenizer (``dsb.data.text.tokenizers.load_tokenizer``)
    train.npy        flat token array, uint16 if the vocab fits, else int32
    val.npy          flat token array (the tail of the shuffled document stream)
    meta.json        vocab size, token counts, the options and the source's provenance

Arrays are opened as read-only memory maps. The trainer, though, reads every window of a
split into host memory (``dsb.data.text.load_text_split``, like the image datasets), so a
corpus must fit in RAM to train on it.

Windows: window ``i`` of a flat array is ``tokens[i * stride : i * stride + seq_len]``
(``stride = seq_len`` by default: non-overlapping). A model sees the whole window; its
logits at position ``t`` predict token ``t + 1``, so a window of ``seq_len`` tokens gives
``seq_len - 1`` next-token targets. Batches of windows come from the trainer's
``dsb.data.loader.BatchSampler``, like image batches.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dsb.data.text.tokenizers import load_tokenizer, train_tokenizer

__all__ = [
    "TokenCorpus",
    "Windows",
    "encode_documents",
    "load_tokens",
    "prepare_corpus",
    "prepare_text_corpus",
    "save_tokens",
    "token_dtype",
]

SEPARATOR = "\n\n"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.int32)


def save_tokens(path: str | Path, tokens: np.ndarray, vocab_size: int) -> None:
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"token ids outside [0, {vocab_size})")
    np.save(path, tokens.astype(token_dtype(vocab_size)), allow_pickle=False)


def load_tokens(path: str | Path) -> np.ndarray:
    """A read-only memory map of a flat token array."""
    return np.load(path, mmap_mode="r", allow_pickle=False)


def encode_documents(documents: Sequence[str], tokenizer) -> np.ndarray:
    """Concatenate ``doc + SEPARATOR`` for each document into one int32 token stream."""
    texts = [doc + SEPARATOR for doc in documents]
    if hasattr(tokenizer, "encode_batch"):
        parts = tokenizer.encode_batch(texts)
    else:
        parts = [tokenizer.encode(t) for t in texts]
    return np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)


@dataclasses.dataclass(frozen=True)
class TokenCorpus:
    """A prepared corpus directory (see the module docstring)."""

    path: Path

    @property
    def meta(self) -> dict:
        return json.loads((self.path / "meta.json").read_text())

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def tokenizer(self):
        return load_tokenizer(self.path / "tokenizer.json")

    def tokens(self, split: str) -> np.ndarray:
        return load_tokens(self.path / f"{split}.npy")

    def windows(self, split: str, seq_len: int, stride: int | None = None) -> Windows:
        return Windows(self.tokens(split), seq_len, stride)


def prepare_corpus(
    out_dir: str | Path,
    documents: Sequence[str],
    *,
    tokenizer: str = "byte",
    vocab_size: int = 256,
    val_fraction: float = 0.1,
    seed: int = 0,
    provenance: dict | None = None,
) -> TokenCorpus:
    """Tokenize ``documents`` into ``out_dir`` (reused as is when ``meta.json`` matches).

    Documents are shuffled with ``seed`` before concatenation so the validation tail is not
    one topic; the BPE is trained on the training documents only.
    """
    out = Path(out_dir)
    options = {
        "tokenizer": tokenizer,
        "vocab_size": vocab_size if tokenizer == "bpe" else 256,
        "val_fraction": val_fraction,
        "seed": seed,
        "num_documents": len(documents),
    }
    meta_path = out / "meta.json"
    if meta_path.exists() and json.loads(meta_path.read_text()).get("options") == options:
        return TokenCorpus(out)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1): {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(documents))
    docs = [documents[i] for i in order]
    chars = np.cumsum([len(d) + len(SEPARATOR) for d in docs])
    n_train_docs = max(1, int(np.searchsorted(chars, (1 - val_fraction) * chars[-1])))
    tok = train_tokenizer(tokenizer, docs[:n_train_docs], vocab_size)
    stream = encode_documents(docs, tok)
    n_val = max(1, round(val_fraction * len(stream)))
    out.mkdir(parents=True, exist_ok=True)
    tok.save(out / "tokenizer.json")
    save_tokens(out / "train.npy", stream[:-n_val], tok.vocab_size)
    save_tokens(out / "val.npy", stream[-n_val:], tok.vocab_size)
    meta = {
        "vocab_size": int(tok.vocab_size),
        "num_tokens": {"train": int(len(stream) - n_val), "val": int(n_val)},
        "options": options,
        "provenance": provenance or {},
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    return TokenCorpus(out)


def prepare_text_corpus(
    out_dir: str | Path,
    source: str = "default",
    *,
    tokenizer: str = "byte",
    vocab_size: int = 256,
    val_fraction: float = 0.1,
    seed: int = 0,
    **source_options,
) -> TokenCorpus:
    """``prepare_corpus`` on ``dsb.data.text.corpus.load_documents(source, **source_options)``,
    recording where the text came from. ``source="default"`` is the embedded corpus."""
    from dsb.data.text import corpus

    documents = corpus.load_documents(source, **source_options)
    provenance = (
        corpus.default_corpus_info()
        if source == "default"
        else {"source": source, **{k: str(v) for k, v in source_options.items()}}
    )
    return prepare_corpus(
        out_dir,
        documents,
        tokenizer=tokenizer,
        vocab_size=vocab_size,
        val_fraction=val_fraction,
        seed=seed,
        provenance=provenance,
    )


class Windows:
    """Random-access windows of a flat token array: ``len``, ``[i]`` and ``[indices]``."""

    def __init__(self, tokens: np.ndarray, seq_len: int, stride: int | None = None):
        self.tokens = tokens
        self.seq_len = int(seq_len)
        self.stride = int(stride or seq_len)
        if self.seq_len < 2 or self.stride < 1:
            raise ValueError(f"need seq_len >= 2 and stride >= 1: {seq_len}, {stride}")
        if len(tokens) < self.seq_len:
            raise ValueError(f"{len(tokens)} tokens are fewer than one window of {seq_len}")
        self.num_windows = (len(tokens) - self.seq_len) // self.stride + 1

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, index) -> np.ndarray:
        """``int -> [seq_len]``, index array ``[n] -> [n, seq_len]``, int32."""
        idx = np.asarray(index)
        if np.any((idx < 0) | (idx >= self.num_windows)):
            raise IndexError(f"window index out of range [0, {self.num_windows})")
        starts = idx[..., None] * self.stride + np.arange(self.seq_len)
        return np.asarray(self.tokens[starts.reshape(-1)], dtype=np.int32).reshape(starts.shape)

    def all(self) -> np.ndarray:
        """Every window, ``[num_windows, seq_len]`` int32 (the ``load_split`` form)."""
        return self[np.arange(self.num_windows)]
