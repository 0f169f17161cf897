"""Significance of a difference between two models scored on the same resampled folds.

A plain paired t-test over cross-validation folds overstates significance: the folds share most of
their training data, so the fold scores are correlated and their variance underestimates the
variance of the mean. Nadeau & Bengio (2003, "Inference for the generalization error") correct
the variance of the mean of the n = R x k paired differences d_j by the ratio of test to training
size of one split::

    t = mean(d) / sqrt((1/n + n_test/n_train) * var(d))        var with ddof = 1, df = n - 1

For k-fold CV n_test/n_train = 1/(k-1); for a hold-out split with fraction f it is f/(1-f).
(Bouckaert & Frank 2004 call this the "corrected repeated k-fold cv test".)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

TEST_NAME = "Nadeau-Bengio corrected resampled t-test"


@dataclass(frozen=True)
class TestResult:
    mean_diff: float
    t: float | None      # None when every difference is equal (the variance is 0)
    p: float | None      # two-sided
    n: int


def test_train_ratio(folds: int, val_fraction: float = 0.2) -> float:
    """n_test / n_train of one split: 1/(k-1) for k-fold, f/(1-f) for a hold-out split (``folds`` 0)."""
    if folds == 0:
        return val_fraction / (1.0 - val_fraction)
    if folds < 2:
        raise ValueError(f"folds must be 0 (hold-out) or at least 2, got {folds}")
    return 1.0 / (folds - 1)


def corrected_resampled_ttest(a: np.ndarray, b: np.ndarray, ratio: float) -> TestResult:
    """Two-sided corrected resampled t-test of ``a - b`` over paired split scores (same splits, same
    order). ``ratio`` = n_test / n_train of one split (:func:`test_train_ratio`)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores must be two 1-d arrays of one length, got {a.shape} and {b.shape}")
    d = a - b
    n = len(d)
    mean = float(d.mean()) if n else float("nan")
    if n < 2:
        return TestResult(mean, None, None, n)
    var = float(d.var(ddof=1))
    if var <= 0.0 or not math.isfinite(var):
        return TestResult(mean, None, None, n)
    t = mean / math.sqrt((1.0 / n + ratio) * var)
    p = float(2.0 * stats.t.sf(abs(t), df=n - 1))
    return TestResult(mean, float(t), p, n)
