"""Classification criteria of the imbalance baselines (CLIMD Table 2): plain, weighted CE, focal loss.

Every criterion is called as ``criterion(logits [B, C], y [B])`` and returns the batch mean (the
:data:`trainables.backbone.Criterion` contract); ``reduction="none"`` gives per-sample losses for
methods that weight samples themselves (OmniFuse's L_ens, Eq.12). ``CRITERIA`` maps the engine's
``imbalance`` option to a builder ``(class_counts, config) -> criterion``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def balanced_class_weights(class_counts: np.ndarray) -> np.ndarray:
    """w_c = N / (C * n_c) (inverse class frequency, mean-one over samples); absent classes get 0."""
    counts = np.asarray(class_counts, dtype=np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def cross_entropy(logits: Tensor, y: Tensor, weight: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """l_i = -log softmax(logits_i)[y_i], times w_{y_i} with ``weight``; ``mean``: sum_i w_{y_i} l_i /
    sum_i w_{y_i} (the plain mean without weights), ``sum``, or ``none`` (per row).

    What ``torch.nn.functional.cross_entropy`` computes (``log_softmax`` then the target's entry;
    equal to it in ``tests/test_losses_results.py``), written as ``log_softmax`` + ``gather``: under
    ``torch.vmap`` (batched folds) ``F.cross_entropy``'s ``nll_loss`` runs as a Python decomposition,
    about 80 microseconds more per call, forward and backward, on CPU."""
    nll = -F.log_softmax(logits, dim=-1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
    if weight is not None:
        w = weight.to(logits.device, logits.dtype)[y]
        nll = nll * w
    if reduction == "none":
        return nll
    if reduction == "sum":
        return nll.sum()
    if reduction != "mean":
        raise ValueError(f"cross_entropy: unknown reduction {reduction!r}")
    return nll.mean() if weight is None else nll.sum() / w.sum()


class CrossEntropy(nn.Module):
    """Cross-entropy (:func:`cross_entropy`), optionally class-weighted. With weights, the ``mean``
    reduction is sum_i w_{y_i} l_i / sum_i w_{y_i} (as ``torch.nn.functional.cross_entropy``)."""

    def __init__(self, weight: Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
        return cross_entropy(logits, y, self.weight, reduction)

    @property
    def class_weight(self) -> Tensor | None:
        """w_c, or None for plain CE; the ``mean`` reduction is sum_i w_{y_i} l_i / sum_i w_{y_i}."""
        return self.weight

    def rows(self, logits: Tensor, y: Tensor) -> Tensor:
        """Per-row loss without the class weight (logits [..., C], y [...]): for batched folds, which
        apply each fold's own ``class_weight``."""
        return cross_entropy(logits.flatten(0, -2), y.flatten(), reduction="none").view(y.shape)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): FL = -(1 - p_t)^gamma_focal * log p_t, mean over the batch."""

    def __init__(self, gamma_focal: float = 2.0) -> None:
        super().__init__()
        if gamma_focal < 0:
            raise ValueError(f"gamma_focal must be >= 0, got {gamma_focal}")
        self.gamma_focal = float(gamma_focal)

    def forward(self, logits: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
        log_pt = F.log_softmax(logits, dim=-1).gather(1, y[:, None]).squeeze(1)
        # 1 - p_t via expm1, clamped: (0)^gamma with gamma < 1 has an infinite derivative (NaN grads)
        loss = -((-torch.expm1(log_pt)).clamp_min(1e-12) ** self.gamma_focal) * log_pt
        return loss.mean() if reduction == "mean" else loss

    class_weight = None
    """Focal loss weighs no class: its ``mean`` is the plain mean of :meth:`rows`."""

    def rows(self, logits: Tensor, y: Tensor) -> Tensor:
        """Per-row loss (logits [..., C], y [...])."""
        return self(logits.flatten(0, -2), y.flatten(), reduction="none").view(y.shape)


CriterionBuilder = Callable[[np.ndarray, dict], nn.Module]

CRITERIA: dict[str, CriterionBuilder] = {
    "none": lambda counts, cfg: CrossEntropy(),
    "undersample": lambda counts, cfg: CrossEntropy(),
    "smote": lambda counts, cfg: CrossEntropy(),
    "vae": lambda counts, cfg: CrossEntropy(),
    "weighted_ce": lambda counts, cfg: CrossEntropy(torch.as_tensor(balanced_class_weights(counts), dtype=torch.float32)),
    "focal": lambda counts, cfg: FocalLoss(float(cfg.get("gamma_focal", 2.0))),
}
"""``imbalance`` option -> criterion builder. The resampling options train with plain CE."""
