"""Spaces of the early-fusion baseline: ``baseline`` (with the imbalance baselines of CLIMD's
Table 2) and ``climd`` (CLIMD's curriculum around it, the paper's own setting)."""

from __future__ import annotations

from spaces import common
from spaces.dimensions import Categorical, Float, Int, When
from spaces.registry import register_space
from spaces.space import Space, combine
from trainables.baseline import EarlyFusionConfig
from trainables.engine import EngineConfig

IMBALANCE = (
    Categorical("imbalance", ("none", "weighted_ce", "focal", "undersample", "smote", "vae"), default=EngineConfig.imbalance,
                grid=("none", "weighted_ce", "focal", "undersample", "smote", "vae"),
                help="imbalance baseline of CLIMD's Table 2 (none = plain cross-entropy)"),
    Float("gamma_focal", 0.5, 5.0, default=EngineConfig.gamma_focal, when=(When("imbalance", "focal"),),
          help="focal-loss exponent"),
    Int("smote_k", 1, 10, default=EngineConfig.smote_k, when=(When("imbalance", "smote"),), help="SMOTE neighbours"),
)

register_space(Space(
    "baseline", "baseline",
    "early fusion (modality MLPs, concatenation, classifier) with the imbalance baselines",
    combine(
        common.training(lr_grid=(1e-5, 1e-4, 5e-4, 1e-3)),
        common.width(EarlyFusionConfig(), hidden_grid=(64, 128, 256), dropout_grid=(0.0, 0.1, 0.3)),
        IMBALANCE,
        (Float("modality_dropout", 0.0, 1.0, default=EarlyFusionConfig.modality_dropout,
               help="P(a training sample sees a random non-empty subset of its modalities; OmniFuse's scheme = 1)"),),
    ),
    fixed={"curriculum": "none"},
    lr_source=common.CLIMD_LR + "; the baseline is CLIMD's and OmniFuse's comparison model",
))

register_space(Space(
    "climd", "baseline",
    "CLIMD (difficulty measurer + curriculum) around the early-fusion baseline, as in the paper",
    combine(common.training(), common.width(EarlyFusionConfig()), common.climd()),
    fixed={"imbalance": "none"},
    forbidden=common.CLIMD_FORBIDDEN,
    grace=common.curriculum_grace,
    lr_source=common.CLIMD_LR,
))
