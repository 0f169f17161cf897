"""Regression tests: cross-entropy as torch computes it, focal-loss gradients at p_t -> 1 and the per-fold
columns of results.csv."""

import csv
import io
import math

import pytest
import torch
import torch.nn.functional as F

from search.select.results import TrialResult
from search.select.results_csv import csv_text
from trainables.losses import CrossEntropy, FocalLoss, cross_entropy
from trainables.metrics import METRICS


def test_cross_entropy_by_hand():
    # logits (0, ln 3): softmax (1/4, 3/4); row 0 true class 1, row 1 true class 0
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    y = torch.tensor([1, 0])
    rows = torch.tensor([-math.log(0.75), -math.log(0.25)])
    assert torch.allclose(cross_entropy(logits, y, reduction="none"), rows)
    assert torch.allclose(cross_entropy(logits, y), rows.mean())
    # w = (1, 3): sum_i w_{y_i} l_i / sum_i w_{y_i} = (3 l_0 + 1 l_1) / 4
    w = torch.tensor([1.0, 3.0])
    assert torch.allclose(cross_entropy(logits, y, w), (3 * rows[0] + rows[1]) / 4)
    assert torch.allclose(cross_entropy(logits, y, w, reduction="sum"), 3 * rows[0] + rows[1])


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_equals_torchs_with_its_gradient_and_under_vmap(weighted, reduction):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 3, (4, 7), generator=g)
    weight = torch.rand(3, generator=g, dtype=torch.float64) + 0.1 if weighted else None
    ours = torch.vmap(lambda x, t: CrossEntropy(weight)(x, t, reduction=reduction))(logits, y)
    torchs = torch.stack([F.cross_entropy(logits[f], y[f], weight=weight, reduction=reduction) for f in range(4)])
    assert torch.allclose(ours, torchs, rtol=1e-12, atol=1e-12)
    (g_ours,) = torch.autograd.grad(ours.sum(), logits)
    (g_torch,) = torch.autograd.grad(torchs.sum(), logits)
    assert torch.allclose(g_ours, g_torch, rtol=1e-12, atol=1e-12)


def test_cross_entropy_names_an_unknown_reduction():
    with pytest.raises(ValueError, match="reduction 'max'"):
        cross_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), reduction="max")


def test_focal_loss_gradient_is_finite_when_the_true_class_is_certain():
    # gamma_focal < 1: d/dp (1 - p)^gamma is infinite at p = 1; a sampled config hit NaN weights this way
    logits = torch.tensor([[60.0, 0.0, 0.0], [0.0, 2.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 1])
    loss = FocalLoss(gamma_focal=0.59)(logits, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()


def test_focal_loss_matches_its_definition():
    logits = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    y = torch.tensor([1, 1])
    p_t = torch.softmax(logits, -1)[torch.arange(2), y]
    expected = (-(1 - p_t) ** 2.0 * torch.log(p_t)).mean()
    assert torch.allclose(FocalLoss(2.0)(logits, y), expected)


def test_results_csv_has_one_column_per_fold_and_metric():
    last = {"final": True, "epoch": 3, "loss": 0.5}
    for m in METRICS:
        last[m], last[f"{m}_std"] = 0.8, 0.1
        for k in range(2):
            last[f"fold{k}_{m}"] = 0.8
    row = TrialResult("t1", "TERMINATED", {"lr": 0.01}, [last])
    header = next(csv.reader(io.StringIO(csv_text([row], ["lr"]))))
    fold_cols = [c for c in header if c.startswith("fold")]
    assert len(fold_cols) == 2 * len(METRICS)
    assert "fold2_accuracy" not in header
