"""Reading registered datasets through ``tfds.data_source`` (no TensorFlow at train time)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from dsb.cache import build_lock, data_cache_dir, write_atomically
from dsb.data.registry import DatasetSpec, get_dataset_spec
from dsb.timing import phase

__all__ = ["DatasetNotPreparedError", "load_split", "open_source"]

log = logging.getLogger(__name__)


class DatasetNotPreparedError(RuntimeError):
    pass


def _prepare_hint(spec: DatasetSpec, data_dir: str | None) -> str:
    where = f" --data_dir {data_dir}" if data_dir else ""
    hint = (
        f"TFDS dataset {spec.tfds_name!r} is not prepared in "
        f"{data_dir or tfds.core.constants.DATA_DIR}. On a machine with internet, run\n"
        f"  pip install -e '.[prepare]'\n  python -m dsb.data.prepare {spec.tfds_name}{where}\n"
    )
    if spec.tfds_name in ("mnist", "fashion_mnist"):  # dsb.data.idx.IDX_BUILDERS
        hint += (
            "or offline (no TensorFlow), from the standard IDX files in DIR/"
            f"{spec.tfds_name}/ (bash ../shared/data/fetch_mnist_fashion.sh fetches them "
            "into ~/.cache/dsb-raw):\n"
            f"  python -m dsb.data.prepare {spec.tfds_name} --from_idx ~/.cache/dsb-raw{where}\n"
        )
    return hint + "and point data.data_dir at that directory."


def _builder(spec: DatasetSpec, data_dir: str | None):
    """The TFDS builder of ``spec``; the offline datasets are built on first use."""
    if not spec.builds_offline:
        return tfds.builder(spec.tfds_name, data_dir=data_dir)
    from dsb.data import digits

    builder = digits.SklearnDigits(data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        log.info("building %s offline into %s", spec.tfds_name, builder.data_dir)
        try:
            builder.download_and_prepare()
        except FileExistsError:
            # Another process (of a multi-host run) built it first: TFDS builds into
            # a temporary directory and the second rename onto the same name fails.
            builder = digits.SklearnDigits(data_dir=data_dir, file_format="array_record")
            if not builder.is_prepared():
                raise
            log.info("%s was built by another process", spec.tfds_name)
    return builder


def open_source(name: str, split: str, data_dir: str | None = None):
    """The random-access ``tfds.data_source`` of a registered dataset's split."""
    spec = get_dataset_spec(name)
    builder = _builder(spec, data_dir)
    try:
        return builder.as_data_source(split=split)
    except Exception as e:
        if not builder.is_prepared():
            raise DatasetNotPreparedError(_prepare_hint(spec, data_dir)) from e
        if split not in builder.info.splits:
            raise ValueError(
                f"dataset {name!r} has no split {split!r}; splits: {', '.join(builder.info.splits)}"
            ) from e
        raise


@functools.lru_cache(maxsize=16)
def load_split(name: str, split: str, data_dir: str | None = None) -> dict[str, np.ndarray]:
    """A whole split in host memory: ``{"image": [n, h, w, c] float32 in [0, 1], "label": [n]}``.

    The small image datasets dsb trains on (digits, MNIST, CIFAR, SVHN: at most ~600 MB as
    float32) fit in host memory; holding them there makes every batch a single vectorised
    gather, so the input pipeline costs microseconds per step.

    Decoding every record (PNG through TFDS and PIL) takes ~30 s for MNIST's train split,
    so the decoded arrays are cached (``dsb.cache.data_cache_dir``: ``$DSB_DATA_CACHE``,
    else ``~/.cache/dsb/decoded``), keyed by the dataset's name, version and split and a
    fingerprint of the record files it reads (name, size, modification time and the
    records taken from each): a dataset prepared again is decoded again. The file holds the
    values before scaling (uint8 where they are bytes), so a load returns the same float32
    arrays bit for bit. Written atomically; concurrent jobs decode once (``build_lock``).
    """
    with phase(f"data/{name}/{split}"):
        spec = get_dataset_spec(name)
        path, key = _decoded_path(spec, split, data_dir)
        if path is None:
            return _scaled(spec, *_decode(name, split, data_dir))
        if (hit := _load_decoded(spec, path, key)) is not None:
            return hit
        with build_lock(path):
            if (hit := _load_decoded(spec, path, key)) is not None:
                return hit  # decoded by another process while we waited
            raw, label = _decode(name, split, data_dir)
            try:
                _save_decoded(path, key, raw, label)
                log.info("%s/%s: decoded arrays cached in %s", name, split, path)
            except OSError as e:
                log.warning("could not cache the decoded %s/%s in %s: %s", name, split, path, e)
        return _scaled(spec, raw, label)


