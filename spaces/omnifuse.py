"""Spaces of OmniFuse: ``omnifuse`` (all components on, their weights searched),
``omnifuse-ablation`` (the Table 4 switches searched, each weight only while its component is
on), ``climd+omnifuse`` (CLIMD's curriculum around OmniFuse) and ``omnifuse-paper`` (only the six
hyperparameters the paper grid-searched, training fixed)."""

from __future__ import annotations

from spaces import common
from spaces.dimensions import AnyOf, Categorical, Dimension, Float, Int, Switch, When
from spaces.registry import register_space
from spaces.space import Space, combine

SWITCHES = ("dwfuse", "tla", "imp_forward", "imp_backward")
_CRA = (AnyOf(When("imp_forward", True), When("imp_backward", True)),)


def omnifuse() -> tuple[Dimension, ...]:
    """Paper defaults K = 5, alpha = 0.1, beta = 0.5, lambda1..3 = 1, 10, 0.5; grid values around
    them (the paper picked its values by grid search with cross-validation)."""
    return (
        Int("K", 1, 8, default=5, grid=(3, 5, 7), when=_CRA, help="residual autoencoders per CRA (Eq.4)"),
        Categorical("ra_latent", (32, 64, 128), default=64, when=_CRA, help="latent width s_k of each RA"),
        Float("alpha", 0.01, 1.0, log=True, default=0.1, grid=(0.01, 0.1, 1.0), when=(When("dwfuse", True),),
              mutable=True, help="weight of L_rc in L_DWFuse (Eq.14)"),
        Float("beta", 0.0, 2.0, default=0.5, grid=(0.1, 0.5, 1.0), when=(When("dwfuse", True),),
              mutable=True, help="suppression strength of omega (Eq.10)"),
        Float("lambda1", 0.1, 10.0, log=True, default=1.0, grid=(0.1, 1.0, 10.0), when=(When("imp_backward", True),),
              mutable=True, help="weight of L_backward (Eq.18)"),
        Float("lambda2", 0.5, 50.0, log=True, default=10.0, grid=(1.0, 10.0, 50.0),
              mutable=True, help="weight of L_DWFuse, or of CE(o, y) with DWFuse off (Eq.18)"),
        Float("lambda3", 0.05, 5.0, log=True, default=0.5, grid=(0.1, 0.5, 1.0), when=(When("tla", True),),
              mutable=True, help="weight of L_TLA (Eq.18)"),
        Categorical("tla_mask", ("combination", "restrict"), default="combination", when=(When("tla", True),),
                    help="reading of TLA's Mask (Eq.16; paper terse)"),
    )


ALL_ON = {s: True for s in SWITCHES}

register_space(Space(
    "omnifuse", "omnifuse",
    "OmniFuse with CRA imputation, DWFuse and TLA, component weights searched",
    combine(common.training(), common.width(), omnifuse()),
    fixed={**ALL_ON, "scheduler": "none"},
))

register_space(Space(
    "omnifuse-ablation", "omnifuse",
    "OmniFuse's Table 4 switches searched (grid: all 16 combinations at the paper's weights)",
    combine(tuple(Switch(s) for s in SWITCHES), common.training(), common.width(), common.without_grid(omnifuse())),
    fixed={"scheduler": "none"},
))

register_space(Space(
    "climd+omnifuse", "omnifuse",
    "CLIMD's curriculum around OmniFuse (all components on)",
    combine(common.training(), common.width(), omnifuse(), common.without_grid(common.climd(), keep=("gamma",))),
    fixed=ALL_ON, grace=common.curriculum_grace,
))

PAPER_TUNED = ("K", "alpha", "beta", "lambda1", "lambda2", "lambda3")
"""What the paper says it grid-searched around its initial values (Sec. 4.3)."""

PAPER_TRAINING = {"lr": 1e-3, "weight_decay": 1e-4, "batch_size": 32, "hidden": 128, "dropout": 0.1,
                  "ra_latent": 64, "tla_mask": "combination"}
"""The rest, held fixed. The paper gives no learning rate; 1e-3 trains these MLPs in 20-30 epochs
(CLIMD's 5e-5 needs about 100; benchmarks/RESULTS.md)."""

register_space(Space(
    "omnifuse-paper", "omnifuse",
    "only the six hyperparameters OmniFuse's paper grid-searched (3^6 = 729 grid points), training fixed",
    tuple(d for d in omnifuse() if d.name in PAPER_TUNED),
    fixed={**ALL_ON, "scheduler": "none", **PAPER_TRAINING},
    epochs=30,
))
