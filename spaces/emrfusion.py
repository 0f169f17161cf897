"""Spaces of the EMR fusion model: ``emrfusion`` (all components on, loss weights searched — the
paper does not give them), ``emrfusion-ablation`` (the four switches of its Tables 1 and 3) and
``climd+emrfusion``."""

from __future__ import annotations

from spaces import common
from spaces.dimensions import Dimension, Float, Switch, When
from spaces.registry import register_space
from spaces.space import Space, combine
from trainables.emrfusion import EMRFusionConfig

PAPER = EMRFusionConfig()

SWITCHES = ("alignment", "self_attention", "residual", "dynamic_weighting")


def loss_weights() -> tuple[Dimension, ...]:
    return (
        Float("align_weight", 1e-3, 10.0, log=True, default=PAPER.align_weight, grid=(0.01, 0.1, 1.0),
              when=(When("alignment", True),), mutable=True, help="weight of L_align = ||S - I||_F^2 (Eq.14-16)"),
        Float("ortho_weight", 1e-4, 1.0, log=True, default=PAPER.ortho_weight, grid=(0.001, 0.01, 0.1), mutable=True,
              help="weight of L_ortho (Eq.13)"),
    )


ALL_ON = {s: True for s in SWITCHES}
COMMON = {"data": "synth-clinic", "image_encoder": "resnet-tiny"}

register_space(Space(
    "emrfusion", "emrfusion",
    "EMR fusion: alignment, attention, residual, dynamic weighting; loss weights searched",
    combine(common.training(), common.width(PAPER, hidden_grid=(64, 128, 256)), loss_weights()),
    fixed={**ALL_ON, "curriculum": "none"},
    lr_source=common.BORROWED_LR,
    **COMMON,
))

register_space(Space(
    "emrfusion-ablation", "emrfusion",
    "EMR fusion's ablation switches searched (grid: all 16 combinations)",
    combine(tuple(Switch(s) for s in SWITCHES), common.training(), common.width(PAPER), common.without_grid(loss_weights())),
    fixed={"curriculum": "none"},
    lr_source=common.BORROWED_LR,
    **COMMON,
))

register_space(Space(
    "climd+emrfusion", "emrfusion",
    "CLIMD's curriculum around the EMR fusion model",
    combine(common.training(), common.width(PAPER), loss_weights(), common.without_grid(common.climd(), keep=("gamma",))),
    fixed=ALL_ON,
    forbidden=common.CLIMD_FORBIDDEN,
    grace=common.curriculum_grace,
    lr_source=common.BORROWED_LR,
    **COMMON,
))
