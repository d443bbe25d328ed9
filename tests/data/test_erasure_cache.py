"""The erased-split cache (``dsb.data.transforms.cached_erase_split``), by value: a loaded
split is a fresh fit bit for bit, every input is in the key, and the prefix runs of an MDL
value fit the erasure once."""

import dataclasses
import json
import math

import numpy as np
import pytest
from dsb_testing import tiny_config

import dsb.stats.erasure
from dsb.data.digits import digits_arrays
from dsb.data.transforms import (
    ERASURE_TOL,
    cached_erase_split,
    erase_split_with_report,
    erased_cache_key,
)

pytestmark = pytest.mark.usefixtures("one_blas_thread")


@pytest.fixture(scope="module")
def digits_split():
    x, y = digits_arrays()["train"]
    return {"image": x, "label": y}


@pytest.fixture
def count_fits(monkeypatch):
    """The number of erasers fitted (``dsb.stats.erasure.fit_eraser`` calls)."""
    calls = []
    fit = dsb.stats.erasure.fit_eraser

    def counting(kind, stats, **kw):
        calls.append(kind)
        return fit(kind, stats, **kw)

    monkeypatch.setattr(dsb.stats.erasure, "fit_eraser", counting)
    return calls


@pytest.mark.parametrize("kind", ["leace", "qleace"])
def test_loaded_split_equals_a_fresh_fit(digits_split, kind, tmp_path, count_fits):
    fresh, report, eraser = erase_split_with_report(digits_split, kind, 10, return_eraser=True)
    assert count_fits == [kind]
    built = cached_erase_split(digits_split, kind, 10, cache_dir=tmp_path / "c")
    loaded = cached_erase_split(
        digits_split, kind, 10, report_path=tmp_path / "erasure.json", cache_dir=tmp_path / "c"
    )
    assert count_fits == [kind, kind]  # built once, then loaded
    assert (built[3], loaded[3]) == (False, True)
    for out, rep, er, _ in (built, loaded):
        assert out.keys() == fresh.keys()
        assert out["image"].dtype == fresh["image"].dtype == np.float32
        np.testing.assert_array_equal(out["image"], fresh["image"])  # exact, not close
        np.testing.assert_array_equal(out["label"], fresh["label"])
        assert rep == report  # the statistics hash included
        assert type(er) is type(eraser)
        for f in dataclasses.fields(eraser):
            a, b = getattr(er, f.name), getattr(eraser, f.name)
            if isinstance(b, np.ndarray):
                assert a.dtype == b.dtype
                np.testing.assert_array_equal(a, b)
            else:
                assert a == b
    assert json.loads((tmp_path / "erasure.json").read_text()) == report
    # The loaded eraser moves other data exactly as the fitted one does.
    x, y = digits_arrays()["test"]
    flat = x.reshape(len(y), -1).astype(np.float64)
    np.testing.assert_array_equal(loaded[2](flat, y), eraser(flat, y))


def _variants(split):
    """(name, data, kind, num_classes, shrinkage, tol): the base and one change each."""
    base = (split, "qleace", 10, None, ERASURE_TOL)
    pixel = split["image"].copy()
    pixel.flat[123] += 1 / 16
    label = split["label"].copy()
    label[7] = (label[7] + 1) % 10
    return {
        "base": base,
        "kind": (split, "leace", 10, None, ERASURE_TOL),
        "num_classes": (split, "qleace", 11, None, ERASURE_TOL),
        "shrinkage": (split, "qleace", 10, [1.0, 0.05], ERASURE_TOL),
        "shrinkage_a": (split, "qleace", 10, [0.9, 0.05], ERASURE_TOL),
        "shrinkage_b": (split, "qleace", 10, [1.0, 0.1], ERASURE_TOL),
        "tol": (split, "qleace", 10, None, 1e-5),
        "pixel": ({**split, "image": pixel}, "qleace", 10, None, ERASURE_TOL),
        "label": ({**split, "label": label}, "qleace", 10, None, ERASURE_TOL),
        "dtype": (
            {**split, "image": split["image"].astype(np.float64)}, "qleace", 10, None, ERASURE_TOL
        ),
        "order": (
            {k: v[::-1] for k, v in split.items()}, "qleace", 10, None, ERASURE_TOL
        ),
    }  # fmt: skip


