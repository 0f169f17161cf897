"""Spaces of OmniFuse: ``omnifuse`` (all components on, their weights searched),
``omnifuse-ablation`` (the Table 4 switches searched, each weight only while its component is
on), ``climd+omnifuse`` (CLIMD's curriculum around OmniFuse) and ``omnifuse-paper`` (only the six
hyperparameters the paper grid-searched, training fixed)."""

from __future__ import annotations

from spaces import common
from spaces.dimensions import AnyOf, Categorical, Dimension, Float, Int, Switch, When
from spaces.registry import register_space
from spaces.space import Space, combine
from trainables.omnifuse import OmniFuseConfig

SWITCHES = ("dwfuse", "tla", "imp_forward", "imp_backward")
_CRA = (AnyOf(When("imp_forward", True), When("imp_backward", True)),)


PAPER = OmniFuseConfig()


def omnifuse() -> tuple[Dimension, ...]:
    """Paper defaults (:class:`trainables.omnifuse.OmniFuseConfig`: K = 5, alpha = 0.1, beta = 0.5,
    lambda1..3 = 1, 10, 0.5); grid values around them (the paper picked its values by grid search
    with cross-validation)."""
    p = PAPER
    return (
        Int("K", 1, 8, default=p.K, grid=(3, 5, 7), when=_CRA, help="residual autoencoders per CRA (Eq.4)"),
        Categorical("ra_latent", (32, 64, 128), default=p.ra_latent, when=_CRA, help="latent width s_k of each RA"),
        Float("alpha", 0.01, 1.0, log=True, default=p.alpha, grid=(0.01, 0.1, 1.0), when=(When("dwfuse", True),),
              mutable=True, help="weight of L_rc in L_DWFuse (Eq.14)"),
        Float("beta", 0.0, 2.0, default=p.beta, grid=(0.1, 0.5, 1.0), when=(When("dwfuse", True),),
              mutable=True, help="suppression strength of omega (Eq.10)"),
        Float("lambda1", 0.1, 10.0, log=True, default=p.lambda1, grid=(0.1, 1.0, 10.0), when=(When("imp_backward", True),),
              mutable=True, help="weight of L_backward (Eq.18)"),
        Float("lambda2", 0.5, 50.0, log=True, default=p.lambda2, grid=(1.0, 10.0, 50.0),
              mutable=True, help="weight of L_DWFuse, or of CE(o, y) with DWFuse off (Eq.18)"),
        Float("lambda3", 0.05, 5.0, log=True, default=p.lambda3, grid=(0.1, 0.5, 1.0), when=(When("tla", True),),
              mutable=True, help="weight of L_TLA (Eq.18)"),
        Categorical("tla_mask", ("combination", "restrict"), default=p.tla_mask, when=(When("tla", True),),
                    help="reading of TLA's Mask (Eq.16; paper terse)"),
        Float("modality_dropout", 0.0, 1.0, default=p.modality_dropout, when=_CRA,
              help="P(a training sample sees a random non-empty subset of its modalities; paper: 1)"),
    )


ALL_ON = {s: True for s in SWITCHES}

CALIBRATED_LR = 3e-4
CALIBRATED_LR_SOURCE = (
    "our calibration (OmniFuse's paper gives no learning rate): the omnifuse default configuration on rosmap "
    "(all 245 training samples, balanced; the reproduction tables report breast-tcga and rosmap:ratio=5, "
    "a subsample of it), 3-fold CV, seed 0, 100 epochs, macro F1: 5e-5 73.6, 3e-4 77.5, 1e-3 75.5, 3e-3 75.9 "
    "(fold std 3.5-6.1: the three larger rates are level, 5e-5 under-trains)")
"""The 100-epoch OmniFuse spaces' default learning rate and where it comes from."""
PAPER_SPACE_LR = 1e-3
PAPER_SPACE_LR_SOURCE = (
    "our calibration for the 30-epoch budget of this space (OmniFuse's paper gives no learning rate): in the "
    "same rosmap runs, macro F1 at epoch 25: 5e-5 64.4, 3e-4 73.8, 1e-3 75.5, 3e-3 74.7")

register_space(Space(
    "omnifuse", "omnifuse",
    "OmniFuse with CRA imputation, DWFuse and TLA, component weights searched",
    combine(common.training(lr=CALIBRATED_LR), common.width(PAPER), omnifuse()),
    fixed={**ALL_ON, "curriculum": "none"},
    lr_source=CALIBRATED_LR_SOURCE,
))

register_space(Space(
    "omnifuse-ablation", "omnifuse",
    "OmniFuse's Table 4 switches searched (grid: all 16 combinations at the paper's weights)",
    combine(tuple(Switch(s) for s in SWITCHES), common.training(lr=CALIBRATED_LR), common.width(PAPER),
            common.without_grid(omnifuse())),
    fixed={"curriculum": "none"},
    lr_source=CALIBRATED_LR_SOURCE,
))

register_space(Space(
    "climd+omnifuse", "omnifuse",
    "CLIMD's curriculum around OmniFuse (all components on)",
    combine(common.training(lr=CALIBRATED_LR), common.width(PAPER), omnifuse(),
            common.without_grid(common.climd(), keep=("gamma",))),
    fixed=ALL_ON,
    forbidden=common.CLIMD_FORBIDDEN,
    grace=common.curriculum_grace,
    lr_source=CALIBRATED_LR_SOURCE + " (the curriculum leaves the optimiser as it is)",
))

PAPER_TUNED = ("K", "alpha", "beta", "lambda1", "lambda2", "lambda3")
"""What the paper says it grid-searched around its initial values (Sec. 4.3)."""

PAPER_TRAINING = {"lr": PAPER_SPACE_LR, "weight_decay": common.ENGINE.weight_decay, "batch_size": common.ENGINE.batch_size,
                  "hidden": PAPER.hidden, "dropout": PAPER.dropout, "ra_latent": PAPER.ra_latent, "tla_mask": PAPER.tla_mask}
"""The rest, held fixed. The paper gives no learning rate (PAPER_SPACE_LR_SOURCE)."""

register_space(Space(
    "omnifuse-paper", "omnifuse",
    "only the six hyperparameters OmniFuse's paper grid-searched (3^6 = 729 grid points), training fixed",
    tuple(d for d in omnifuse() if d.name in PAPER_TUNED),
    fixed={**ALL_ON, "curriculum": "none", **PAPER_TRAINING},
    epochs=30,
    lr_source=PAPER_SPACE_LR_SOURCE,
))
