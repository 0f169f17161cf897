"""Outer folds of nested cross-validation as data sets: ``--data SPEC@outer=I/N[,seed=S]``.

``search.nested`` runs one complete search per outer fold. Each sees the dataset ``SPEC``'s
training part re-split: outer fold ``I`` (1-based) of a seeded stratified ``N``-fold split of that
training part becomes the ``test`` part, the other folds the ``train`` part. So every step that
reads "the training part" (the trials' folds, the confirmation, the refit) stays inside the outer
training folds, and the refit's one-off test evaluation *is* the outer fold's held-out score.
The dataset's own fixed test part (rosmap, breast-tcga) is not used at all.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np

from trainables.data.dataset import MultimodalDataset
from trainables.data.errors import DataError
from trainables.data.splits import stratified_kfold

_SUFFIX = re.compile(r"^(?P<base>.+)@outer=(?P<i>\d+)/(?P<n>\d+)(?:,seed=(?P<seed>-?\d+))?$")


def parse(spec: str) -> tuple[str, int, int, int] | None:
    """``(base spec, I, N, seed)`` of an outer-fold spec, or None for a plain spec."""
    m = _SUFFIX.match(spec)
    if m is None:
        if "@outer=" in spec:
            raise DataError(f"--data {spec}", "expected SPEC@outer=I/N[,seed=S] with 1 <= I <= N")
        return None
    i, n = int(m["i"]), int(m["n"])
    if n < 2 or not 1 <= i <= n:
        raise DataError(f"--data {spec}", f"outer fold {i}/{n}: expected 1 <= I <= N and N >= 2")
    return m["base"], i, n, int(m["seed"] or 0)


def outer_spec(base: str, i: int, n: int, seed: int) -> str:
    return f"{base}@outer={i}/{n},seed={seed}"


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
