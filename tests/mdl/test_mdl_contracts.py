"""Bookkeeping contracts of prequential MDL (``dsb.mdl.run_mdl``), pinned by value.

No model is trained: the trainer is replaced by a stub that records which index files each
prefix run was given and reports a code length. What is checked is what ``run_mdl`` itself
decides: the index partition of the training split (every example is in exactly one of
the first chunk, a later coded chunk or the validation set; a prefix trains on exactly
the chunks before the one it codes; validation examples are never trained on nor coded)
and the metadata of ``mdl.json`` (``log2_num_classes`` is log2 K, the totals follow from
the chunk lengths); the per-example code lengths in ``mdl_code_lengths.npy`` (they sum to
the logged total, their chunks partition the coded examples, no validation example is
coded); and the strict variant's sets, recomputed here from their definition.
"""

from __future__ import annotations

import json
import logging
import math
import shutil

import numpy as np
import pytest
from dsb_testing import tiny_config

from dsb.early_stopping import report_bits_path
from dsb.mdl import run_mdl
from dsb.mdl.core import CODE_LENGTHS_DTYPE

pytestmark = pytest.mark.usefixtures("tfds_dir", "one_blas_thread")

NUM_TRAIN = 1600  # the digits train split
K = 10


@pytest.fixture
def stub_train(monkeypatch):
    """Replace the trainer: each prefix "run" records its index files and reports a code
    length of 1 bit per coded example plus the prefix number (distinct, known values),
    spread unevenly over the chunk's examples in its per-example file."""
    import dsb.train

    calls = []

    def fake_train(cfg, run_dir):
        es = cfg.train.early_stopping
        rec = {
            "run_dir": str(run_dir),
            "train": np.load(cfg.data.train_indices),
            "val": np.load(es.val_indices),
            "coded": np.load(es.report_indices["next_chunk"]),
        }
        calls.append(rec)
        j = len(calls) - 1
        n = len(rec["coded"])
        bits = 1.0 + j * np.arange(1, n + 1) / (n * (n + 1) / 2)  # sums to n + j
        best = {
            "step": 10 * (j + 1),
            "val/loss": 1.0,
            "next_chunk/sum_bits": math.fsum(bits),
        }
        (run_dir / "early_stopping.json").write_text(json.dumps({"best": best}))
        path = report_bits_path(run_dir, best["step"])
        path.parent.mkdir()
        np.savez(path, next_chunk_indices=rec["coded"], next_chunk_bits=bits)

    monkeypatch.setattr(dsb.train, "train", fake_train)
    return calls


def test_mdl_index_sets_partition_the_split(stub_train, tmp_path):
    cfg = tiny_config("mdl.num_chunks=5", "mdl.first_chunk=20", "mdl.val_fraction=0.1")
    result = run_mdl(cfg, tmp_path)
    rec = json.loads((tmp_path / "mdl.json").read_text())
    bounds = result.bounds
    n_val = rec["num_val"]
    assert n_val == round(0.1 * NUM_TRAIN)
    assert bounds[0] == 0 and bounds[1] == 20 and bounds[-1] == NUM_TRAIN - n_val
    assert result.num_coded == bounds[-1] == rec["num_coded"]
    assert len(stub_train) == len(bounds) - 2

    val = stub_train[0]["val"]
    assert len(val) == n_val and len(set(val.tolist())) == n_val
    first_chunk = stub_train[0]["train"]
    coded_so_far = set(first_chunk.tolist())
    assert len(first_chunk) == bounds[1] == len(coded_so_far)
    for j, call in enumerate(stub_train):
        train, coded = set(call["train"].tolist()), set(call["coded"].tolist())
        # Sizes are what the schedule claims, without duplicates.
        assert len(call["train"]) == len(train) == bounds[j + 1], j
        assert len(call["coded"]) == len(coded) == bounds[j + 2] - bounds[j + 1], j
        np.testing.assert_array_equal(call["val"], val)  # one validation set for all
        # Pairwise disjoint: train/val, train/chunk and chunk/val.
        assert not train & set(val.tolist()), j
        assert not train & coded, j
        assert not coded & set(val.tolist()), j
        # A prefix trains on exactly the chunks before the one it codes.
        assert train == coded_so_far, j
        coded_so_far |= coded
    # Every example of the split is in exactly one of: a coded chunk (the first included)
    # or the validation set.
    assert len(coded_so_far) == bounds[-1]
    assert coded_so_far | set(val.tolist()) == set(range(NUM_TRAIN))
    assert len(coded_so_far) + n_val == NUM_TRAIN