def test_every_option_and_the_data_are_in_the_key(digits_split, tmp_path, count_fits):
    keys = {name: erased_cache_key(*v) for name, v in _variants(digits_split).items()}
    assert len(set(keys.values())) == len(keys), keys
    # The same inputs give the same key (a list and a tuple of the same shrinkage too).
    assert erased_cache_key(digits_split, "qleace", 10, [1, 0.05], ERASURE_TOL) == keys["shrinkage"]
    # Through the cache: a shrunk erasure after the unshrunk one is fitted, not loaded.
    c = tmp_path / "c"
    _, rep0, _, loaded0 = cached_erase_split(digits_split, "qleace", 10, cache_dir=c)
    _, rep1, _, loaded1 = cached_erase_split(digits_split, "qleace", 10, [1.0, 0.05], cache_dir=c)
    assert (loaded0, loaded1) == (False, False) and len(count_fits) == 2
    assert rep0["shrinkage"] is None and rep1["shrinkage"] == [1.0, 0.05]
    assert rep0["stats_hash"] != rep1["stats_hash"]


@pytest.mark.usefixtures("tfds_dir", "fresh_user_cache")
def test_mdl_prefix_runs_fit_the_erasure_once(tmp_path, monkeypatch, count_fits):
    """Each prefix run builds its data as the trainer does (``RunContext``, which writes
    ``erasure.json``); the first fits the erasure, the others load it, and ``run_mdl``
    still finds one statistics hash in every prefix."""
    import dsb.train
    from dsb.data.sources import load_split
    from dsb.early_stopping import report_bits_path
    from dsb.mdl import run_mdl
    from dsb.run_context import RunContext

    seen = []

    def fake_train(cfg, run_dir):
        ctx = RunContext(cfg, run_dir)
        seen.append(ctx.train_data["image"])  # the erased prefix
        coded = np.load(cfg.train.early_stopping.report_indices["next_chunk"])
        best = {"step": 10, "val/loss": 1.0, "next_chunk/sum_bits": float(len(coded))}
        (run_dir / "early_stopping.json").write_text(json.dumps({"best": best}))
        path = report_bits_path(run_dir, 10)
        path.parent.mkdir()
        np.savez(path, next_chunk_indices=coded, next_chunk_bits=np.ones(len(coded)))

    monkeypatch.setattr(dsb.train, "train", fake_train)
    cfg = tiny_config("data.erasure=qleace", "mdl.num_chunks=4", "mdl.first_chunk=32")
    result = run_mdl(cfg, tmp_path)
    assert len(seen) == 3 and count_fits == ["qleace"]  # three prefixes, one fit
    hashes = {
        json.loads((tmp_path / f"prefix_{j}" / "erasure.json").read_text())["stats_hash"]
        for j in range(3)
    }
    markers = [
        json.loads((tmp_path / f"prefix_{j}" / "mdl_prefix.json").read_text()) for j in range(3)
    ]
    assert len(hashes) == 1 and {m["erasure_stats_hash"] for m in markers} == hashes
    assert math.isfinite(result.mdl_bits_per_sample)
    # The prefixes trained on the erased split fitted on the whole split: the rows a
    # fresh fit gives them.
    full, _ = erase_split_with_report(load_split("digits", "train"), "qleace", 10)
    for j, x in enumerate(seen):
        idx = np.load(tmp_path / f"prefix_{j}" / "train_indices.npy")
        np.testing.assert_array_equal(x, full["image"][idx])
