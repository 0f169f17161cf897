"""Spaces of AlignedFusion: ``alignedfusion`` (intermediate token on), ``alignedfusion-ablation``
(with/without IT and the mask-rate sweep of the paper's Table 4), ``selfattn`` (the paper's plain
self-attention fusion baseline) and ``climd+alignedfusion``."""

from __future__ import annotations

from spaces import common
from spaces.dimensions import Categorical, Dimension, Float, Int, Switch
from spaces.registry import register_space
from spaces.space import Space, combine
from trainables.alignedfusion import AlignedFusionConfig, SelfAttentionConfig

PAPER = AlignedFusionConfig()

NEEDS = ("text", "image")


def transformer() -> tuple[Dimension, ...]:
    """Fusion depth and heads (not given by the paper; the model's defaults: 2 layers, 4 heads).
    Every head count divides every width of :func:`spaces.common.width`."""
    return (
        Int("depth", 1, 4, default=PAPER.depth, grid=(1, 2, 3), help="fusion layers"),
        Categorical("heads", (1, 2, 4), default=PAPER.heads, help="attention heads"),
    )


def masked_reconstruction(*, mask_grid: tuple[float, ...] = (0.1, 0.3, 0.5)) -> tuple[Dimension, ...]:
    return (
        Float("mask_p", 0.0, 0.5, default=PAPER.mask_p, grid=mask_grid, mutable=True,
              help="probability a report token is masked for reconstruction (Eq.9; paper 0.3)"),
        Float("rec_weight", 0.01, 10.0, log=True, default=PAPER.rec_weight, grid=(0.1, 1.0, 10.0), mutable=True,
              help="l_all = l_d + rec_weight * l_rec (paper: 1)"),
    )


COMMON = {"data": "synth-clinic", "requires": NEEDS, "image_encoder": "vit-tiny"}

register_space(Space(
    "alignedfusion", "alignedfusion",
    "AlignedFusion: attribute tokens, intermediate-token fusion, masked token reconstruction",
    combine(common.training(), common.width(PAPER), transformer(), masked_reconstruction()),
    fixed={"intermediate_token": PAPER.intermediate_token, "curriculum": "none"},
    lr_source=common.BORROWED_LR,
    **COMMON,
))

register_space(Space(
    "alignedfusion-ablation", "alignedfusion",
    "AlignedFusion with/without the intermediate token and the mask-rate sweep (paper Table 4)",
    combine(
        (Switch("intermediate_token"),), common.training(), common.width(PAPER), common.without_grid(transformer()),
        common.without_grid(masked_reconstruction(mask_grid=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5)), keep=("mask_p",)),
    ),
    fixed={"curriculum": "none"},
    lr_source=common.BORROWED_LR,
    **COMMON,
))

register_space(Space(
    "selfattn", "selfattn",
    "plain self-attention fusion over the joint token set (AlignedFusion's comparison baseline)",
    combine(common.training(), common.width(SelfAttentionConfig(), hidden_grid=(64, 128, 256)), transformer()),
    fixed={"curriculum": "none"},
    lr_source=common.BORROWED_LR,
    **COMMON,
))

register_space(Space(
    "climd+alignedfusion", "alignedfusion",
    "CLIMD's curriculum around AlignedFusion",
    combine(common.training(), common.width(PAPER), transformer(), masked_reconstruction(),
            common.without_grid(common.climd(), keep=("gamma",))),
    fixed={"intermediate_token": PAPER.intermediate_token},
    forbidden=common.CLIMD_FORBIDDEN,
    grace=common.curriculum_grace,
    lr_source=common.BORROWED_LR,
    **COMMON,
))
