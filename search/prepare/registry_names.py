"""The names a search is configured with and what each entry can do, without Ray, Optuna or sklearn.

The registries that carry the behaviour (:data:`search.tune.samplers.SAMPLERS`,
:data:`search.tune.schedulers.SCHEDULERS`, :data:`search.select.references.REFERENCES`) import Ray or sklearn;
the options check (:mod:`search.prepare.config`) and the command line must not. This module is their one list of
names: each registry takes its entries' capabilities from here and asserts at import that its names are
these, so the options check asks a capability (``SAMPLERS[name].multi_objective``) instead of
keeping its own lists of names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplerTraits:
    """What the search does differently for a sampler of :data:`search.tune.samplers.SAMPLERS`."""

    multi_objective: bool = False
    """Optimises several objectives at once (``--metric a,b``)."""
    enumerates: bool = False
    """Its first points are the whole search (a grid): ``--num-samples`` above their number is cut to it."""
    learns: bool = True
    """Draws from what finished trials scored, so an earlier search's trials (``--warm-start``) help it."""
    at_random: bool = False
    """Draws at random: the sampler a scheduler with a fixed random population (PBT) may be named with."""
    spread_objective: bool = False
    """Given one metric, also minimises its spread over the folds (``<metric>_std``): performance
    against its fold-to-fold stability."""


SAMPLERS: dict[str, SamplerTraits] = {
    "tpe": SamplerTraits(multi_objective=True),
    "random": SamplerTraits(multi_objective=True, at_random=True),
    "grid": SamplerTraits(enumerates=True, learns=False),
    "cmaes": SamplerTraits(),
    "nsga2": SamplerTraits(multi_objective=True, spread_objective=True),
}
"""``--sampler``: the Optuna samplers (:data:`search.tune.samplers.SAMPLERS`), in the order shown."""


@dataclass(frozen=True)
class SchedulerTraits:
    """What the search does differently for a scheduler of :data:`search.tune.schedulers.SCHEDULERS`
    (its reporting and checkpoint cadence is there, :class:`search.tune.schedulers.Cadence`)."""

    grace: bool = False
    """Reads ``--grace-period``: the epochs every trial trains before it may be stopped."""
    population: bool = False
    """Draws a fixed population at random before the search starts instead of asking a sampler (PBT:
    Ray Tune cannot combine it with a search algorithm): no Optuna study, no ``--warm-start``, no
    ``--resume --num-samples`` extension, one objective."""


SCHEDULERS: dict[str, SchedulerTraits] = {
    "asha": SchedulerTraits(grace=True),
    "hyperband": SchedulerTraits(),
    "median": SchedulerTraits(grace=True),
    "pbt": SchedulerTraits(population=True),
    "fifo": SchedulerTraits(),
}
"""``--scheduler``: the Ray Tune trial schedulers (:data:`search.tune.schedulers.SCHEDULERS`)."""

REFERENCES: tuple[str, ...] = ("logreg", "rf", "hgb")
"""``--references``: the entries of :data:`search.select.references.REFERENCES`."""

PROMOTE_POLICIES: dict[str, str] = {
    "better": "the new best gets the champion alias only if it beats the registered champion on the same fresh "
              "folds (else alias challenger)",
    "always": "it always gets it",
    "never": "it never does",
}
"""``--promote``: the policies of :mod:`search.handoff.promotion`, with what each does."""

ENSEMBLE_CHOICES: tuple[str, ...] = ("off", "trials", "trials+references")
"""``--ensemble``: which candidates ensemble selection (:mod:`search.select.ensemble`) may use."""


def with_trait(registry: dict[str, object], trait: str) -> tuple[str, ...]:
    """The names of ``registry`` whose entry has ``trait`` (for messages: ``use one of ...``)."""
    return tuple(name for name, traits in registry.items() if getattr(traits, trait))
