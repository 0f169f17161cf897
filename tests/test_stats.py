"""The corrected resampled t-test (Nadeau & Bengio) against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from search.select import stats as st
from search.select.stats import corrected_resampled_ttest


def test_ratio():
    assert st.test_train_ratio(5) == pytest.approx(1 / 4)
    assert st.test_train_ratio(0, 0.2) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        st.test_train_ratio(1)


def test_two_repeats_of_three_folds_by_hand():
    # 2 x 3-fold: n = 6 paired scores, n_test/n_train = 1/2
    a = np.array([0.80, 0.70, 0.90, 0.75, 0.85, 0.80])
    b = np.array([0.70, 0.70, 0.80, 0.70, 0.75, 0.70])
    d = [0.10, 0.00, 0.10, 0.05, 0.10, 0.10]           # mean 0.075
    mean = sum(d) / 6
    var = sum((x - mean) ** 2 for x in d) / 5           # = 0.001750
    assert mean == pytest.approx(0.075) and var == pytest.approx(0.00175)
    t = 0.075 / math.sqrt((1 / 6 + 1 / 2) * 0.00175)    # = 2.1958
    res = corrected_resampled_ttest(a, b, 1 / 2)
    assert res.t == pytest.approx(t) and res.t == pytest.approx(2.1958, abs=1e-4)
    assert res.p == pytest.approx(2 * sps.t.sf(t, 5)) and res.p == pytest.approx(0.0794, abs=1e-3)
    plain = sps.ttest_rel(a, b)                         # the uncorrected test is far more confident
    assert plain.pvalue < 0.01 < res.p
    assert res.n == 6 and res.mean_diff == pytest.approx(0.075)


def test_degenerate_cases():
    same = corrected_resampled_ttest(np.ones(4), np.ones(4), 0.25)
    assert same.t is None and same.p is None and same.mean_diff == 0
    assert corrected_resampled_ttest(np.array([1.0]), np.array([0.0]), 0.25).p is None
    with pytest.raises(ValueError):
        corrected_resampled_ttest(np.ones(3), np.ones(4), 0.25)
