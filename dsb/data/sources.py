"""Reading registered datasets through ``tfds.data_source`` (no TensorFlow at train time)."""

from __future__ import annotations

import functools
import logging

import numpy as np
import tensorflow_datasets as tfds
import tqdm

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


def open_source(name: str, split: str, data_dir: str | None = None):
    """The random-access ``tfds.data_source`` of a registered dataset's split."""
    spec = get_dataset_spec(name)
    if spec.builds_offline:
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
    else:
        builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
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
    """
    with phase(f"data/{name}/{split}"):
        return _decode(name, split, data_dir)


def _decode(name: str, split: str, data_dir: str | None) -> dict[str, np.ndarray]:
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
    image /= np.float32(spec.pixel_scale)
    return {"image": image, "label": label}