def test_mdl_json_records_log2_k_and_consistent_totals(stub_train, tmp_path):
    cfg = tiny_config("mdl.num_chunks=4", "mdl.first_chunk=32")
    result = run_mdl(cfg, tmp_path)
    rec = json.loads((tmp_path / "mdl.json").read_text())
    assert rec["log2_num_classes"] == pytest.approx(math.log2(K), rel=1e-15)
    assert rec["num_classes"] == K and rec["units"] == "bits per sample"
    b = rec["bounds"]
    # Chunk 0: the uniform code, log2 K bits per example; the others: the stub's lengths.
    expected = [b[1] * math.log2(K)] + [(b[j + 2] - b[j + 1]) + j for j in range(len(b) - 2)]
    np.testing.assert_allclose(rec["chunk_bits"], expected, rtol=1e-12)
    assert rec["total_bits"] == pytest.approx(sum(expected), rel=1e-12)
    assert rec["mdl_bits_per_sample"] == pytest.approx(sum(expected) / b[-1], rel=1e-12)
    assert rec["best_steps"] == [10 * (j + 1) for j in range(len(b) - 2)]
    assert result.to_dict() == {k: rec[k] for k in result.to_dict()}


def _code_lengths(path):
    table = np.load(path / "mdl_code_lengths.npy")
    assert table.dtype.names == ("chunk", "index", "bits")
    return table


def test_code_lengths_file_sums_to_total_and_partitions_the_coded_examples(stub_train, tmp_path):
    cfg = tiny_config("mdl.num_chunks=5", "mdl.first_chunk=20")
    result = run_mdl(cfg, tmp_path)
    rec = json.loads((tmp_path / "mdl.json").read_text())
    table = _code_lengths(tmp_path)
    # The total recomputes exactly from the file; per chunk too.
    assert math.fsum(table["bits"]) == rec["total_bits"] == result.total_bits
    assert math.fsum(table["bits"]) / len(table) == rec["mdl_bits_per_sample"]
    b = rec["bounds"]
    for j in range(len(b) - 1):
        assert math.fsum(table["bits"][table["chunk"] == j]) == rec["chunk_bits"][j], j
    # Chunk 0: log2 K bits each; chunk j >= 1: the stub's lengths, n_j + (j - 1) in all.
    np.testing.assert_array_equal(table["bits"][table["chunk"] == 0], math.log2(K))
    for j in range(1, len(b) - 1):
        assert rec["chunk_bits"][j] == pytest.approx(b[j + 1] - b[j] + j - 1, rel=1e-12)
    # The chunk indices partition exactly the coded examples: chunk j holds the examples
    # of positions b[j]..b[j+1] of the coding order (the prefixes' next chunks), each
    # example once; no validation example is coded.
    val = set(stub_train[0]["val"].tolist())
    np.testing.assert_array_equal(np.bincount(table["chunk"]), np.diff(b))
    assert len(set(table["index"].tolist())) == len(table) == b[-1] == NUM_TRAIN - len(val)
    np.testing.assert_array_equal(table["index"][table["chunk"] == 0], stub_train[0]["train"])
    for j, call in enumerate(stub_train):
        np.testing.assert_array_equal(table["index"][table["chunk"] == j + 1], call["coded"])
    assert not val & set(table["index"].tolist())
    assert set(table["index"].tolist()) | val == set(range(NUM_TRAIN))


