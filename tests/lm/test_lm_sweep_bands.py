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
