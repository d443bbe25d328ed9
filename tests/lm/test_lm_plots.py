"""The n-gram probe figures draw from metrics.jsonl-like records."""

import json

import numpy as np
import pytest

from dsb.lm.plots import plot_ngram_probes, plot_position_losses
from dsb.metrics import read_metrics


def _records():
    out = []
    for step in [0, 1, 2, 4, 8, 16]:
        r = {"step": step, "train/loss": 1.0}
        for i, name in enumerate(["unigram", "bigram", "trigram"]):
            loss = 5.0 - i - np.log2(step + 1) / 4
            r.update({f"ngram/{name}/loss": loss, f"ngram/{name}/loss_lo": loss - 0.1})
            r.update({f"ngram/{name}/loss_hi": loss + 0.1, f"ngram/{name}/floor": 3.0 - i})
            r.update({f"ngram/kl/{name}": 1.0 / (step + 1 + i)})
        out.append(r)
    return out


def test_plots_have_lines_floors_and_log_steps(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in _records()))
    fig = plot_ngram_probes(read_metrics(path), path=tmp_path / "fig.png")
    loss_ax, kl_ax = fig.axes
    labels = [line.get_label() for line in loss_ax.get_lines()]
    assert labels.count("bigram entropy floor") == 1 and "trigram sequences" in labels
    floors = [line for line in loss_ax.get_lines() if line.get_linestyle() == "--"]
    assert sorted(line.get_ydata()[0] for line in floors) == [1.0, 2.0, 3.0]
    assert loss_ax.get_xscale() == "symlog" and len(kl_ax.get_lines()) == 3
    assert (tmp_path / "fig.png").stat().st_size > 1000


def test_prefix_selects_one_entry_of_several():
    recs = [r | {"other/unigram/loss": 4.0, "other/kl/unigram": 0.5} for r in _records()]
    with pytest.raises(ValueError, match="several n-gram probe prefixes"):
        plot_ngram_probes(recs)
    fig = plot_ngram_probes(recs, prefix="other/")
    loss_ax, kl_ax = fig.axes
    assert [line.get_label() for line in loss_ax.get_lines()] == ["unigram sequences"]
    assert [line.get_label() for line in kl_ax.get_lines()] == ["KL(unigram || model)"]


def test_position_figure_has_one_line_per_checkpoint_and_the_floor(tmp_path):
    from dsb.lm.plots import ngram_probe_figures

    recs = _records()
    for r in recs:
        for name in ("unigram", "bigram", "trigram", "text"):
            r.update({f"ngram/{name}/loss_t{p}": 4.0 - p / 100 for p in (0, 1, 3, 7, 14)})
        r.update({f"ngram/js/{n}": 0.1 / (r["step"] + 1) for n in ("unigram", "bigram")})
    paths = ngram_probe_figures(recs, "ngram", tmp_path)
    assert [p.name for p in paths] == ["ngram_probes.png", "ngram_positions.png"]
    fig = plot_position_losses(recs, prefix="ngram/")
    assert [ax.get_title() for ax in fig.axes] == [
        "unigram sequences", "bigram sequences", "trigram sequences", "validation text"
    ]  # fmt: skip
    uni = fig.axes[0].get_lines()
    assert len(uni) == 6 + 1  # 6 checkpoints and the dashed floor
    np.testing.assert_allclose(uni[0].get_xdata(), [0, 1, 3, 7, 14])
    assert uni[-1].get_linestyle() == "--" and uni[-1].get_ydata()[0] == 3.0
    assert len(fig.axes[3].get_lines()) == 6  # no floor for real text
    # the JS panel appears when JS was logged, with its log 2 ceiling
    three = plot_ngram_probes(recs, prefix="ngram/")
    assert len(three.axes) == 3
    labels = [line.get_label() for line in three.axes[2].get_lines()]
    assert labels == ["JS(unigram, model)", "JS(bigram, model)", "log 2 (maximum)"]
