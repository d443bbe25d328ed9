"""MNIST / Fashion-MNIST built offline from IDX files (dsb.data.idx, prepare --from_idx).

Synthetic IDX files (written here) check the builder, the reading path and every error;
the real files (fetched by ``bash ../shared/data/fetch_mnist_fashion.sh`` into
``~/.cache/dsb-raw``, or ``$DSB_IDX_DIR``) check the real datasets, and skip without them.
"""

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core import hashing
from tensorflow_datasets.image_classification import mnist as tfds_mnist

from dsb.data import idx, prepare
from dsb.data.sources import DatasetNotPreparedError, load_split

IDX_ROOT = Path(os.environ.get("DSB_IDX_DIR", "~/.cache/dsb-raw")).expanduser()
FETCH = (
    "needs the real MNIST / Fashion-MNIST IDX files in {}: from the repository root run "
    f"`PYTHON=.venv/bin/python bash ../shared/data/fetch_mnist_fashion.sh {IDX_ROOT}` "
    "(DSB_IDX_DIR, default ~/.cache/dsb-raw, says where the tests look)"
)
# Class counts of the standard splits (LeCun et al.; Xiao et al. 2017).
CLASS_COUNTS = {
    ("mnist", "train"): [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    ("mnist", "test"): [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
    ("fashion_mnist", "train"): [6000] * 10,
    ("fashion_mnist", "test"): [1000] * 10,
}


def write_idx(path: Path, array: np.ndarray, magic: int | None = None, compress: bool = True):
    a = np.ascontiguousarray(array, np.uint8)
    magic = 0x0800 + a.ndim if magic is None else magic
    data = magic.to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in a.shape)
    data += a.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def synthetic_idx(root: Path, name: str, sizes=None, seed=0):
    """Random IDX files for ``name`` under ``root`` (train gzip-compressed, test plain);
    returns ``split -> (images [n, 28, 28, 1], labels [n])``."""
    sizes = sizes or {"train": 24, "test": 8}
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in sizes.items():
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        image_stem, label_stem = idx.IDX_FILES[split]
        write_idx(root / name / image_stem, images, compress=split == "train")
        write_idx(root / name / label_stem, labels, compress=split == "train")
        out[split] = (images[..., None], labels)
    return out


def tfds_order(split: str, n: int) -> list[int]:
    """The record order TFDS writes a split in: keys (here the index) sorted by their salted
    hash, as ``tfds.core.shuffle`` does."""
    return sorted(range(n), key=hashing.Hasher(split).hash_key)


def real_dir(name: str) -> Path:
    d = IDX_ROOT / name
    if not all((d / f"{stem}.gz").is_file() for pair in idx.IDX_FILES.values() for stem in pair):
        pytest.skip(FETCH.format(d))
    return d


# --- synthetic files --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_builder_roundtrip_through_data_source(name, tmp_path):
    """The builder's dataset, read by tfds.data_source and by dsb's load_split, is the IDX
    data exactly, in TFDS's record order, with the official builder's features; no
    TensorFlow is imported."""
    sizes = {"train": 24, "test": 8}
    raw = synthetic_idx(tmp_path / "raw", name, sizes)
    data_dir = str(tmp_path / "tfds")
    builder = idx.idx_builder(name, tmp_path / "raw", data_dir, num_examples=sizes)
    builder.download_and_prepare()
    assert "tensorflow" not in sys.modules
    assert Path(builder.data_dir) == Path(data_dir) / name / str(tfds_mnist.MNIST.VERSION)

    official = tfds.builder(name, data_dir=data_dir)  # TFDS's own class, reading our files
    assert type(official) is tfds.builder_cls(name) and official.is_prepared()
    fresh = tfds.builder_cls(name)(data_dir=str(tmp_path / "empty"))  # its info, no files
    assert official.info.features.to_json() == fresh.info.features.to_json()
    assert repr(official.info.features) == repr(fresh.info.features)
    assert official.info.supervised_keys == fresh.info.supervised_keys
    for split, (images, labels) in raw.items():
        assert official.info.splits[split].num_examples == sizes[split]
        src = tfds.data_source(name, split=split, data_dir=data_dir)
        order = tfds_order(split, sizes[split])
        got = [src[i] for i in range(len(src))]
        np.testing.assert_array_equal(np.stack([r["image"] for r in got]), images[order])
        np.testing.assert_array_equal([r["label"] for r in got], labels[order])
        assert got[0]["image"].dtype == np.uint8 and got[0]["image"].shape == (28, 28, 1)
        loaded = load_split(name, split, data_dir)  # what dsb trains and evaluates on
        np.testing.assert_array_equal(loaded["image"], images[order] / np.float32(255))
        np.testing.assert_array_equal(loaded["label"], labels[order])
    assert "tensorflow" not in sys.modules


def test_official_split_sizes_and_version():
    assert idx.SPLIT_SIZES == {
        "train": tfds_mnist._TRAIN_EXAMPLES,
        "test": tfds_mnist._TEST_EXAMPLES,
    }
    for name, ours in idx.IDX_BUILDERS.items():
        assert issubclass(ours, tfds.builder_cls(name))
        assert ours.name == name and ours.VERSION == tfds.builder_cls(name).VERSION


def test_png_gray_decodes_exactly():
    import io

    from PIL import Image

    a = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    a[0] = 0
    a[1] = 255
    for image in a:
        np.testing.assert_array_equal(
            np.asarray(Image.open(io.BytesIO(idx.png_gray(image)))), image
        )


def test_read_idx_plain_and_gzip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", a, compress=False)
    write_idx(tmp_path / "b", a, compress=True)
    np.testing.assert_array_equal(idx.read_idx(tmp_path / "a", 3), a)
    np.testing.assert_array_equal(idx.read_idx(tmp_path / "b.gz", 3, (2, None, 4)), a)


def _corrupt(kind: str, d: Path):
    """Damage one file of a synthetic mnist in ``d``; returns (file name, message regex)."""
    images = d / "train-images-idx3-ubyte.gz"
    labels = d / "train-labels-idx1-ubyte.gz"
    rng = np.random.default_rng(1)
    if kind == "missing":
        images.unlink()
        return images.name, r"no such file; expected the standard IDX files.*fetch_mnist_fashion"
    if kind == "magic":
        write_idx(d / "train-images-idx3-ubyte", rng.integers(0, 9, (24, 28, 28)), magic=0x0801)
        return images.name, r"magic number 0x00000801, expected 0x00000803"
    if kind == "labels_magic":
        write_idx(d / "train-labels-idx1-ubyte", rng.integers(0, 9, (24, 1)))
        return labels.name, r"magic number 0x00000802, expected 0x00000801"
    if kind == "count":
        write_idx(d / "train-images-idx3-ubyte", rng.integers(0, 9, (23, 28, 28)))
        return images.name, r"count \(23, 28, 28\), expected \(24, 28, 28\)"
    if kind == "shape":
        write_idx(d / "train-images-idx3-ubyte", rng.integers(0, 9, (24, 32, 32)))
        return images.name, r"shape \(24, 32, 32\), expected \(24, 28, 28\)"
    if kind == "truncated":
        data = gzip.decompress(images.read_bytes())[:-5]
        images.write_bytes(gzip.compress(data))
        return images.name, r"18811 bytes of data after the header, expected 18816"
    if kind == "gzip":
        images.write_bytes(images.read_bytes()[:100])
        return images.name, r"not a readable gzip file"
    if kind == "header":
        images.write_bytes(gzip.compress(b"\x00\x00\x08"))
        return images.name, r"3 bytes, too short for an IDX header"
    if kind == "label_range":
        write_idx(d / "train-labels-idx1-ubyte", np.full(24, 10))
        return labels.name, r"label 10 at index 0, expected 0\.\.9"
    raise AssertionError(kind)


ERRORS = [
    "missing",
    "magic",
    "labels_magic",
    "count",
    "shape",
    "truncated",
    "gzip",
    "header",
    "label_range",
]


@pytest.mark.parametrize("kind", ERRORS)
def test_malformed_files_are_named_with_what_was_expected(kind, tmp_path):
    synthetic_idx(tmp_path, "mnist")
    fname, pattern = _corrupt(kind, tmp_path / "mnist")
    builder = idx.idx_builder(
        "mnist", tmp_path, str(tmp_path / "tfds"), num_examples={"train": 24, "test": 8}
    )
    with pytest.raises((idx.IdxFormatError, FileNotFoundError), match=pattern) as e:
        builder.download_and_prepare()
    assert fname in str(e.value)
    assert not builder.is_prepared()


def test_prepare_cli_errors(tmp_path, capsys):
    """The CLI names the missing file (standard sizes: 60000 / 10000) and refuses datasets
    it has no IDX builder for."""
    with pytest.raises(SystemExit, match=r"mnist.*train-images-idx3-ubyte\.gz.*no such file"):
        prepare.main(["mnist", "--from_idx", str(tmp_path), "--data_dir", str(tmp_path / "t")])
    synthetic_idx(tmp_path, "fashion_mnist")  # 24 / 8 examples, not the standard 60000
    with pytest.raises(SystemExit, match=r"count \(24, 28, 28\), expected \(60000, 28, 28\)"):
        prepare.main(
            ["fashion_mnist", "--from_idx", str(tmp_path), "--data_dir", str(tmp_path / "t")]
        )
    with pytest.raises(SystemExit):
        prepare.main(["cifar10", "--from_idx", str(tmp_path), "--data_dir", str(tmp_path / "t")])
    assert "--from_idx builds mnist, fashion_mnist, not cifar10" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_unprepared_error_shows_the_offline_command(name, tmp_path):
    with pytest.raises(DatasetNotPreparedError) as e:
        load_split(name, "train", str(tmp_path))
    assert f"python -m dsb.data.prepare {name} --from_idx ~/.cache/dsb-raw --data_dir" in str(
        e.value
    )
    assert "fetch_mnist_fashion.sh" in str(e.value)


# --- the real files -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_real_idx_files(name):
    """The fetched files are the standard splits: sizes and class counts as published."""
    d = real_dir(name)
    for split, n in idx.SPLIT_SIZES.items():
        images, labels = idx.read_idx_split(d, split)
        assert images.shape == (n, 28, 28, 1) and images.dtype == np.uint8
        assert np.bincount(labels, minlength=10).tolist() == CLASS_COUNTS[(name, split)]
        assert images.max() == 255 and images.min() == 0


@pytest.fixture(scope="module")
def real_prepared(tmp_path_factory):
    """``name -> data_dir`` with the real dataset prepared by the CLI (built on first use)."""
    root = tmp_path_factory.mktemp("idx_tfds")
    built = {}

    def get(name):
        if name not in built:
            real_dir(name)
            t = time.perf_counter()
            prepare.main([name, "--from_idx", str(IDX_ROOT), "--data_dir", str(root)])
            print(f"{name}: prepared in {time.perf_counter() - t:.1f} s")
            built[name] = str(root)
        return built[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_real_prepare_equals_idx(name, real_prepared):
    """Prepared from the real files, every record read back by tfds.data_source equals the
    IDX arrays; splits and features are the official ones. (Both datasets: 11 min on a
    shared 2-core box at load ~19; preparing took 94 s and 155 s, the rest is decoding.)"""
    data_dir = real_prepared(name)
    assert "tensorflow" not in sys.modules
    official = tfds.builder(name, data_dir=data_dir)
    fresh = tfds.builder_cls(name)(data_dir=data_dir + "-empty")
    assert official.info.features.to_json() == fresh.info.features.to_json()
    assert {s: official.info.splits[s].num_examples for s in ("train", "test")} == idx.SPLIT_SIZES
    for split, n in idx.SPLIT_SIZES.items():
        images, labels = idx.read_idx_split(IDX_ROOT / name, split)
        src = tfds.data_source(name, split=split, data_dir=data_dir)
        assert len(src) == n
        order = tfds_order(split, n)
        got = src.__getitems__(list(range(n)))
        np.testing.assert_array_equal(np.stack([r["image"] for r in got]), images[order])
        np.testing.assert_array_equal(np.array([r["label"] for r in got]), labels[order])


@pytest.mark.slow
def test_mnist_lenet5_offline_end_to_end(real_prepared, tmp_path):
    """experiment=mnist_lenet5 on MNIST prepared offline: a short run trains, evaluates
    (held-out accuracy and the DSB probes at d = 784, made small) and checkpoints. The OT
    Gaussian edit is left out: its per-pair eighs at d = 784 cost minutes whatever the
    sample count (more than 20 min on a 2-core box at load ~15)."""
    data_dir = real_prepared("mnist")
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "dsb.main",
        "experiment=mnist_lenet5",
        f"data.data_dir={data_dir}",
        "train.total_steps=64",
        "optim.warmup_steps=8",
        "evals.dsb.num_samples=200",
        "+evals.dsb.particle_steps=20",
        "evals.dsb.ot_sets=[cqn,mean_shift]",
        "train.progress_bar=false",
        f"hydra.run.dir={run_dir}",
    ]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=tmp_path)
    print(f"mnist_lenet5, 64 steps: {time.perf_counter() - t:.0f} s")
    assert r.returncode == 0, r.stderr[-4000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = {k: v for row in rows for k, v in row.items()}
    assert last["step"] == 64
    assert 0.0 <= last["val/accuracy"] <= 1.0
    assert "dsb/maxent/box2/accuracy" in last and "dsb/ot/cqn/target_accuracy" in last
