"""Tokenizers: byte-level (256 symbols) and byte-level BPE trained on the corpus.

Both map ``str -> np.ndarray[int32]`` and back; ``decode(encode(s)) == s`` for every
string (the BPE works on UTF-8 bytes, so nothing is ever unknown). The BPE is trained with
Hugging Face's ``tokenizers`` library and saved as its JSON file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

__all__ = ["BPETokenizer", "ByteTokenizer", "load_tokenizer", "train_tokenizer"]


class ByteTokenizer:
    """UTF-8 bytes as tokens, ``vocab_size = 256``."""

    kind = "byte"
    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(np.asarray(ids, dtype=np.uint8).tolist()).decode("utf-8", errors="replace")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"dsb_tokenizer": "byte"}))


class BPETokenizer:
    """Byte-level BPE (GPT-2 style pre-tokenisation) from the ``tokenizers`` library."""

    kind = "bpe"

    def __init__(self, tokenizer):
        self._tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2):
        """Learn merges on ``texts``; the vocabulary holds the 256 byte symbols + merges."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < 256:
            raise ValueError(f"BPE vocab_size must be >= 256 (the byte alphabet): {vocab_size}")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=False,
        )
        tok.train_from_iterator(list(texts), trainer=trainer)
        return cls(tok)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text).ids, dtype=np.int32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int32) for e in self._tok.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, path: str | Path) -> None:
        self._tok.save(str(path))


def train_tokenizer(kind: str, texts: Iterable[str] = (), vocab_size: int = 256):
    """``"byte"`` (ignores ``texts``) or ``"bpe"`` trained on ``texts``."""
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        return BPETokenizer.train(texts, vocab_size)
    raise ValueError(f"unknown tokenizer kind {kind!r}; use 'byte' or 'bpe'")


def load_tokenizer(path: str | Path):
    """Inverse of ``.save``: a ``ByteTokenizer`` or a ``BPETokenizer``."""
    text = Path(path).read_text()
    if json.loads(text).get("dsb_tokenizer") == "byte":
        return ByteTokenizer()
    from tokenizers import Tokenizer

    return BPETokenizer(Tokenizer.from_str(text))
