"""Outer folds of nested cross-validation as data sets: ``--data SPEC@outer=I/N[,seed=S]``
(parsed by :class:`trainables.data.DatasetSpec`, its :class:`trainables.data.OuterFold`).

``search.nested`` runs one complete search per outer fold. Each sees the dataset ``SPEC``'s
training part re-split: outer fold ``I`` (1-based) of a seeded stratified ``N``-fold split of that
training part becomes the ``test`` part, the other folds the ``train`` part. So every step that
reads "the training part" (the trials' folds, the confirmation, the refit) stays inside the outer
training folds, and the refit's one-off test evaluation *is* the outer fold's held-out score.
The dataset's own fixed test part (rosmap, breast-tcga) is not used at all.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from trainables.data.dataset import MultimodalDataset
from trainables.data.splits import stratified_kfold


def outer_splits(data: MultimodalDataset, n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The N stratified (outer train, outer test) index pairs of ``data``'s training part."""
    return stratified_kfold(data.split_part("train").labels, n, seed)


def make_outer(data: MultimodalDataset, i: int, n: int, seed: int) -> MultimodalDataset:
    """``data``'s training part with outer fold ``i`` of ``n`` as its ``test`` part."""
    train = data.split_part("train")
    _, test_idx = outer_splits(data, n, seed)[i - 1]
    split = np.full(len(train), "train", dtype=object)
    split[test_idx] = "test"
    out = train.take(np.arange(len(train)))
    return replace(out, name=f"{data.name}@outer={i}/{n}", split=split.astype(str))
