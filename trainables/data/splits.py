"""Seeded, stratified splits. Every function returns integer index arrays into the dataset.

scikit-learn is imported where a split is made, not with this module: a trial worker whose splits
the driver made ahead (:attr:`trainables.trial_data.TrialData.splits`) never imports it (about 1 s
of CPU per worker)."""

from __future__ import annotations

import numpy as np

from trainables.data.errors import DataError

Split = tuple[np.ndarray, np.ndarray]


def _check_stratifiable(labels: np.ndarray, n_splits: int, where: str) -> None:
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    if len(counts) < 2:
        raise DataError(where, "only one class present; classification needs at least two")
    if counts.min() < n_splits:
        raise DataError(where, f"smallest class has {counts.min()} samples, fewer than the {n_splits} folds asked for")


def stratified_kfold(labels: np.ndarray, n_splits: int, seed: int) -> list[Split]:
    """k stratified (train_idx, val_idx) pairs; the same seed gives the same folds everywhere."""
    labels = np.asarray(labels)
    if n_splits < 2:
        raise DataError("--folds", f"k-fold needs at least 2 folds, got {n_splits}")
    _check_stratifiable(labels, n_splits, f"--folds {n_splits} (stratified k-fold)")
    from sklearn.model_selection import StratifiedKFold

    skf = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [(np.sort(tr), np.sort(va)) for tr, va in skf.split(np.zeros(len(labels)), labels)]


def stratified_holdout(labels: np.ndarray, val_fraction: float, seed: int) -> Split:
    """One stratified (train_idx, val_idx) pair with ``val_fraction`` of the samples held out."""
    labels = np.asarray(labels)
    if not 0.0 < val_fraction < 1.0:
        raise DataError("--val-fraction", f"must be in (0, 1), got {val_fraction}")
    _check_stratifiable(labels, 2, f"--folds 0 (stratified hold-out, --val-fraction {val_fraction:g})")
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    tr, va = train_test_split(idx, test_size=val_fraction, stratify=labels, random_state=seed)
    return np.sort(tr), np.sort(va)


def fixed_split(split: np.ndarray | None, train: str = "train", test: str = "test") -> Split:
    """The split the source fixes (e.g. breast-tcga's train/test)."""
    if split is None:
        raise DataError("split", "the dataset has no fixed train/test split")
    split = np.asarray(split)
    return np.flatnonzero(split == train), np.flatnonzero(split == test)
