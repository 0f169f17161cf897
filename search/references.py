"""Simple reference models every study is compared with (``--references``, default ``logreg,rf``).

A tuned multimodal network on a few hundred patients has to beat what an untuned linear model or
random forest scores on the same folds; otherwise the search bought nothing. References train on
the *same* encoded data the trials see (:class:`trainables.trial_data.TrialData`), fold by fold:

- the input matrix concatenates every vector input, and every token input pooled to one vector
  (the mean of its real tokens, ``token_mask``), in the data's modality order;
- a modality missing for a sample is filled with the *training fold's* mean of that input, and one
  missing-indicator column per modality (1 = missing) is appended, so "missing" is information the
  model may use, as it is for the networks (their masks);
- ``logreg``: standardised features, L2-penalised multinomial logistic regression whose C is chosen
  by an inner stratified CV on the training fold (log-loss; 10 values of C in 1e-4..1e4; fixed C = 1
  when a class has fewer than 2 training samples, where no inner CV is possible);
- ``rf``: a random forest (300 trees, sklearn's defaults otherwise), seeded per fold.

Each entry of :data:`REFERENCES` builds its estimator from the fold seed and the training labels.
Scores come from :func:`trainables.metrics.classification_metrics`, exactly as for the trials.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from trainables.data import MultimodalDataset
from trainables.metrics import classification_metrics

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


REFERENCES: dict[str, ReferenceFactory] = {"logreg": _logreg, "rf": _rf}
"""Reference model name -> estimator factory ``(fold seed, training labels) -> sklearn estimator``."""

PREFIX = "reference:"


def candidate_name(reference: str) -> str:
    return f"{PREFIX}{reference}"


# --------------------------------------------------------------------------------- features
def _pooled(data: MultimodalDataset) -> list[tuple[np.ndarray, np.ndarray]]:
    """(values [N, d] float64, available [N] bool) per vector or token input."""
    out = []
    for m in data.modalities.values():
        if m.kind == "vector":
            out.append((m.values.astype(np.float64), m.mask))
        elif m.kind == "tokens":
            real = m.token_mask if m.token_mask is not None else np.ones(m.values.shape[:2], bool)
            weight = real.astype(np.float64)[..., None]
            count = weight.sum(axis=1)
            pooled = (m.values.astype(np.float64) * weight).sum(axis=1) / np.maximum(count, 1.0)
            out.append((pooled, m.mask & (count[:, 0] > 0)))
    if not out:
        raise ValueError(f"{data.name}: no vector or token input for the reference models")
    return out


def design_matrices(train: MultimodalDataset, test: MultimodalDataset) -> tuple[np.ndarray, np.ndarray]:
    """Train and test matrices: inputs imputed with the training fold's means, plus one
    missing-indicator column per input (module docstring)."""
    blocks_tr, blocks_te, ind_tr, ind_te = [], [], [], []
    for (xtr, mtr), (xte, mte) in zip(_pooled(train), _pooled(test)):
        mean = xtr[mtr].mean(axis=0) if mtr.any() else np.zeros(xtr.shape[1])
        blocks_tr.append(np.where(mtr[:, None], xtr, mean))
        blocks_te.append(np.where(mte[:, None], xte, mean))
        ind_tr.append((~mtr).astype(np.float64)[:, None])
        ind_te.append((~mte).astype(np.float64)[:, None])
    return np.hstack(blocks_tr + ind_tr), np.hstack(blocks_te + ind_te)


def fit_predict(name: str, train: MultimodalDataset, test: MultimodalDataset, seed: int) -> np.ndarray:
    """Class probabilities [N_test, C] of reference ``name`` fitted on ``train`` (columns = the
    dataset's classes; a class absent from the training fold gets probability 0)."""
    xtr, xte = design_matrices(train, test)
    model = REFERENCES[name](seed, train.labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence notes and sklearn's API-transition FutureWarnings
        model.fit(xtr, train.labels)
        proba = model.predict_proba(xte)
    out = np.zeros((len(test), train.num_classes), dtype=np.float64)
    out[:, np.asarray(model.classes_, dtype=int)] = proba
    return out


def evaluate(name: str, data: MultimodalDataset, splits: list[tuple[np.ndarray, np.ndarray]],
             seed: int) -> list[dict[str, Any]]:
    """Per-split metrics of reference ``name`` on ``splits`` of ``data`` (fold k seeded ``seed + k``)."""
    metrics = []
    for k, (tr, va) in enumerate(splits):
        train, val = data.take(tr), data.take(va)
        probs = fit_predict(name, train, val, seed + k)
        metrics.append(classification_metrics(val.labels, probs, list(data.class_names)))
    return metrics

