"""The n-gram probe figures draw from metrics.jsonl-like records."""

import json

import numpy as np
import pytest

from dsb.lm.plots import plot_ngram_probes
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
