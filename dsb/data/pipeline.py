"""The configured data, as the trainer and the notebook helpers see it.

``data_info(cfg)`` says what the data is (``DataInfo``: image classification or text),
``split_loader(cfg)`` returns ``split -> host arrays`` and ``training_split(cfg, ...)`` the
training split the trainer samples from (concept-erased when ``data.erasure`` is set, a
synthetic set built from it when ``data.synthetic`` is).
Batches are typed by the data's kind: ``ImageBatch`` or ``TokenBatch``; the train step is
built for one kind (``DataInfo.kind``) and never inspects a batch's keys.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypedDict

import numpy as np

from dsb.config import Config
from dsb.data.registry import get_dataset_spec
from dsb.data.sources import load_split

__all__ = [
    "DataInfo",
    "ImageBatch",
    "TokenBatch",
    "data_info",
    "split_loader",
    "training_split",
]


class ImageBatch(TypedDict):
    """Image classification: ``image [B, H, W, C]`` float32 in [0, 1], ``label [B]`` int32."""

    image: np.ndarray
    label: np.ndarray


class TokenBatch(TypedDict):
    """Language modelling: ``tokens [B, T]`` int32 windows; position t predicts t + 1."""

    tokens: np.ndarray


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What the configured data is.

    ``kind`` is ``"image"`` (batches are ``ImageBatch``, ``num_classes`` classes) or
    ``"text"`` (``TokenBatch``, a vocabulary of ``vocab_size`` tokens); ``input_shape`` is
    (H, W, C) or (context_length,).
    """

    kind: Literal["image", "text"]
    input_shape: tuple[int, ...]
    num_classes: int | None = None
    vocab_size: int | None = None

    @property
    def num_outputs(self) -> int:
        """Logits per input (classes, or vocabulary entries per position)."""
        return self.vocab_size if self.kind == "text" else self.num_classes


def data_info(cfg: Config) -> DataInfo:
    """``DataInfo`` of ``cfg.data`` (a text corpus is tokenized on first use)."""
    spec = get_dataset_spec(cfg.data.name)
    if spec.kind == "text":
        from dsb.data.text import vocab_size

        vocab = vocab_size(cfg.data.text)
        return DataInfo("text", (cfg.data.text.context_length,), vocab_size=vocab)
    return DataInfo("image", tuple(spec.input_shape), num_classes=spec.num_classes)


def split_loader(cfg: Config) -> Callable[[str], dict[str, np.ndarray]]:
    """``split -> host arrays`` of the configured dataset (cached): ``ImageBatch``-like
    ``{"image", "label"}`` or ``TokenBatch``-like ``{"tokens"}`` dicts of whole splits."""
    if get_dataset_spec(cfg.data.name).kind == "text":
        from dsb.data.text import load_text_split

        return functools.cache(functools.partial(load_text_split, cfg.data.text))
    return functools.partial(load_split, cfg.data.name, data_dir=cfg.data.data_dir)


def training_split(
    cfg: Config,
    load: Callable[[str], dict[str, np.ndarray]],
    report_path: str | Path | None = None,
    *,
    return_eraser: bool = False,
):
    """The split the trainer samples from: ``data.train_split``, with LEACE / QLEACE
    applied when ``data.erasure`` is set, and the erasure's report (None without erasure;
    see ``dsb.data.transforms.erase_split_with_report``), also written to ``report_path``.
    The erased split is cached (``dsb.data.transforms.cached_erase_split`` in
    ``dsb.cache.erasure_cache_dir()``): runs on the same split with the same erasure
    options, such as the prefix runs of ``dsb.mdl``, fit it once.
    With ``data.synthetic`` set, the synthetic set built from the split instead and its
    report (``dsb.data.synthetic.synthetic_split``; cached as ``data.synthetic.cache_dir`` says).
    With ``return_eraser``, a third item: the fitted transform (None without erasure)."""
    data = load(cfg.data.train_split)
    if cfg.data.synthetic.kind is not None:
        from dsb.data.synthetic import synthetic_split

        num_classes = get_dataset_spec(cfg.data.name).num_classes
        data, report = synthetic_split(
            cfg.data.synthetic,
            data,
            num_classes,
            data_dir=cfg.data.data_dir,
            report_path=report_path,
        )
        return (data, report, None) if return_eraser else (data, report)
    if not cfg.data.erasure:
        return (data, None, None) if return_eraser else (data, None)
    from dsb.cache import erasure_cache_dir
    from dsb.data.transforms import cached_erase_split

    data, report, eraser, _ = cached_erase_split(
        data,
        cfg.data.erasure,
        get_dataset_spec(cfg.data.name).num_classes,
        cfg.data.erasure_shrinkage,
        report_path=report_path,
        cache_dir=erasure_cache_dir(),
    )
    return (data, report, eraser) if return_eraser else (data, report)


def load_indices(path: str | Path, n: int, what: str) -> np.ndarray:
    """The distinct int indices in ``[0, n)`` stored in the ``.npy`` file ``path``; raises
    ``ValueError`` naming ``what`` otherwise."""
    idx = np.load(path)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer) or len(idx) == 0:
        raise ValueError(f"{what}={path}: must hold a non-empty 1-D array of ints")
    if idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"{what}={path}: indices must lie in [0, {n}) (the training split)")
    if len(np.unique(idx)) != len(idx):
        raise ValueError(f"{what}={path}: indices must be distinct")
    return idx.astype(np.int64)
