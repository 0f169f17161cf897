"""Regression tests: focal-loss gradients at p_t -> 1 and the per-fold columns of results.csv."""

import csv
import io

import torch

from search.select.results import TrialResult
from search.select.results_csv import csv_text
from trainables.losses import FocalLoss
from trainables.metrics import METRICS


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