def test_strict_validation_sets_come_from_the_prefix(stub_train, tmp_path):
    """``mdl.validation=strict``: nothing is held out (all 1600 examples are coded); the
    validation set of prefix j is the ``max(1, round(0.1 p))`` positions of its prefix
    (``p`` examples) drawn by ``default_rng((seed, 0x3D1, j + 1))``, and the model trains
    on the rest: every label used is in the prefix, hence paid for."""
    cfg = tiny_config("mdl.num_chunks=5", "mdl.first_chunk=20", "mdl.validation=strict")
    run_mdl(cfg, tmp_path)
    rec = json.loads((tmp_path / "mdl.json").read_text())
    b = rec["bounds"]
    assert rec["validation"] == "strict" and b[-1] == NUM_TRAIN
    order = np.random.default_rng((cfg.seed, 0x3D1)).permutation(NUM_TRAIN)
    table = _code_lengths(tmp_path)
    np.testing.assert_array_equal(table["index"], order)  # every example coded, in order
    for j, call in enumerate(stub_train):
        p = b[j + 1]
        n_val = max(1, round(0.1 * p))
        pos = np.random.default_rng((cfg.seed, 0x3D1, j + 1)).choice(p, n_val, replace=False)
        val = order[np.sort(pos)]
        train = np.setdiff1d(order[:p], val)
        assert sorted(call["val"].tolist()) == sorted(val.tolist()), j
        assert sorted(call["train"].tolist()) == sorted(train.tolist()), j
        np.testing.assert_array_equal(call["coded"], order[p : b[j + 2]])
        assert len(call["train"]) + len(call["val"]) == p
        # Every label the prefix model uses is paid for: train and validation are coded
        # examples of earlier chunks, never of the chunk it codes.
        used = set(call["train"].tolist()) | set(call["val"].tolist())
        assert used == set(order[:p].tolist()) and not used & set(call["coded"].tolist())
    assert rec["num_val"] == [max(1, round(0.1 * b[j + 1])) for j in range(len(b) - 2)]


def test_num_examples_codes_the_head_of_the_shuffled_split(stub_train, tmp_path):
    """``mdl.num_examples=m``: the measure runs on the first m examples of the shuffled
    split (its last ``round(0.1 m)`` held out), in the order the whole-split run uses;
    the other examples are neither trained on, validated on nor coded."""
    m = 400
    cfg = tiny_config("mdl.num_chunks=4", "mdl.first_chunk=20", f"mdl.num_examples={m}")
    run_mdl(cfg, tmp_path)
    rec = json.loads((tmp_path / "mdl.json").read_text())
    order = np.random.default_rng((cfg.seed, 0x3D1)).permutation(NUM_TRAIN)[:m]
    n_val = round(0.1 * m)
    assert (rec["num_examples"], rec["split_size"], rec["num_val"]) == (m, NUM_TRAIN, n_val)
    assert rec["bounds"][-1] == rec["num_coded"] == m - n_val
    table = _code_lengths(tmp_path)
    np.testing.assert_array_equal(table["index"], order[: m - n_val])
    for call in stub_train:
        np.testing.assert_array_equal(call["val"], order[m - n_val :])
        used = set(call["train"].tolist()) | set(call["coded"].tolist())
        assert used <= set(order[: m - n_val].tolist())
    with pytest.raises(ValueError, match="the training split has 1600"):
        run_mdl(tiny_config(f"mdl.num_examples={NUM_TRAIN + 1}"), tmp_path / "too_many")


def test_unfinished_prefix_with_other_index_sets_is_refused(stub_train, tmp_path):
    """A prefix left unfinished by a holdout run is not resumed by a strict run (its
    checkpoints trained on other examples)."""
    cfg = tiny_config("mdl.num_chunks=4", "mdl.first_chunk=20")
    run_mdl(cfg, tmp_path)
    (tmp_path / "prefix_1" / "mdl_prefix.json").unlink()  # as if killed mid-prefix
    strict = tiny_config("mdl.num_chunks=4", "mdl.first_chunk=20", "mdl.validation=strict")
    shutil.rmtree(tmp_path / "prefix_0")  # prefix 0 is retrained; prefix 1 is unfinished
    with pytest.raises(ValueError, match="unfinished prefix with other train indices"):
        run_mdl(strict, tmp_path)


