"""classification_metrics against scikit-learn (the reference, to 1e-9) and hand-computed cases;
folds that miss a class, folds of one class, tied probabilities."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from trainables.metrics import METRICS, average_ranks, classification_metrics, scalar_metrics


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
    expected_auc = (skm.roc_auc_score(labels, probs[:, 1]) if c == 2
                    else skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    assert m["auroc"] == pytest.approx(expected_auc)
    prec, rec, _, sup = skm.precision_recall_fscore_support(labels, pred, labels=list(range(c)), zero_division=0)
    for k in range(c):
        entry = m["per_class"][str(k)]
        assert entry["precision"] == pytest.approx(prec[k]) and entry["recall"] == pytest.approx(rec[k])
        assert entry["support"] == sup[k]
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


def _reference(labels: np.ndarray, probs: np.ndarray) -> dict:
    """Today's semantics through scikit-learn's own functions."""
    import warnings

    c = probs.shape[1]
    classes = list(range(c))
    pred = probs.argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prec, rec, f1, sup = skm.precision_recall_fscore_support(labels, pred, labels=classes, zero_division=0)
        present = np.unique(labels)
        if len(present) < 2:
            auc = 0.5
        elif c == 2:
            auc = skm.roc_auc_score(labels, probs[:, 1])
        else:
            auc = float(np.mean([skm.roc_auc_score(labels == k, probs[:, k]) for k in present]))
        return {
            "accuracy": skm.accuracy_score(labels, pred),
            "weighted_f1": skm.f1_score(labels, pred, labels=classes, average="weighted", zero_division=0),
            "macro_f1": skm.f1_score(labels, pred, labels=classes, average="macro", zero_division=0),
            "balanced_accuracy": skm.balanced_accuracy_score(labels, pred),
            "auroc": auc, "precision": prec, "recall": rec, "f1": f1, "support": sup,
            "confusion_matrix": skm.confusion_matrix(labels, pred, labels=classes).tolist(),
        }


def _randomized_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random fold: 2 to 6 classes, 1 to 60 samples, some classes absent or a single class, and
    probabilities rounded to few levels so that ties (also across classes in argmax) are common."""
    c = int(rng.integers(2, 7))
    n = int(rng.integers(1, 61))
    kind = rng.integers(0, 4)
    if kind == 0:  # one class in the fold
        labels = np.full(n, rng.integers(0, c))
    elif kind == 1:  # a random subset of the classes present
        pool = rng.choice(c, size=int(rng.integers(1, c + 1)), replace=False)
        labels = rng.choice(pool, size=n)
    else:
        labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + rng.uniform(0, 3) * np.eye(c)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if rng.random() < 0.5:  # coarse probabilities: many tied scores
        probs = np.round(probs, int(rng.integers(0, 3)))
    return labels, probs


@pytest.mark.parametrize("seed", range(8))
def test_randomized_cases_equal_scikit_learn(seed):
    rng = np.random.default_rng(1000 + seed)
    ties = absent = single = 0
    for _ in range(60):
        labels, probs = _randomized_case(rng)
        c = probs.shape[1]
        ref = _reference(labels, probs)
        m = classification_metrics(labels, probs)
        for key in METRICS:
            assert m[key] == pytest.approx(ref[key], abs=1e-9, rel=0), (key, labels.tolist(), probs.tolist())
        for k in range(c):
            entry = m["per_class"][str(k)]
            for field in ("precision", "recall", "f1"):
                assert entry[field] == pytest.approx(ref[field][k], abs=1e-9, rel=0)
            assert entry["support"] == ref["support"][k]
        assert m["confusion_matrix"] == ref["confusion_matrix"]
        ties += len(np.unique(probs)) < probs.size
        absent += len(np.unique(labels)) < c
        single += len(np.unique(labels)) == 1
    assert ties and absent and single  # the cases the rewrite must get right did occur


def test_tied_scores_give_half_credit():
    labels = np.array([0, 1, 0, 1])
    probs = np.array([[0.5, 0.5], [0.5, 0.5], [0.8, 0.2], [0.2, 0.8]])
    # pairs (pos, neg): (1, 0) tie, (1, 2) win, (3, 0) win, (3, 2) win -> 3.5 / 4
    assert classification_metrics(labels, probs)["auroc"] == pytest.approx(0.875, abs=1e-12)
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_a_class_only_predicted_counts_in_f1_not_in_balanced_accuracy():
    labels = np.array([0, 0, 1, 1])
    probs = np.eye(3)[[0, 2, 1, 1]]  # class 2 absent from labels, predicted once
    m = classification_metrics(labels, probs)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)  # over classes 0 and 1 only
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)   # over all three classes
