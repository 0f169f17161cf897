"""Classification metrics from labels and class probabilities, safe for folds that miss a class."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

METRICS: dict[str, str] = {
    "accuracy": "max",
    "weighted_f1": "max",
    "macro_f1": "max",
    "balanced_accuracy": "max",
    "auroc": "max",
}
"""Scalar metrics a search can optimise, with their natural direction."""


def classification_metrics(labels: np.ndarray, probs: np.ndarray, class_names: list[str] | None = None) -> dict:
    """All metrics from integer labels [N] and probabilities [N, C].

    Scalars: accuracy, weighted_f1, macro_f1, balanced_accuracy, auroc (binary AUROC for two
    classes, macro one-vs-rest otherwise, over the classes present in ``labels``; 0.5 when fewer
    than two classes are present, so no NaN reaches a search objective). Also ``per_class``
    (precision/recall/f1/support per class name) and ``confusion_matrix`` (list of lists, rows =
    true class). F1 averages run over all C classes (a class absent from the fold and never
    predicted counts as 0 with ``zero_division=0``).
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = probs.shape[1]
    names = class_names or [str(c) for c in range(n_classes)]
    classes = np.arange(n_classes)
    pred = probs.argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prec, rec, f1, sup = precision_recall_fscore_support(labels, pred, labels=classes, zero_division=0)
        out = {
            "accuracy": float(accuracy_score(labels, pred)),
            "weighted_f1": float(f1_score(labels, pred, labels=classes, average="weighted", zero_division=0)),
            "macro_f1": float(f1_score(labels, pred, labels=classes, average="macro", zero_division=0)),
            "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
            "auroc": _auroc(labels, probs),
        }
    out["per_class"] = {
        names[c]: {"precision": float(prec[c]), "recall": float(rec[c]), "f1": float(f1[c]), "support": int(sup[c])}
        for c in classes
    }
    out["confusion_matrix"] = confusion_matrix(labels, pred, labels=classes).tolist()
    return out


def _auroc(labels: np.ndarray, probs: np.ndarray) -> float:
    present = np.unique(labels)
    if len(present) < 2:
        return 0.5
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    # one-vs-rest over the classes present, each scored on its own column
    scores = [roc_auc_score(labels == c, probs[:, c]) for c in present]
    return float(np.mean(scores))


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """Only the scalar entries (what a search reports per epoch)."""
    return {k: v for k, v in metrics.items() if k in METRICS}
