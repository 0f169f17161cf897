"""Spaces of the early-fusion baseline: ``baseline`` (with the imbalance baselines of CLIMD's
Table 2) and ``climd`` (CLIMD's curriculum around it, the paper's own setting)."""

from __future__ import annotations

from spaces import common
from spaces.dimensions import Categorical, Float, Int, When
from spaces.registry import register_space
from spaces.space import Space, combine

IMBALANCE = (
    Categorical("imbalance", ("none", "weighted_ce", "focal", "undersample", "smote", "vae"), default="none",
                grid=("none", "weighted_ce", "focal", "undersample", "smote", "vae"),
                help="imbalance baseline of CLIMD's Table 2 (none = plain cross-entropy)"),
    Float("gamma_focal", 0.5, 5.0, default=2.0, when=(When("imbalance", "focal"),), help="focal-loss exponent"),
    Int("smote_k", 1, 10, default=5, when=(When("imbalance", "smote"),), help="SMOTE neighbours"),
)

register_space(Space(
    "baseline", "baseline",
    "early fusion (modality MLPs, concatenation, classifier) with the imbalance baselines",
    combine(
        common.training(lr_grid=(1e-5, 1e-4, 5e-4, 1e-3)),
        common.width(hidden_grid=(64, 128, 256), dropout_grid=(0.0, 0.1, 0.3)),
        IMBALANCE,
    ),
    fixed={"scheduler": "none"},
))

register_space(Space(
    "climd", "baseline",
    "CLIMD curriculum (measurer + scheduler) around the early-fusion baseline, as in the paper",
    combine(common.training(), common.width(), common.climd()),
    fixed={"imbalance": "none"}, grace=common.curriculum_grace,
))
