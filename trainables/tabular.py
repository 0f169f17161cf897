"""The flat design matrix the reference models (logistic regression, random forest, gradient
boosting) see: one row per sample, built from the same encoded data the networks train on.

- every vector input as it is, every token input pooled to one vector (the mean of its real tokens,
  ``token_mask``), in the data's modality order (text and image modalities are read only through
  their encodings);
- a modality missing for a sample is filled with the *training part's* mean of that input, and one
  missing-indicator column per input (1 = missing) is appended, so "missing" is information the
  model may use, as it is for the networks (their masks).

:class:`TabularLayout` is that recipe fitted on a training part (which inputs, their widths, their
training means); it rebuilds the same columns for any later data (a validation fold, a bundle's
input) and is stored as plain JSON inside a bundle, so a served reference model imputes with the
means it was trained with (:func:`predict_proba`). It lives in ``trainables`` because a bundle carries it; the reference
estimators themselves are built in :mod:`search.select.references`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from trainables.data.dataset import MultimodalDataset
from trainables.data.errors import DataError


def pooled_inputs(data: MultimodalDataset) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Input name -> (values [N, d] float64, available [N] bool) of every vector or token input."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, m in data.modalities.items():
        if m.kind == "vector":
            out[name] = (m.values.astype(np.float64), m.mask)
        elif m.kind == "tokens":
            real = m.token_mask if m.token_mask is not None else np.ones(m.values.shape[:2], bool)
            weight = real.astype(np.float64)[..., None]
            count = weight.sum(axis=1)
            pooled = (m.values.astype(np.float64) * weight).sum(axis=1) / np.maximum(count, 1.0)
            out[name] = (pooled, m.mask & (count[:, 0] > 0))
    return out


@dataclass(frozen=True)
class TabularLayout:
    """The design-matrix recipe fitted on a training part: inputs in order, their training means."""

    inputs: tuple[str, ...]
    means: tuple[tuple[float, ...], ...]

    @classmethod
    def fit(cls, train: MultimodalDataset) -> TabularLayout:
        pooled = pooled_inputs(train)
        if not pooled:
            raise DataError(train.name, "no vector or token input for the reference models")
        means = []
        for x, available in pooled.values():
            mean = x[available].mean(axis=0) if available.any() else np.zeros(x.shape[1])
            means.append(tuple(float(v) for v in mean))
        return cls(tuple(pooled), tuple(means))

    @property
    def width(self) -> int:
        """Columns of the matrix: every input's features, then one indicator per input."""
        return sum(len(m) for m in self.means) + len(self.inputs)

    def transform(self, data: MultimodalDataset) -> np.ndarray:
        """The [N, width] float64 matrix of ``data`` (module docstring)."""
        pooled = pooled_inputs(data)
        blocks, indicators = [], []
        for name, mean in zip(self.inputs, self.means):
            if name not in pooled:
                raise DataError(data.name, f"lacks input {name!r}, which the reference model was trained on")
            x, available = pooled[name]
            if x.shape[1] != len(mean):
                raise DataError(data.name, f"input {name!r} has {x.shape[1]} features, the reference model "
                                           f"was trained on {len(mean)}")
            blocks.append(np.where(available[:, None], x, np.asarray(mean, dtype=np.float64)))
            indicators.append((~available).astype(np.float64)[:, None])
        return np.hstack(blocks + indicators)

    def to_json(self) -> dict[str, Any]:
        return {"inputs": list(self.inputs), "means": [list(m) for m in self.means]}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> TabularLayout:
        try:
            inputs = tuple(str(i) for i in record["inputs"])
            means = tuple(tuple(float(v) for v in m) for m in record["means"])
        except (KeyError, TypeError, ValueError):
            raise DataError("tabular layout", "expected {'inputs': [names], 'means': [[floats]]}") from None
        if len(inputs) != len(means):
            raise DataError("tabular layout", f"{len(inputs)} inputs but {len(means)} mean vectors")
        return cls(inputs, means)


def predict_proba(estimator: Any, layout: TabularLayout, data: MultimodalDataset, num_classes: int) -> np.ndarray:
    """Class probabilities [N, C] float64 of a fitted sklearn estimator on ``layout``'s matrix of
    ``data``, in the dataset's class order: columns placed by the estimator's ``classes_`` (the
    integer labels it saw); a class it never saw gets 0."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's API-transition FutureWarnings
        proba = estimator.predict_proba(layout.transform(data))
    out = np.zeros((len(data), num_classes), dtype=np.float64)
    out[:, np.asarray(estimator.classes_, dtype=int)] = proba
    return out


def design_matrices(train: MultimodalDataset, test: MultimodalDataset) -> tuple[np.ndarray, np.ndarray]:
    """Train and test matrices of one split, imputed with the training part's means."""
    layout = TabularLayout.fit(train)
    return layout.transform(train), layout.transform(test)
