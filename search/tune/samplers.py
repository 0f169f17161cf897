"""The samplers' registry: ``SAMPLERS``, name -> a :class:`Sampler` entry that makes the Optuna sampler and
carries what the search does differently for it (the points it enqueues first, whether they are the whole
search, whether it is multi-objective), so nothing in :mod:`search.tune.orchestrate` branches on a name.

Every sampler is an Optuna sampler behind ``OptunaSearch`` with the space's define-by-run
function; the paper-default configuration is enqueued first (``points_to_evaluate``), then the
``--points`` the user gave. ``grid`` enumerates the space's paper-style grid
(:meth:`spaces.space.Space.grid_points`: paper default first, the rest in a seeded order) as
enqueued points, so conditional dimensions are respected; ``--num-samples`` larger than the
grid is cut to the grid. ``nsga2`` (and tpe/random given several metrics) optimise several
objectives at once.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from search.prepare import registry_names
from search.prepare.config import SearchConfig
from spaces import Space


def default_then_points(cfg: SearchConfig, space: Space) -> list[dict[str, Any]]:
    """The paper default, then the ``--points`` the user gave."""
    return [space.default_point(), *(dict(p) for p in cfg.points)]


def grid_points(cfg: SearchConfig, space: Space) -> list[dict[str, Any]]:
    """The space's paper-style grid: paper default first, the rest in a seeded order."""
    return space.grid_points(cfg.search_seed)


@dataclass(frozen=True)
class Sampler:
    """An entry of :data:`SAMPLERS`: the Optuna sampler and what the search does for it."""

    make: Callable[[SearchConfig], optuna.samplers.BaseSampler]
    traits: registry_names.SamplerTraits
    """What it can do (multi-objective, enumerating, ...): the options check reads them there, without Ray."""
    first: Callable[[SearchConfig, Space], list[dict[str, Any]]] = default_then_points
    """The points enqueued before the sampler draws (``initial_points``)."""

    @property
    def enumerates(self) -> bool:
        """The first points are the whole search: ``--num-samples`` above their number is cut to it."""
        return self.traits.enumerates

    @property
    def multi_objective(self) -> bool:
        """Optimises several objectives at once."""
        return self.traits.multi_objective

    def __call__(self, cfg: SearchConfig) -> optuna.samplers.BaseSampler:
        return self.make(cfg)


def _tpe(cfg: SearchConfig) -> optuna.samplers.TPESampler:
    """Multivariate TPE; ``group`` splits the conditional space into the groups of dimensions
    that occur together, so a conditional dimension is modelled only from trials that have it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=cfg.search_seed, multivariate=True, group=True)


_SAMPLER_TRAITS = registry_names.SAMPLERS
SAMPLERS: dict[str, Sampler] = {
    "tpe": Sampler(_tpe, _SAMPLER_TRAITS["tpe"]),
    "random": Sampler(lambda cfg: optuna.samplers.RandomSampler(seed=cfg.search_seed), _SAMPLER_TRAITS["random"]),
    # the grid's points are enqueued; the sampler only draws dimensions a point leaves open
    "grid": Sampler(lambda cfg: optuna.samplers.RandomSampler(seed=cfg.search_seed), _SAMPLER_TRAITS["grid"],
                    first=grid_points),
    "cmaes": Sampler(lambda cfg: optuna.samplers.CmaEsSampler(seed=cfg.search_seed, warn_independent_sampling=False),
                     _SAMPLER_TRAITS["cmaes"]),
    "nsga2": Sampler(lambda cfg: optuna.samplers.NSGAIISampler(seed=cfg.search_seed), _SAMPLER_TRAITS["nsga2"]),
}
assert tuple(SAMPLERS) == tuple(_SAMPLER_TRAITS) and all(
    s.traits is _SAMPLER_TRAITS[n] and (s.first is grid_points) == s.enumerates for n, s in SAMPLERS.items()), \
    "search.prepare.registry_names.SAMPLERS declares the names and capabilities of these samplers"


def initial_points(cfg: SearchConfig, space: Space) -> list[dict[str, Any]]:
    """What is evaluated first: the paper default, then ``--points`` (or the whole grid)."""
    return SAMPLERS[cfg.sampler].first(cfg, space)


def num_trials(cfg: SearchConfig, space: Space) -> int:
    if SAMPLERS[cfg.sampler].enumerates:
        return min(cfg.num_samples, len(initial_points(cfg, space)))
    return cfg.num_samples
