"""dsb.analysis on a tiny run, and every notebook in notebooks/ executed against tiny runs."""

import logging
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
from dsb_testing import ROOT, TINY_LM, tiny_config
from nbclient import NotebookClient

from dsb.analysis import load_checkpoint, reevaluate, restored_snapshot
from dsb.metrics import read_metrics
from dsb.train import train

NOTEBOOKS = ROOT / "notebooks"


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A finished tiny MLP [8] run on digits with held-out and DSB probe evaluations."""
    mp = pytest.MonkeyPatch()
    # As the tfds_dir fixture; kept for the module: the notebook kernels read it too.
    mp.setenv("TFDS_DATA_DIR", str(tmp_path_factory.getbasetemp() / "tfds"))
    run = tmp_path_factory.mktemp("nb") / "digits"
    cfg = tiny_config(
        "model.kwargs.widths=[8]",
        "evals.dsb.num_samples=100",
        "evals.dsb.maxent_sets=[ics,gaussian]",
        "evals.dsb.ot_sets=[mean_shift]",
        "train.total_steps=8",
    )
    train(cfg, run)
    yield run
    mp.undo()


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("HOME", str(tmp_path_factory.mktemp("home")))  # corpus cache; kernels too
    run = tmp_path_factory.mktemp("nb") / "lm"
    cfg = tiny_config(*TINY_LM, "train.total_steps=8")
    train(cfg, run)
    yield run
    mp.undo()


def test_reevaluate_restored_checkpoints_matches_logged_metrics(digits_run):
    df = reevaluate(digits_run, steps=[0, 8])
    logged = {r["step"]: r for r in read_metrics(digits_run)}
    assert df["step"].tolist() == [0, 8]
    names = [c for c in df.columns if c.startswith(("val/", "dsb/"))]
    assert "val/accuracy" in names and "dsb/maxent/gaussian/loss" in names
    assert "dsb/ot/mean_shift/target_accuracy" in names
    for _, row in df.iterrows():
        for name in names:  # same model, same cached probe sets -> the same numbers
            assert row[name] == pytest.approx(logged[row["step"]][name], rel=1e-5), name
    # The context replays training: the batch of update 3 is the trainer's.
    from dsb.analysis import eval_context
    from dsb.data.loader import BatchSampler

    run = load_checkpoint(digits_run, step=8)
    ctx = eval_context(run, digits_run)
    assert ctx.config == run.config and ctx.num_classes == 10 and ctx.input_shape == (8, 8, 1)
    want = BatchSampler(ctx.load_split("train"), 32, seed=run.config.data.shuffle_seed)(3)
    got = ctx.train_batch(3)
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["label"], want["label"])
    # The snapshot's predict is the restored model, batched (3 rows, batch size 2).
    x = np.random.default_rng(0).random((3, 8, 8, 1), np.float32)
    got = restored_snapshot(run, eval_batch_size=2).predict(x)
    np.testing.assert_allclose(got, np.asarray(run.model(x)), rtol=1e-5, atol=1e-6)


def _execute(name: str, run_dir: Path, out_dir: Path, monkeypatch) -> str:
    monkeypatch.setenv("DSB_RUN_DIR", str(run_dir))
    monkeypatch.setenv("DSB_OUT_DIR", str(out_dir))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    # Stored without outputs, so diffs stay readable.
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
    NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(out_dir)}}
    ).execute()  # raises CellExecutionError on the first failing cell
    text = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            text.append(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")))
    return "\n".join(text)


def test_reevaluate_opens_checkpoints_without_orbax_read_only_warnings(digits_run, caplog):
    """One read-only checkpoint manager per run, its restated read-only warnings silenced:
    re-evaluating 5 checkpoints used to print 2 orbax warnings for each."""
    caplog.set_level(logging.INFO)
    df = reevaluate(digits_run, evals={"val": {"type": "classification"}})
    assert list(df["step"]) == [0, 1, 2, 4, 8]
    noise = [r.getMessage() for r in caplog.records if "read only" in r.getMessage().lower()]
    noise += [r.getMessage() for r in caplog.records if "read_only=True" in r.getMessage()]
    assert not noise, noise


def test_notebooks_folder_is_covered():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(
        ["checkpoint_analysis", "ngram_analysis", "training_jacobian"]
    )


def test_checkpoint_analysis_notebook(digits_run, tmp_path, monkeypatch):
    out = _execute("checkpoint_analysis", digits_run.parent, tmp_path, monkeypatch)
    assert "steps saved: [0, 1, 2, 4, 8] | restored: 8" in out
    # Re-evaluated and logged numbers agree in the printed comparison.
    pairs = re.findall(r"(\S+)\s+re-evaluated (\S+)\s+logged (\S+)", out)
    assert len(pairs) >= 5 and all(a == b for _, a, b in pairs), pairs
    # The figures as plot_run draws them: curves.png, the dsb_probes figures of "dsb".
    for name in ("curves", "maxent_across_time", "ot_across_time"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000


def test_ngram_analysis_notebook(lm_run, tmp_path, monkeypatch):
    out = _execute("ngram_analysis", lm_run, tmp_path, monkeypatch)
    assert (tmp_path / "ngram_probes.png").stat().st_size > 10_000
    pairs = re.findall(r"(\S+)\s+re-evaluated (\S+)\s+logged (\S+)", out)
    assert {p[0] for p in pairs} >= {"ngram/bigram/loss", "ngram/text/loss"}
    assert all(a == b for _, a, b in pairs), pairs


@pytest.mark.slow  # ~25 s on 2 busy cores: two dense 610 x 610 training Jacobians
def test_training_jacobian_notebook(digits_run, tmp_path, monkeypatch):
    out = _execute("training_jacobian", digits_run, tmp_path, monkeypatch)
    # MLP 64-8-10: 64*8 + 8 + 8*10 + 10 parameters, 2 epochs of 4 minibatches.
    assert "P = 610 parameters, T = 8 steps" in out
    overlaps = re.findall(r"bulk overlap (\S+)\s+random (\S+)", out)
    assert len(overlaps) == 4
    assert all(0 <= float(a) <= 1 and 0 <= float(b) <= 1 for a, b in overlaps)
    # The k = P/2 bulks of two inits overlap more than random subspaces do.
    assert float(overlaps[-1][0]) > float(overlaps[-1][1])


@pytest.mark.slow  # ~60-100 s: the dense and matrix-free Jacobian, twice each
def test_reevaluate_honours_when_and_replays_the_training_jacobian(tmp_path, tfds_dir):
    """A run whose evaluators use ``when`` (reevaluate used to refuse the key), with the
    training-Jacobian evaluator, dense and matrix-free, which needs the step-0 parameters."""
    run = tmp_path / "jac"
    cfg = tiny_config(
        "experiment=jacobian_digits",
        "model.kwargs.widths=[8]",
        "train.total_steps=8",
        "evals.jac.when=[0,8]",
        "+evals.train_acc={type: classification, split: train, when: last}",
        # The matrix-free path, which every model above max_dense_params takes. Its counts
        # are not checked here: a budget of ~1 P products (the default 10 P took ~80 s).
        "+evals.jacmf={type: training_jacobian, when: [8], max_dense_params: 0,"
        " count_max_products: 600}",
    )
    train(cfg, run)
    logged = {r["step"]: r for r in read_metrics(run)}
    keys = ("jac", "train_acc", "jacmf")
    df = reevaluate(run, steps=[0, 4, 8], evals={k: cfg.evals[k] for k in keys})
    rows = {int(r["step"]): r for _, r in df.iterrows()}
    assert np.isnan(rows[0]["train_acc/accuracy"]) and np.isnan(rows[4]["train_acc/accuracy"])
    assert rows[8]["train_acc/accuracy"] == pytest.approx(logged[8]["train_acc/accuracy"])
    assert np.isnan(rows[4]["jac/sigma_1"])
    for step in (0, 8):
        assert rows[step]["jac/replay_rel_error"] < 1e-5
        assert rows[step]["jac/sigma_1"] == pytest.approx(logged[step]["jac/sigma_1"], rel=1e-5)
    assert rows[8]["jac/sigma_1"] > 1.01
    assert np.isnan(rows[0]["jacmf/sigma_1"])
    assert rows[8]["jacmf/replay_rel_error"] < 1e-5
    assert rows[8]["jacmf/sigma_1"] == pytest.approx(logged[8]["jacmf/sigma_1"], rel=1e-5)
    assert rows[8]["jacmf/sigma_1"] == pytest.approx(rows[8]["jac/sigma_1"], rel=1e-3)
