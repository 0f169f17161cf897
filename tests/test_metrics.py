"""classification_metrics against scikit-learn and hand-computed cases; folds that miss a class."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from trainables.metrics import METRICS, classification_metrics, scalar_metrics


def _random_case(n: int, c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(c), rng.integers(0, c, n - c)])
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probs


@pytest.mark.parametrize("n, c, seed", [(30, 3, 0), (40, 4, 1), (25, 2, 2)])
def test_against_scikit_learn(n, c, seed):
    labels, probs = _random_case(n, c, seed)
    pred = probs.argmax(axis=1)
    m = classification_metrics(labels, probs)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
    assert m["weighted_f1"] == pytest.approx(skm.f1_score(labels, pred, average="weighted"))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(labels, pred, average="macro"))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, pred))
    expected_auc = skm.roc_auc_score(labels, probs[:, 1]) if c == 2 else skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert m["auroc"] == pytest.approx(expected_auc)
    prec, rec, _, sup = skm.precision_recall_fscore_support(labels, pred, labels=list(range(c)), zero_division=0)
    for k in range(c):
        entry = m["per_class"][str(k)]
        assert entry["precision"] == pytest.approx(prec[k]) and entry["recall"] == pytest.approx(rec[k]) and entry["support"] == sup[k]
    assert m["confusion_matrix"] == skm.confusion_matrix(labels, pred).tolist()


def test_hand_computed_binary_case():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.35, 0.65], [0.2, 0.8]])
    m = classification_metrics(labels, probs, ["neg", "pos"])
    # predictions 0, 1, 1, 1: one false positive
    assert m["accuracy"] == 0.75
    assert m["confusion_matrix"] == [[1, 1], [0, 2]]
    assert m["per_class"]["pos"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8), "support": 2}
    assert m["per_class"]["neg"]["recall"] == 0.5
    assert m["balanced_accuracy"] == 0.75
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    # positive scores 0.65, 0.8 vs negatives 0.1, 0.6: every pair ordered correctly
    assert m["auroc"] == 1.0


def test_a_class_absent_from_the_fold_gives_finite_metrics():
    labels = np.array([0, 0, 1, 1, 0])  # class 2 absent, and predicted once
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1], [0.6, 0.3, 0.1]])
    m = classification_metrics(labels, probs, ["a", "b", "c"])
    for key in METRICS:
        assert math.isfinite(m[key]), key
    assert m["per_class"]["c"]["support"] == 0 and m["per_class"]["c"]["precision"] == 0.0
    # AUROC averages one-vs-rest over the classes present (a, b), each on its own column
    expected = np.mean([skm.roc_auc_score(labels == k, probs[:, k]) for k in (0, 1)])
    assert m["auroc"] == pytest.approx(expected)
    assert len(m["confusion_matrix"]) == 3


def test_a_single_class_fold_gives_finite_metrics():
    labels = np.array([1, 1, 1])
    probs = np.array([[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
    m = classification_metrics(labels, probs)
    assert m["auroc"] == 0.5  # undefined with one class: a neutral value, never NaN
    assert all(math.isfinite(v) for v in scalar_metrics(m).values())
    assert m["accuracy"] == pytest.approx(2 / 3)


def test_scalar_metrics_are_the_searchable_ones():
    labels, probs = _random_case(20, 3, 5)
    scalars = scalar_metrics(classification_metrics(labels, probs))
    assert set(scalars) == set(METRICS) and all(isinstance(v, float) for v in scalars.values())
