"""Tokenizer round-trips, the default corpus, prepared token arrays and window batching."""

import numpy as np
import pytest

from dsb.data.loader import BatchSampler
from dsb.data.text import corpus
from dsb.data.text.tokenizers import BPETokenizer, ByteTokenizer, load_tokenizer
from dsb.data.text.windows import Windows, load_tokens, prepare_corpus, save_tokens

TEXTS = [
    "Héllo  wörld\n\n\ttabs, 漢字 and emoji 🙂 ",
    "",
    " leading space\r\nCRLF and trailing \n",
]


@pytest.fixture(scope="module")
def docs():
    return corpus.default_documents()


def test_default_corpus_is_the_cpython_doc_topics(docs):
    info = corpus.default_corpus_info()
    assert info["num_documents"] == len(docs) > 50
    assert info["num_chars"] > 300_000
    assert any('The "assert" statement' in d for d in docs)
    assert "PSF" in info["license"]


def test_byte_tokenizer_round_trip(tmp_path):
    tok = ByteTokenizer()
    for s in TEXTS:
        ids = tok.encode(s)
        assert ids.dtype == np.int32 and ids.max(initial=0) < 256
        assert tok.decode(ids) == s
    tok.save(tmp_path / "t.json")
    assert isinstance(load_tokenizer(tmp_path / "t.json"), ByteTokenizer)


def test_bpe_round_trip_deterministic_and_reloadable(docs, tmp_path):
    tok = BPETokenizer.train(docs[:30], vocab_size=600)
    assert tok.vocab_size == 600
    for s in [*TEXTS, docs[40][:3000]]:
        assert tok.decode(tok.encode(s)) == s
    assert len(tok.encode(docs[40])) < 0.6 * len(docs[40].encode())  # it does compress
    tok.save(tmp_path / "a.json")
    BPETokenizer.train(docs[:30], vocab_size=600).save(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
    again = load_tokenizer(tmp_path / "a.json")
    np.testing.assert_array_equal(again.encode(docs[5]), tok.encode(docs[5]))


def test_prepare_corpus_files_and_cache(tmp_path):
    (tmp_path / "txt").mkdir()
    for i, s in enumerate(["alpha beta gamma " * 50, "delta epsilon " * 80, "zeta " * 60]):
        (tmp_path / "txt" / f"{i}.txt").write_text(s)
    documents = corpus.load_documents("files", paths=str(tmp_path / "txt"))
    assert len(documents) == 3
    c = prepare_corpus(tmp_path / "c", documents, tokenizer="byte", val_fraction=0.2)
    train, val = c.tokens("train"), c.tokens("val")
    assert isinstance(train, np.memmap) and train.dtype == np.uint16
    total = sum(len(d) + 2 for d in documents)
    assert len(train) + len(val) == total and abs(len(val) - 0.2 * total) <= 1
    # the token stream decodes back to the shuffled documents
    text = c.tokenizer.decode(np.concatenate([train, val]))
    assert sorted(text.split("\n\n")[:3]) == sorted(documents)
    mtime = (tmp_path / "c" / "train.npy").stat().st_mtime_ns
    prepare_corpus(tmp_path / "c", documents, tokenizer="byte", val_fraction=0.2)
    assert (tmp_path / "c" / "train.npy").stat().st_mtime_ns == mtime


def test_save_tokens_dtype_and_range(tmp_path):
    save_tokens(tmp_path / "a.npy", np.array([0, 70_000]), vocab_size=70_001)
    assert load_tokens(tmp_path / "a.npy").dtype == np.int32
    with pytest.raises(ValueError):
        save_tokens(tmp_path / "b.npy", np.array([0, 300]), vocab_size=256)


def test_windows_are_slices_of_the_stream():
    tokens = np.arange(103, dtype=np.uint16)
    w = Windows(tokens, seq_len=10)
    assert len(w) == 10
    np.testing.assert_array_equal(w[3], np.arange(30, 40))
    np.testing.assert_array_equal(w.all()[:, 0], np.arange(0, 100, 10))
    overlapping = Windows(tokens, seq_len=10, stride=3)
    np.testing.assert_array_equal(overlapping[[0, 2]], [np.arange(10), np.arange(6, 16)])
    with pytest.raises(IndexError):
        w[10]


def _window_indices(step, n, b, seed, **kw):
    """Window indices of a batch, as the trainer samples text batches."""
    return BatchSampler({"window": np.arange(n)}, b, seed, **kw)(step)["window"]


def test_batches_are_deterministic_resumable_and_cover_each_epoch():
    n, b = 37, 8
    steps = [_window_indices(s, n, b, seed=3) for s in range(20)]
    again = [_window_indices(s, n, b, seed=3) for s in reversed(range(20))][::-1]
    for x, y in zip(steps, again):
        np.testing.assert_array_equal(x, y)
    flat = np.concatenate(steps)
    for e in range(4):  # every epoch is a permutation
        assert sorted(flat[e * n : (e + 1) * n]) == list(range(n))
    assert not np.array_equal(flat[:n], flat[n : 2 * n])
    assert not np.array_equal(steps[0], _window_indices(0, n, b, seed=4))


def test_per_process_slices_tile_the_global_batch():
    for step in (0, 4, 9):
        whole = _window_indices(step, 37, 8, seed=0)
        parts = [
            _window_indices(step, 37, 8, seed=0, process_index=p, process_count=4) for p in range(4)
        ]
        np.testing.assert_array_equal(np.concatenate(parts), whole)
    windows = Windows(np.arange(400), seq_len=10).all()
    batch = BatchSampler({"tokens": windows}, 8, 1, process_index=1, process_count=2)(2)
    assert batch["tokens"].shape == (4, 10) and batch["tokens"].dtype == np.int32
    with pytest.raises(ValueError):
        _window_indices(0, 37, 8, seed=0, process_count=3)


def test_tfds_text_source_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")

    def fake_source(self, split, **kw):
        return [{"text": f"review {i} of {split}".encode()} for i in range(5)]

    with tfds.testing.mock_data(num_examples=5, as_data_source_fn=fake_source):
        docs = corpus.load_documents("tfds", name="imdb_reviews", split="train", max_documents=3)
    assert docs == ["review 0 of train", "review 1 of train", "review 2 of train"]


def test_prepare_default_corpus_with_bpe(tmp_path):
    from dsb.data.text.windows import prepare_text_corpus

    c = prepare_text_corpus(tmp_path, "default", tokenizer="bpe", vocab_size=512)
    assert c.vocab_size == 512 and c.meta["provenance"]["name"] == "cpython-pydoc-topics"
    w = c.windows("val", 64)
    batch = w.all()
    assert batch.shape == (len(w), 64) and batch.max() < 512
    assert c.meta["num_tokens"]["train"] > 5 * c.meta["num_tokens"]["val"]
