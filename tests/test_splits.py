"""Splits: no leakage, stratified, seeded; preprocessing fitted on the training part only."""

from __future__ import annotations

import numpy as np
import pytest

from trainables.data import (
    DataError,
    Modality,
    MultimodalDataset,
    Standardizer,
    fixed_split,
    stratified_holdout,
    stratified_kfold,
)

LABELS = np.array([0] * 50 + [1] * 30 + [2] * 20)


@pytest.mark.parametrize("k", [2, 5])
def test_kfold_no_leakage_and_full_cover(k):
    folds = stratified_kfold(LABELS, k, seed=0)
    assert len(folds) == k
    for tr, va in folds:
        assert not set(tr) & set(va)
        assert len(tr) + len(va) == len(LABELS)
    all_val = np.concatenate([va for _, va in folds])
    assert sorted(all_val.tolist()) == list(range(len(LABELS)))  # every sample validated exactly once


def test_kfold_is_stratified():
    for tr, va in stratified_kfold(LABELS, 5, seed=1):
        # 50/30/20 over 5 folds -> exactly 10/6/4 in each validation fold
        assert np.bincount(LABELS[va]).tolist() == [10, 6, 4]
        assert np.bincount(LABELS[tr]).tolist() == [40, 24, 16]


def test_kfold_is_seeded():
    a, b = stratified_kfold(LABELS, 5, seed=3), stratified_kfold(LABELS, 5, seed=3)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    c = stratified_kfold(LABELS, 5, seed=4)
    assert any(not np.array_equal(x[1], y[1]) for x, y in zip(a, c))


def test_holdout_no_leakage_stratified_seeded():
    tr, va = stratified_holdout(LABELS, 0.2, seed=0)
    assert not set(tr) & set(va) and len(tr) + len(va) == 100
    assert np.bincount(LABELS[va]).tolist() == [10, 6, 4]
    tr2, va2 = stratified_holdout(LABELS, 0.2, seed=0)
    assert np.array_equal(va, va2) and np.array_equal(tr, tr2)
    assert not np.array_equal(va, stratified_holdout(LABELS, 0.2, seed=1)[1])


@pytest.mark.parametrize("call, match", [
    (lambda: stratified_kfold(np.zeros(10, int), 2, 0), "only one class"),
    (lambda: stratified_kfold(np.array([0] * 10 + [1] * 3), 5, 0), "smallest class has 3 samples"),
    (lambda: stratified_kfold(LABELS, 1, 0), "at least 2 folds"),
    (lambda: stratified_holdout(LABELS, 1.5, 0), r"must be in \(0, 1\)"),
    (lambda: fixed_split(None), "no fixed train/test split"),
])
def test_split_errors_are_data_errors(call, match):
    with pytest.raises(DataError, match=match):
        call()


def test_fixed_split():
    split = np.array(["train", "test", "train", "train", "test"])
    tr, te = fixed_split(split)
    assert tr.tolist() == [0, 2, 3] and te.tolist() == [1, 4]


def _toy() -> MultimodalDataset:
    x = np.array([[1.0, 10.0], [3.0, 10.0], [5.0, 10.0], [100.0, -5.0], [0.0, 0.0]], np.float32)
    mask = np.array([True, True, True, True, False])
    return MultimodalDataset("toy", [f"s{i}" for i in range(5)], [0, 1, 0, 1, 0], ["a", "b"],
                             {"x": Modality("x", "vector", x, mask)})


def test_standardizer_uses_training_part_only_and_keeps_missing_zero():
    data = _toy()
    train, val = data.take(np.array([0, 1, 2, 4])), data.take(np.array([3]))
    st = Standardizer.fit(train)
    # available training rows 1, 3, 5 -> mean 3, std sqrt(8/3); constant column -> std 1
    np.testing.assert_allclose(st.mean["x"], [3.0, 10.0])
    np.testing.assert_allclose(st.std["x"], [np.sqrt(8 / 3), 1.0], rtol=1e-6)
    z_val = st.transform(val).modalities["x"].values
    np.testing.assert_allclose(z_val, [[(100.0 - 3.0) / np.sqrt(8 / 3), -15.0]], rtol=1e-5)  # the val row never moved the stats
    z_train = st.transform(train).modalities["x"]
    assert np.all(z_train.values[~z_train.mask] == 0.0)
    restored = Standardizer.from_state_dict(st.state_dict())
    np.testing.assert_array_equal(restored.transform(val).modalities["x"].values, z_val)
