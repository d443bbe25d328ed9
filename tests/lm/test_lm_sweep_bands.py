"""experiments/lm_ngram/plot_sweep.py: the band over seeds is a bootstrap of the mean."""

import numpy as np
import pandas as pd
import pytest
from dsb_testing import ROOT

from dsb.lm.ngram import bootstrap_ci


def _plot_sweep():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "lm_ngram_plot_sweep", ROOT / "experiments" / "lm_ngram" / "plot_sweep.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_seed_band_is_the_bootstrap_interval_of_the_mean():
    v = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    df = pd.DataFrame(
        {
            "step": [8] * 5 + [16],
            "width": [32] * 5 + [32],
            "ngram/bigram/loss": [*v, 7.0],
        }
    )
    s = _plot_sweep().seed_bootstrap(df, ["ngram/bigram/loss"], ["width"])
    at8 = s[s["step"] == 8].iloc[0]
    lo, hi = bootstrap_ci(v, 1000)
    assert at8["ngram/bigram/loss/mean"] == pytest.approx(4.0)
    assert (at8["ngram/bigram/loss/lo"], at8["ngram/bigram/loss/hi"]) == pytest.approx((lo, hi))
    # narrower than the min-max range of the seeds, and around the mean
    assert 1.0 < lo < 4.0 < hi < 10.0 and at8["ngram/bigram/loss/n"] == 5
    at16 = s[s["step"] == 16].iloc[0]  # one run: no spread
    assert at16["ngram/bigram/loss/lo"] == at16["ngram/bigram/loss/hi"] == 7.0


def test_sweep_figure_adds_a_js_row_when_logged(tmp_path):
    rows = []
    for seed in (0, 1, 2):
        for step in (0, 1, 2, 4, 8):
            r = {"run_dir": f"r{seed}", "seed": seed, "step": step}
            for i, name in enumerate(("unigram", "bigram")):
                r[f"ngram/{name}/loss"] = 5.0 - i - step / 10 + seed / 100
                r[f"ngram/kl/{name}"] = 1.0 / (step + 1 + i)
                r[f"ngram/js/{name}"] = 0.1 / (step + 1 + i)
            rows.append(r)
    mod = _plot_sweep()
    figs = []
    mod.save_figure = lambda fig, out_dir, stem: figs.append(fig) or [stem]
    assert mod.plot(pd.DataFrame(rows), tmp_path) == ["ngram_across_time"]
    axes = figs[0].axes
    titles = [ax.get_title() for ax in axes]
    assert "JS(bigram, model)" in titles and "KL(unigram || model)" in titles
    assert len(axes) == 3 * 2  # loss, KL and JS rows; unigram and bigram columns
