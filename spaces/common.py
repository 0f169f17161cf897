"""Dimension groups shared by several spaces: training, width, and CLIMD's curriculum.

Defaults are the paper's where it gives one, else the engine's/model's documented default
(``trainables.engine.DEFAULTS``, ``trainables.climd.DEFAULTS``, each model's ``DEFAULTS``);
``tests/test_spaces.py`` checks that they agree, so the first trial of a space trains exactly
what the code trains with no configuration.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from spaces.dimensions import Categorical, Dimension, Float, Int, When


def training(*, lr: float = 5e-5, weight_decay: float = 1e-4, batch_size: int = 32,
             lr_grid: tuple[float, ...] = ()) -> tuple[Dimension, ...]:
    """AdamW learning rate and weight decay, mini-batch size (CLIMD's paper: lr 5e-5)."""
    return (
        Float("lr", 1e-5, 1e-2, log=True, default=lr, grid=lr_grid, mutable=True, help="AdamW learning rate"),
        Float("weight_decay", 1e-6, 1e-1, log=True, default=weight_decay, mutable=True, help="AdamW weight decay"),
        Categorical("batch_size", (16, 32, 64, 128), default=batch_size, help="mini-batch size"),
    )


def width(*, hidden: int = 128, dropout: float = 0.1, hidden_grid: tuple[int, ...] = (),
          dropout_grid: tuple[float, ...] = ()) -> tuple[Dimension, ...]:
    """Model width (encoder/token width) and dropout."""
    return (
        Categorical("hidden", (32, 64, 128, 256), default=hidden, grid=hidden_grid, help="hidden width"),
        Float("dropout", 0.0, 0.5, default=dropout, grid=dropout_grid, help="dropout rate"),
    )


CLIMD_SCHEDULERS = ("climd", "baby_step", "one_pass", "linear", "root", "geom")


def climd() -> tuple[Dimension, ...]:
    """CLIMD's measurer and scheduler (paper Table 4 variants) with the choices the paper leaves open.

    T is the trial's ``epochs`` (``--epochs``): the schedule is defined relative to the budget, and
    early-stopping schedulers decide how much of it a trial spends.
    """
    return (
        Categorical("scheduler", CLIMD_SCHEDULERS, default="climd", grid=CLIMD_SCHEDULERS,
                    help="TSS (climd) or a Table 4 curriculum baseline"),
        Float("gamma", 0.05, 1.0, default=0.3, grid=(0.1, 0.3, 0.5, 1.0), when=(When("scheduler", "climd"),),
              help="TSS smoothing gamma (Eq.6-7)"),
        Categorical("shortfall", ("redistribute", "drop"), default="redistribute", when=(When("scheduler", "climd"),),
                    help="what TSS does with quota a capped class cannot fill"),
        Int("n_buckets", 2, 20, default=10, when=(When("scheduler", "baby_step", "one_pass"),),
            help="difficulty buckets of Baby Step / One-Pass"),
        Float("c0", 0.01, 0.5, log=True, default=0.01, when=(When("scheduler", "linear", "root", "geom"),),
              help="initial competence of Linear / Root / Geom"),
        Categorical("measurer", ("both", "intra", "inter"), default="both", grid=("both", "intra", "inter"),
                    help="MCM terms: Eq.4, intra-modal only (Eq.1), inter-modal only (Eq.3)"),
        Categorical("difficulty_order", ("desc", "asc"), default="desc", grid=("desc", "asc"),
                    help="desc: high r is easy; asc: low r is easy (paper ambiguous)"),
        Int("difficulty_every", 0, 10, default=1, help="recompute r every k curriculum epochs (0 = once)"),
    )


def curriculum_grace(space, epochs: int) -> int:
    """Default grace of the CLIMD spaces: the epochs the space's default curriculum (its paper
    default point) needs until it trains on the whole training set for good, so that ASHA and the
    median rule never compare trials that have seen only the easy part of the data.

    Read off :class:`trainables.climd.CurriculumSampler` itself (one epoch after the last epoch
    that trains on a subset). With CLIMD's TSS (Eq.7: S_t = t/T N, after ``warmup_epochs``) that is
    the whole budget: S_t = N only at the last epoch, so a CLIMD search stops no trial early unless
    ``--grace-period`` asks for it. A curriculum that never trains on a subset gets a quarter.
    """
    from trainables import climd as curriculum

    config = space.default_config()
    labels = np.repeat(np.arange(3), (60, 30, 10))  # any imbalanced labels: S_t and c(t) do not depend on them
    rng = np.random.default_rng(0)
    sampler = curriculum.CurriculumSampler(labels, {**config, "epochs": epochs}, epochs, rng)
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
