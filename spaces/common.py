"""Dimension groups shared by several spaces: training, width, and CLIMD's curriculum.

Defaults are read from the config dataclasses, the single home of every default and its source
(:class:`trainables.engine.EngineConfig`, :class:`trainables.climd.CurriculumConfig`, each method's
``Config``), so the first trial of a space trains exactly what the code trains with no
configuration unless the space says otherwise.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from spaces.dimensions import Categorical, Dimension, Float, Forbidden, Int, When
from trainables.climd import CURRICULA, CurriculumConfig
from trainables.engine import EngineConfig

ENGINE = EngineConfig()
CURRICULUM = CurriculumConfig()


def training(*, lr: float = ENGINE.lr, weight_decay: float = ENGINE.weight_decay, batch_size: int = ENGINE.batch_size,
             lr_grid: tuple[float, ...] = ()) -> tuple[Dimension, ...]:
    """AdamW learning rate and weight decay, mini-batch size (defaults: EngineConfig's)."""
    return (
        Float("lr", 1e-5, 1e-2, log=True, default=lr, grid=lr_grid, mutable=True, help="AdamW learning rate"),
        Float("weight_decay", 1e-6, 1e-1, log=True, default=weight_decay, mutable=True, help="AdamW weight decay"),
        Categorical("batch_size", (16, 32, 64, 128), default=batch_size, help="mini-batch size"),
    )


def width(config: object, *, hidden_grid: tuple[int, ...] = (),
          dropout_grid: tuple[float, ...] = ()) -> tuple[Dimension, ...]:
    """Model width (encoder/token width) and dropout; defaults: the method's ``config`` (an instance
    of its config dataclass)."""
    return (
        Categorical("hidden", (32, 64, 128, 256), default=config.hidden, grid=hidden_grid, help="hidden width"),
        Float("dropout", 0.0, 0.5, default=config.dropout, grid=dropout_grid, help="dropout rate"),
    )


CURRICULUM_CHOICES = tuple(CURRICULA)
"""The curricula a CLIMD space searches (``none`` aside): TSS and the Table 4 baselines."""
PAPER_CURRICULUM = "climd"
"""A CLIMD space's default curriculum: the paper's TSS (the engine's own default is ``none``)."""


def climd() -> tuple[Dimension, ...]:
    """CLIMD's measurer and curriculum (paper Table 4 variants) with the choices the paper leaves open.

    T is the trial's ``epochs`` (``--epochs``): the schedule is defined relative to the budget, and
    early-stopping schedulers decide how much of it a trial spends.
    """
    c = CURRICULUM
    return (
        Categorical("curriculum", CURRICULUM_CHOICES, default=PAPER_CURRICULUM, grid=CURRICULUM_CHOICES,
                    help="TSS (climd) or a Table 4 curriculum baseline"),
        Float("gamma", 0.05, 1.0, default=c.gamma, grid=(0.1, 0.3, 0.5, 1.0), when=(When("curriculum", "climd"),),
              help="TSS smoothing gamma (Eq.6-7)"),
        Categorical("shortfall", ("redistribute", "drop"), default=c.shortfall, when=(When("curriculum", "climd"),),
                    help="what TSS does with quota a capped class cannot fill"),
        Int("n_buckets", 2, 20, default=c.n_buckets, when=(When("curriculum", "baby_step", "one_pass"),),
            help="difficulty buckets of Baby Step / One-Pass"),
        Float("c0", 0.01, 0.5, log=True, default=c.c0, when=(When("curriculum", "linear", "root", "geom"),),
              help="initial competence of Linear / Root / Geom"),
        Categorical("measurer", ("both", "intra", "inter"), default=c.measurer, grid=("both", "intra", "inter"),
                    help="MCM terms: Eq.4, intra-modal only (Eq.1), inter-modal only (Eq.3)"),
        Categorical("difficulty_order", ("desc", "asc"), default=c.difficulty_order, grid=("desc", "asc"),
                    help="desc: high r is easy; asc: low r is easy (paper ambiguous)"),
        Int("difficulty_every", 0, 10, default=c.difficulty_every, help="recompute r every k curriculum epochs (0 = once)"),
        Int("warmup_epochs", 0, 20, default=c.warmup_epochs, grid=(0, 10),
            help="epochs on every sample before the curriculum (paper: none; capped at epochs - 1)"),
        Int("competence_epochs", 0, 100, default=c.competence_epochs, when=(When("curriculum", "linear", "root", "geom"),),
            help="T_g of Linear / Root / Geom; 0 = the curriculum length (paper reading)"),
    )


CLIMD_FORBIDDEN = (
    Forbidden((When("difficulty_every", 0), When("warmup_epochs", 0)),
              "difficulty measured once, by the untrained model: needs warmup_epochs > 0"),
)
"""The CLIMD spaces' forbidden combination: a conditional domain (``warmup_epochs`` is drawn from
[1, 20] when ``difficulty_every`` = 0, so no sampler proposes it; the grid leaves it out), and
``trainables.climd.CurriculumConfig`` refuses it in one line in a config given by hand."""

CLIMD_LR = "CLIMD's paper (Sec. 3, Implementation Details: lr 5e-5, T = 100, for its early-fusion backbone)"
BORROWED_LR = ("CLIMD's paper value (5e-5), borrowed: this method's paper gives no learning rate, "
               "and it is not calibrated here")


def curriculum_grace(space, epochs: int) -> int:
    """Default grace of the CLIMD spaces: the epochs the space's default curriculum (its paper
    default point) needs until it trains on the whole training set for good, so that ASHA and the
    median rule never compare trials that have seen only the easy part of the data.

    Read off :class:`trainables.climd.Curriculum` itself (one epoch after the last epoch
    that trains on a subset). With CLIMD's TSS (Eq.7: S_t = t/T N, after ``warmup_epochs``) that is
    the whole budget: S_t = N only at the last epoch, so a CLIMD search stops no trial early unless
    ``--grace-period`` asks for it. A curriculum that never trains on a subset gets a quarter.
    """
    from trainables import climd as curriculum

    config = space.default_config()
    labels = np.repeat(np.arange(3), (60, 30, 10))  # any imbalanced labels: S_t and c(t) do not depend on them
    rng = np.random.default_rng(0)
    sampler = curriculum.Curriculum(labels, {**config, "epochs": epochs}, epochs, rng)
    last_partial = None
    for epoch in range(epochs):
        if sampler.needs_difficulty(epoch):
            sampler.set_difficulty(rng.random(len(labels)))
        if len(np.unique(sampler.epoch_indices(epoch))) < len(labels):
            last_partial = epoch
    return max(1, epochs // 4) if last_partial is None else min(epochs, last_partial + 2)


def without_grid(dims: tuple[Dimension, ...], keep: tuple[str, ...] = ()) -> tuple[Dimension, ...]:
    """The same dimensions held at their defaults in a grid search (except those in ``keep``)."""
    return tuple(d if d.name in keep else replace(d, grid=()) for d in dims)
