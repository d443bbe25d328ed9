import numpy as np
import pytest
import tensorflow_datasets as tfds

from dsb.data.digits import digits_arrays
from dsb.data.loader import BatchSampler
from dsb.data.sources import DatasetNotPreparedError, load_split


def test_digits_arrays_reference_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = digits_arrays()
    x_tr, _ = d["train"]
    x_te, y_te = d["test"]
    assert x_tr.shape == (1600, 8, 8, 1) and x_te.shape == (197, 8, 8, 1)
    assert x_tr.dtype == np.float32 and 0.0 <= x_tr.min() and x_tr.max() == 1.0
    raw = load_digits()
    _, _, _, ref_y_te = train_test_split(raw.data, raw.target, test_size=197, random_state=0)
    np.testing.assert_array_equal(y_te, ref_y_te)


def test_digits_tfds_builder_roundtrip(tmp_path):
    """The offline TFDS builder, read back through tfds.data_source, is the sklearn split."""
    data = load_split("digits", "train", str(tmp_path))
    ref_x, ref_y = digits_arrays()["train"]
    np.testing.assert_array_equal(data["image"], ref_x)
    np.testing.assert_array_equal(data["label"], ref_y)
    test = load_split("digits", "test", str(tmp_path))
    assert test["image"].shape == (197, 8, 8, 1)
    src = tfds.data_source("sklearn_digits", split="test", data_dir=str(tmp_path))
    assert len(src) == 197 and src[0]["image"].shape == (8, 8, 1)
    with pytest.raises(ValueError, match="no split 'validation'"):
        load_split("digits", "validation", str(tmp_path))


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("mnist", (28, 28, 1)),
        ("cifar10", (32, 32, 3)),
        ("fashion_mnist", (28, 28, 1)),
        ("svhn_cropped", (32, 32, 3)),
    ],
)
def test_standard_tfds_datasets_with_mock_data(name, shape, tmp_path):
    with tfds.testing.mock_data(num_examples=12):
        data = load_split(name, "train", str(tmp_path / name))
    assert data["image"].shape == (12, *shape)
    assert data["image"].dtype == np.float32
    assert 0.0 <= data["image"].min() and data["image"].max() <= 1.0 and data["image"].max() > 0.5
    assert data["label"].dtype == np.int32 and data["label"].max() < 10


def test_unprepared_dataset_error_tells_how_to_prepare(tmp_path):
    with pytest.raises(DatasetNotPreparedError, match=r"dsb\.data\.prepare cifar10"):
        load_split("cifar10", "train", str(tmp_path))


def test_sampler_is_deterministic_epoch_reshuffled_and_host_sharded():
    n = 10
    arrays = {"x": np.arange(n) * 10, "y": np.arange(n)}
    s = BatchSampler(arrays, global_batch_size=4, seed=3)
    again = BatchSampler(arrays, global_batch_size=4, seed=3)
    for step in range(12):
        np.testing.assert_array_equal(s(step)["y"], again(step)["y"])  # pure function of step
    stream = np.concatenate([s.indices(k) for k in range(10)])  # 40 indices = 4 epochs
    epochs = stream.reshape(4, n)
    for e in epochs:
        assert sorted(e) == list(range(n))  # every example once per epoch
    assert not all((epochs[0] == e).all() for e in epochs[1:])  # reshuffled
    other_seed = BatchSampler(arrays, 4, seed=4)
    assert not np.array_equal(other_seed.indices(0), s.indices(0))
    # Two hosts each read half of the same global batch.
    h0 = BatchSampler(arrays, 4, seed=3, process_index=0, process_count=2)
    h1 = BatchSampler(arrays, 4, seed=3, process_index=1, process_count=2)
    for step in range(6):
        np.testing.assert_array_equal(
            np.concatenate([h0.indices(step), h1.indices(step)]), s.indices(step)
        )
    with pytest.raises(ValueError, match="not divisible"):
        BatchSampler(arrays, 5, seed=0, process_count=2)


def test_sampler_fixed_order_repeats_the_same_minibatches():
    arrays = {"y": np.arange(8)}
    s = BatchSampler(arrays, global_batch_size=4, seed=1, reshuffle_each_epoch=False)
    first_epoch = [s.indices(k).tolist() for k in range(2)]
    assert sorted(first_epoch[0] + first_epoch[1]) == list(range(8))
    for epoch in range(1, 4):
        assert [s.indices(2 * epoch + k).tolist() for k in range(2)] == first_epoch


def test_decoded_arrays_are_cached_and_load_bit_for_bit(tmp_path, monkeypatch):
    from dsb.data import sources

    read = sources.load_split.__wrapped__  # without the in-process lru_cache
    tfds_dir, cache = str(tmp_path / "tfds"), tmp_path / "decoded"
    monkeypatch.setenv("DSB_DATA_CACHE", "none")
    ref = read("digits", "train", tfds_dir)  # decoded record by record, as before
    monkeypatch.setenv("DSB_DATA_CACHE", str(cache))
    first = read("digits", "train", tfds_dir)  # decoded, and written to the cache
    (file,) = cache.glob("sklearn_digits-1.0.0-train-*.npz")
    with np.load(file) as f:
        assert f["image"].dtype == np.float32  # digits' pixels are floats already

    def no_decoding(*a):
        raise AssertionError("decoded again")

    real_decode = sources._decode
    monkeypatch.setattr(sources, "_decode", no_decoding)
    second = read("digits", "train", tfds_dir)
    for out in (first, second):
        assert out["image"].dtype == np.float32 and out["label"].dtype == np.int32
        np.testing.assert_array_equal(out["image"].view(np.uint32), ref["image"].view(np.uint32))
        np.testing.assert_array_equal(out["label"], ref["label"])
    # Another split is another file; a re-prepared record file (new mtime) and a damaged
    # cache file are decoded again.
    monkeypatch.setattr(sources, "_decode", real_decode)
    read("digits", "test", tfds_dir)
    assert len(list(cache.glob("*.npz"))) == 2
    (record,) = (tmp_path / "tfds").rglob("sklearn_digits-train.array_record*")
    st = record.stat()
    import os

    os.utime(record, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = read("digits", "train", tfds_dir)
    assert len(list(cache.glob("*train*.npz"))) == 2
    np.testing.assert_array_equal(again["image"], ref["image"])
    newest = max(cache.glob("*train*.npz"), key=lambda p: p.stat().st_mtime_ns)
    newest.write_bytes(newest.read_bytes()[:100])
    np.testing.assert_array_equal(read("digits", "train", tfds_dir)["image"], ref["image"])
    with np.load(newest) as f:  # rewritten whole
        np.testing.assert_array_equal(f["label"], ref["label"])


def test_decoded_byte_pixels_are_stored_as_bytes_and_scale_back_bit_for_bit(tmp_path):
    from dsb.data import sources
    from dsb.data.registry import get_dataset_spec

    spec = get_dataset_spec("mnist")  # pixel_scale 255
    raw = np.random.default_rng(0).integers(0, 256, (50, 28, 28, 1)).astype(np.float32)
    label = np.arange(50, dtype=np.int32) % 10
    want = raw / np.float32(255.0)  # what decoding has always returned
    path = tmp_path / "mnist.npz"
    sources._save_decoded(path, "k", raw.copy(), label)
    with np.load(path) as f:
        assert f["image"].dtype == np.uint8
    got = sources._load_decoded(spec, path, "k")
    np.testing.assert_array_equal(got["image"].view(np.uint32), want.view(np.uint32))
    assert sources._load_decoded(spec, path, "another key") is None
