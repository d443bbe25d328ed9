"""MNIST and Fashion-MNIST built offline from their standard IDX files, as TFDS builds them.

The IDX format is the one MNIST (LeCun, Cortes and Burges) and Fashion-MNIST (Xiao, Rasul
and Vollgraf, 2017) are distributed in: a big-endian header (magic number ``0x0000TTNN``,
TT = 0x08 for unsigned bytes, NN = number of dimensions, then NN uint32 sizes), then the
data, row-major. Each dataset is four files, gzip-compressed or not::

    DIR/<name>/train-images-idx3-ubyte[.gz]   DIR/<name>/train-labels-idx1-ubyte[.gz]
    DIR/<name>/t10k-images-idx3-ubyte[.gz]    DIR/<name>/t10k-labels-idx1-ubyte[.gz]

``MnistFromIdx`` and ``FashionMnistFromIdx`` subclass TFDS's own ``MNIST`` and
``FashionMNIST`` builders: same name, version, features (``image`` (28, 28, 1) uint8 PNG,
``label`` ClassLabel(10)), splits and record keys, so the prepared directory is the one
``tfds.builder("mnist").download_and_prepare()`` writes and ``tfds.data_source`` reads it
the same way (records in the same order). Only the download step differs: the files are
read from a local directory and the images are PNG-encoded here (lossless, so they decode
to the IDX pixels), so neither the internet nor TensorFlow is needed.

Real copies of the files can be fetched with ``bash ../shared/data/fetch_mnist_fashion.sh``
(from the repository root, where a ``shared/`` folder sits beside the checkout); it writes
them to ``~/.cache/dsb-raw``.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import mnist as tfds_mnist

__all__ = [
    "IDX_BUILDERS",
    "IDX_FILES",
    "SPLIT_SIZES",
    "FashionMnistFromIdx",
    "IdxFormatError",
    "MnistFromIdx",
    "idx_builder",
    "png_gray",
    "read_idx",
    "read_idx_split",
]

# split -> (images, labels) file stems, as the datasets' sites name them
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLIT_SIZES = {"train": 60_000, "test": 10_000}
IMAGE_SIZE = 28
NUM_CLASSES = 10
FETCH_HINT = (
    "Standard copies can be fetched with: bash ../shared/data/fetch_mnist_fashion.sh "
    "(writes ~/.cache/dsb-raw/{mnist,fashion_mnist}/)"
)


class IdxFormatError(ValueError):
    """An IDX file that is not what it should be (the message names the file)."""


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":  # not gzip: a plain IDX file
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise IdxFormatError(f"{path}: not a readable gzip file ({e})") from e


def read_idx(path: str | Path, ndim: int, shape: tuple[int | None, ...] | None = None):
    """The uint8 array in IDX file ``path`` (gzip-compressed or not).

    ``ndim`` is the expected number of dimensions (magic number ``0x000008NN``); ``shape``,
    if given, the expected sizes (``None`` for any). Raises ``IdxFormatError`` naming the
    file and what was expected when the magic number, the sizes or the data length differ.
    """
    path = Path(path)
    data = _read_bytes(path)
    want_magic = 0x0800 + ndim
    header = 4 + 4 * ndim
    if len(data) < 4:
        raise IdxFormatError(
            f"{path}: {len(data)} bytes, too short for an IDX header "
            f"(expected magic number 0x{want_magic:08x})"
        )
    magic = int.from_bytes(data[:4], "big")
    if magic != want_magic:
        raise IdxFormatError(
            f"{path}: magic number 0x{magic:08x}, expected 0x{want_magic:08x} "
            f"(IDX of unsigned bytes with {ndim} dimension{'s' * (ndim > 1)})"
        )
    if len(data) < header:
        raise IdxFormatError(
            f"{path}: {len(data)} bytes, too short for the {ndim} sizes of an IDX header"
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if shape is not None and any(w is not None and w != d for w, d in zip(shape, dims)):
        want = "(" + ", ".join("*" if w is None else str(w) for w in shape) + ")"
        what = "count" if dims[1:] == tuple(shape[1:]) else "shape"
        raise IdxFormatError(f"{path}: {what} {dims}, expected {want}")
    size = math.prod(dims)
    if len(data) - header != size:
        raise IdxFormatError(
            f"{path}: {len(data) - header} bytes of data after the header, expected "
            f"{size} for shape {dims} (file truncated or padded)"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _find(directory: Path, stem: str) -> Path:
    for path in (directory / f"{stem}.gz", directory / stem):
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{directory / stem}.gz (or {stem} uncompressed): no such file; expected the standard "
        f"IDX files of MNIST / Fashion-MNIST in {directory}. {FETCH_HINT}"
    )


def read_idx_split(directory: str | Path, split: str, num_examples: int | None = None):
    """``(images [n, 28, 28, 1] uint8, labels [n] uint8)`` of ``split`` ("train" or "test")
    from the IDX files in ``directory``; ``n`` must be ``num_examples`` (default: the
    standard split size, 60000 or 10000)."""
    directory = Path(directory)
    n = SPLIT_SIZES[split] if num_examples is None else num_examples
    image_stem, label_stem = IDX_FILES[split]
    image_path, label_path = _find(directory, image_stem), _find(directory, label_stem)
    images = read_idx(image_path, 3, (n, IMAGE_SIZE, IMAGE_SIZE))
    labels = read_idx(label_path, 1, (n,))
    if labels.size and labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise IdxFormatError(
            f"{label_path}: label {labels[bad]} at index {bad}, expected 0..{NUM_CLASSES - 1}"
        )
    return images[..., None], labels


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_gray(image: np.ndarray) -> bytes:
    """A 2-D uint8 array as an 8-bit grayscale PNG (no filtering, zlib level 6)."""
    h, w = image.shape
    rows = np.concatenate([np.zeros((h, 1), np.uint8), image], axis=1)  # filter byte 0
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)),
            _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)),
            _png_chunk(b"IEND", b""),
        )
    )


class _FromIdx:
    """Replaces the download of TFDS's MNIST builders with a read of local IDX files."""

    def __init__(self, *, idx_dir: str | Path, num_examples: dict[str, int] | None = None, **kw):
        self._idx_dir = Path(idx_dir).expanduser()
        self._num_examples = num_examples or SPLIT_SIZES
        super().__init__(**kw)

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        # Read and check every file before writing anything.
        arrays = {s: read_idx_split(self._idx_dir, s, self._num_examples[s]) for s in IDX_FILES}
        return {split: self._generate_examples(*arrays[split]) for split in IDX_FILES}

    def _generate_examples(self, images, labels):
        # Same keys as TFDS's builder (the index), hence the same shuffled record order.
        # tfds.features.Image stores encoded bytes as given (it would need TensorFlow to
        # encode arrays itself, and PIL takes 5x longer than this for 70,000 images).
        for index, (image, label) in enumerate(zip(images, labels)):
            yield index, {"image": png_gray(image[..., 0]), "label": int(label)}


class MnistFromIdx(_FromIdx, tfds_mnist.MNIST, skip_registration=True):
    """TFDS ``mnist`` (same name, version and features), built from local IDX files."""

    name = "mnist"


class FashionMnistFromIdx(_FromIdx, tfds_mnist.FashionMNIST, skip_registration=True):
    """TFDS ``fashion_mnist`` (same name, version and features), built from local IDX files."""

    name = "fashion_mnist"


IDX_BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    "mnist": MnistFromIdx,
    "fashion_mnist": FashionMnistFromIdx,
}


def idx_builder(name: str, idx_root: str | Path, data_dir: str | None = None, **kw):
    """The builder of TFDS dataset ``name`` reading ``idx_root/name/`` (ArrayRecord files,
    which ``tfds.data_source`` reads)."""
    if name not in IDX_BUILDERS:
        raise ValueError(
            f"{name!r} has no IDX builder; datasets built from IDX files: "
            + ", ".join(IDX_BUILDERS)
        )
    return IDX_BUILDERS[name](
        idx_dir=Path(idx_root).expanduser() / name,
        data_dir=data_dir,
        file_format="array_record",
        **kw,
    )