def test_finished_prefixes_are_reused_only_for_their_own_schedule_and_mode(
    stub_train, tmp_path, caplog
):
    """A finished prefix (its ``mdl_prefix.json``) is not retrained; a marker written for
    another chunk (train or coded range) or another ``mdl.validation`` is refused."""
    cfg = tiny_config("mdl.num_chunks=4", "mdl.first_chunk=20")
    out = tmp_path / "not" / "yet" / "made"  # parents are created
    with caplog.at_level(logging.INFO, logger="dsb.mdl.core"):
        first = run_mdl(cfg, out)
    b = first.bounds
    for j in range(len(b) - 2):
        rec = json.loads((out / f"prefix_{j}" / "mdl_prefix.json").read_text())
        assert rec["train"] == [0, b[j + 1]] and rec["coded"] == [b[j + 1], b[j + 2]], j
        assert f"prefix {j}: training on {b[j + 1]} examples" in caplog.text
        assert f"coding {b[j + 2] - b[j + 1]}\n" in caplog.text + "\n"
    calls = len(stub_train)
    assert run_mdl(cfg, out).to_dict() == first.to_dict()
    assert len(stub_train) == calls  # nothing retrained
    marker = out / "prefix_0" / "mdl_prefix.json"
    rec = json.loads(marker.read_text())
    hi, nxt = b[1], b[2]
    edits = [("train", [0, hi + 1]), ("train", [0, hi - 1]), ("coded", [hi, nxt + 1])]
    edits += [("coded", [hi, nxt - 1]), ("validation", "strict"), ("validation", "exact")]
    for field, value in edits:
        marker.write_text(json.dumps(rec | {field: value}))
        with pytest.raises(ValueError, match=r"another chunk schedule|mdl\.validation="):
            run_mdl(cfg, out)
    marker.write_text(json.dumps({k: v for k, v in rec.items() if k != "validation"}))
    run_mdl(cfg, out)  # a marker from before the field existed: holdout
    # A finished prefix whose per-example code lengths are gone cannot be recoded.
    report_bits_path(out / "prefix_0", rec["best_step"]).unlink()
    with pytest.raises(FileNotFoundError, match=r"delete .*mdl_prefix\.json to retrain"):
        run_mdl(cfg, out)


def test_prefix_erasure_hashes_are_recorded_and_must_agree(stub_train, tmp_path):
    """Each prefix run's ``erasure.json`` stats hash goes into its marker; prefixes that
    fitted different erasures stop the measurement."""
    cfg = tiny_config("mdl.num_chunks=4", "mdl.first_chunk=20")
    for j in range(2):
        (tmp_path / f"prefix_{j}").mkdir()
        (tmp_path / f"prefix_{j}" / "erasure.json").write_text(json.dumps({"stats_hash": "a"}))
    run_mdl(cfg, tmp_path)
    for j in range(2):
        rec = json.loads((tmp_path / f"prefix_{j}" / "mdl_prefix.json").read_text())
        assert rec["erasure_stats_hash"] == "a"
    other = tmp_path / "other"
    for j, h in enumerate("ab"):
        (other / f"prefix_{j}").mkdir(parents=True)
        (other / f"prefix_{j}" / "erasure.json").write_text(json.dumps({"stats_hash": h}))
    with pytest.raises(RuntimeError, match="different erasures"):
        run_mdl(cfg, other)


def test_chunk_bounds_and_tables_refuse_what_they_cannot_represent():
    from dsb.mdl.core import chunk_bounds, mdl_from_chunks, mdl_from_code_lengths

    for first in (0, 100, 150):  # first_chunk must be in [1, n)
        with pytest.raises(ValueError, match="first_chunk"):
            chunk_bounds(100, 3, first)
    with pytest.raises(ValueError, match=r"^3 chunks need 2 coded lengths$"):
        mdl_from_chunks([0, 10, 20, 40], [1.0], K)
    for chunks in ([0, 1, 0], [1, 1, 2], [-1, 0, 1]):  # out of order; not from chunk 0
        table = np.zeros(3, CODE_LENGTHS_DTYPE)
        table["chunk"] = chunks
        with pytest.raises(ValueError, match="chunk order from chunk 0"):
            mdl_from_code_lengths(table, K)