_DECODED_VERSION = "decoded-v1"  # bump when _decode's output changes


def _decoded_path(spec: DatasetSpec, split: str, data_dir: str | None):
    """``(file, key)`` of the split's decoded arrays in the cache, or ``(None, None)`` when
    the cache is off or the split cannot be fingerprinted (not prepared: ``_decode`` then
    raises the error that says how to prepare it)."""
    cache = data_cache_dir()
    if cache is None:
        return None, None
    try:
        builder = _builder(spec, data_dir)
        files = []
        for fi in builder.info.splits[split].file_instructions:
            st = os.stat(fi.filename)
            name = os.path.basename(fi.filename)
            files.append([name, fi.skip, fi.take, st.st_size, st.st_mtime_ns])
    except Exception:
        return None, None
    ident = {
        "version": _DECODED_VERSION,
        "tfds_name": spec.tfds_name,
        "tfds_version": str(builder.info.version),
        "split": split,
        "keys": [spec.image_key, spec.label_key],
        "shape": list(spec.input_shape),
        "files": files,
    }
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{spec.tfds_name}-{ident['tfds_version']}-{split}")
    return Path(cache) / f"{stem}-{key[:16]}.npz", key


def _load_decoded(spec: DatasetSpec, path: Path, key: str) -> dict[str, np.ndarray] | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"]) != key:
                return None
            raw, label = f["image"], f["label"]
    except Exception as e:  # a damaged file (truncated zip, ...): decode again
        log.warning("ignoring the unreadable decoded-data cache %s: %s", path, e)
        return None
    log.info("%s: loaded the decoded arrays from %s", spec.tfds_name, path)
    return _scaled(spec, raw, label)


def _save_decoded(path: Path, key: str, raw: np.ndarray, label: np.ndarray) -> None:
    as_bytes = raw.astype(np.uint8)
    exact = np.array_equal(as_bytes, raw)  # PNG pixels: 4x smaller, and exact
    write_atomically(
        path, lambda f: np.savez(f, image=as_bytes if exact else raw, label=label, key=key)
    )


def _scaled(spec: DatasetSpec, raw: np.ndarray, label: np.ndarray) -> dict[str, np.ndarray]:
    # The same arithmetic as always, float32 values divided by a float32 scale (bytes cast
    # to float32 exactly, in the same pass); in place when ``raw`` is float32 (freshly
    # decoded, and already written to the cache).
    image = raw if raw.dtype == np.float32 else np.empty(raw.shape, np.float32)
    np.divide(raw, np.float32(spec.pixel_scale), out=image, dtype=np.float32)
    return {"image": image, "label": label}


def _decode(name: str, split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Every record of the split: images ``[n, *input_shape]`` float32, unscaled, and
    labels ``[n]`` int32."""
    spec = get_dataset_spec(name)
    source = open_source(name, split, data_dir)
    n = len(source)
    image = np.empty((n, *spec.input_shape), np.float32)
    label = np.empty((n,), np.int32)
    records = range(n)
    if n > 20_000:
        records = tqdm.tqdm(records, desc=f"reading {name}/{split}", unit="ex", mininterval=2)
    for i in records:
        record = source[i]
        image[i] = np.asarray(record[spec.image_key]).reshape(spec.input_shape)
        label[i] = int(record[spec.label_key])
    return image, label
