"""Simple reference models every study is compared with (``--references``, default ``logreg,rf,hgb``).

A tuned multimodal network on a few hundred patients has to beat what an untuned linear model or
random forest scores on the same folds; otherwise the search bought nothing. References train on
the *same* encoded data the trials see (:class:`trainables.trial_data.TrialData`), fold by fold,
as one flat matrix (:mod:`trainables.tabular`: vector inputs, token inputs pooled, missing
modalities imputed with the training fold's means plus a missing-indicator column each):
- ``logreg``: standardised features, L2-penalised multinomial logistic regression whose C is chosen
  by an inner stratified CV on the training fold (log-loss; 10 values of C in 1e-4..1e4; fixed C = 1
  when a class has fewer than 2 training samples, where no inner CV is possible);
- ``rf``: a random forest (300 trees, sklearn's defaults otherwise), seeded per fold;
- ``hgb``: histogram gradient boosting (sklearn's ``HistGradientBoostingClassifier``, no early
  stopping) whose leaf size follows the training fold: ``min_samples_leaf`` = half the smallest
  class's training count, between 1 and sklearn's default 20. With the default 20, a 40-sample,
  5-class data set (32 training samples a fold, about 6 a class) cannot split at all and scores
  0.04 macro F1 against 0.98 for the random forest.

Each entry of :data:`REFERENCES` builds its estimator from the fold seed and the training labels.
Scores come from :func:`trainables.metrics.classification_metrics`, exactly as for the trials.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from search.prepare import registry_names
from trainables.data import MultimodalDataset
from trainables.metrics import classification_metrics
from trainables.tabular import TabularLayout, design_matrices, predict_proba

__all__ = ["REFERENCES", "candidate_name", "design_matrices", "evaluate", "fit", "fit_predict", "predict_proba"]

Estimator = Any
ReferenceFactory = Callable[[int, np.ndarray], Estimator]


def _logreg(seed: int, labels: np.ndarray) -> Estimator:
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(labels)
    inner = int(min(3, counts[counts > 0].min()))
    if inner < 2:
        model: Estimator = LogisticRegression(C=1.0, max_iter=5000)
    else:
        model = LogisticRegressionCV(Cs=np.logspace(-4, 4, 10), cv=StratifiedKFold(inner, shuffle=True, random_state=seed),
                                     scoring="neg_log_loss", max_iter=5000)
    return make_pipeline(StandardScaler(), model)


def _rf(seed: int, labels: np.ndarray) -> Estimator:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=300, random_state=seed, n_jobs=1)


HGB_MAX_LEAF = 20
"""sklearn's default ``min_samples_leaf`` of ``HistGradientBoostingClassifier``: the leaf size on large folds."""


def hgb_leaf_size(labels: np.ndarray) -> int:
    """``min_samples_leaf`` for a training fold: half its smallest class, in [1, :data:`HGB_MAX_LEAF`]."""
    counts = np.bincount(labels)
    smallest = int(counts[counts > 0].min()) if counts.size else 1
    return int(min(HGB_MAX_LEAF, max(1, smallest // 2)))


def _hgb(seed: int, labels: np.ndarray) -> Estimator:
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(min_samples_leaf=hgb_leaf_size(labels), early_stopping=False,
                                          random_state=seed)


REFERENCES: dict[str, ReferenceFactory] = {"logreg": _logreg, "rf": _rf, "hgb": _hgb}
assert tuple(REFERENCES) == registry_names.REFERENCES, "search.prepare.registry_names.REFERENCES lists these (--references)"
"""Reference model name -> estimator factory ``(fold seed, training labels) -> sklearn estimator``."""

PREFIX = "reference:"


def candidate_name(reference: str) -> str:
    return f"{PREFIX}{reference}"


# --------------------------------------------------------------------------------- fitting
def fit(name: str, train: MultimodalDataset, seed: int) -> tuple[Estimator, TabularLayout]:
    """Reference ``name`` fitted on ``train`` (its design matrix, :mod:`trainables.tabular`), with
    the layout that turns later data into the same columns."""
    layout = TabularLayout.fit(train)
    model = REFERENCES[name](seed, train.labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence notes and sklearn's API-transition FutureWarnings
        model.fit(layout.transform(train), train.labels)
    return model, layout


def fit_predict(name: str, train: MultimodalDataset, test: MultimodalDataset, seed: int) -> np.ndarray:
    """Class probabilities [N_test, C] of reference ``name`` fitted on ``train`` (columns = the
    dataset's classes; a class absent from the training fold gets probability 0)."""
    model, layout = fit(name, train, seed)
    return predict_proba(model, layout, test, train.num_classes)


def evaluate(name: str, data: MultimodalDataset, splits: list[tuple[np.ndarray, np.ndarray]],
             seed: int) -> list[dict[str, Any]]:
    """Per-split metrics of reference ``name`` on ``splits`` of ``data`` (fold k seeded ``seed + k``)."""
    return [m for m, _ in evaluate_with_probs(name, data, splits, seed)]


def evaluate_with_probs(name: str, data: MultimodalDataset, splits: list[tuple[np.ndarray, np.ndarray]],
                        seed: int) -> list[tuple[dict[str, Any], np.ndarray]]:
    """Per split: (metrics, validation class probabilities [n_val, C]) of reference ``name``."""
    out = []
    for k, (tr, va) in enumerate(splits):
        train, val = data.take(tr), data.take(va)
        probs = fit_predict(name, train, val, seed + k)
        out.append((classification_metrics(val.labels, probs, list(data.class_names)), probs))
    return out
