"""The schedulers' registry: ``SCHEDULERS``, name -> a :class:`Scheduler` entry that makes the Ray trial
scheduler and carries what the search does differently for it (its reporting and checkpoint cadence, whether
it draws a fixed population), so nothing in :mod:`search.tune.orchestrate` branches on a name.

- Schedulers act on the primary metric, counting epochs (the result's ``epoch``, not Tune's
  ``training_iteration``, which counts reports) with the ``--epochs`` budget as ``max_t``;
  ASHA/median stop poor trials early, HyperBand pauses and resumes them from their checkpoints,
  PBT perturbs the space's mutable dimensions of a population drawn at random (PBT cannot be
  combined with a search algorithm in Ray Tune).
- A trial reports to Ray Tune only when its scheduler or the progress line needs a result
  (the entry's ``Cadence``: the scheduler's milestone epochs, every N epochs where the scheduler acts on
  every N-th, a timed report for the progress line, the last epoch); the epochs in between
  travel in the next report's ``curve`` and reach MLflow in full. It checkpoints only at
  reports, as often as the scheduler (HyperBand pauses, PBT exploits) and fault tolerance need.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from ray.tune.schedulers import FIFOScheduler, HyperBandScheduler, PopulationBasedTraining, TrialScheduler
from ray.tune.search import BasicVariantGenerator, SearchAlgorithm

from search.prepare import registry_names
from search.prepare.config import SearchConfig
from search.tune.replay import RememberingASHA, RememberingMedian
from search.tune.samplers import initial_points
from spaces import Space

SchedulerFactory = Callable[[SearchConfig, Space], TrialScheduler]


def _grace(cfg: SearchConfig) -> int:
    """Epochs every trial gets before it can be stopped: ``--grace-period`` (resolved to the space's
    default, :meth:`spaces.Space.default_grace`); a quarter of the budget where unset."""
    return cfg.grace_period if cfg.grace_period is not None else max(1, cfg.epochs // 4)


def _perturbation_interval(cfg: SearchConfig) -> int:
    return max(1, cfg.epochs // 5)


ASHA_REDUCTION_FACTOR = 3


def _common(cfg: SearchConfig) -> dict[str, Any]:
    # epochs, not reports: a trial reports only at the epochs its scheduler needs (CADENCES)
    return {"metric": cfg.primary_metric, "mode": cfg.primary_mode, "time_attr": "epoch"}


def _pbt(cfg: SearchConfig, space: Space) -> PopulationBasedTraining:
    """Exploit/explore every ``perturbation_interval`` epochs on the space's mutable dimensions.
    PBT draws its perturbations from Python's ``random``, seeded here from ``--sampler-seed``."""
    random.seed(cfg.search_seed)
    return PopulationBasedTraining(**_common(cfg), perturbation_interval=_perturbation_interval(cfg),
                                   hyperparam_mutations={d.name: d.tune_domain() for d in space.mutable()})


def pbt_population(cfg: SearchConfig, space: Space) -> BasicVariantGenerator:
    """PBT's initial population: the paper default, the ``--points``, then random draws from the
    space (conditional dimensions respected), all fixed before the search starts."""
    points = initial_points(cfg, space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=cfg.search_seed))
    while len(points) < cfg.num_samples:
        points.append({k: v for k, v in space.sample(study.ask()).items() if k not in space.fixed})
    return BasicVariantGenerator(points_to_evaluate=points[: cfg.num_samples], random_state=cfg.search_seed)


def asha_rungs(cfg: SearchConfig) -> list[int]:
    """The epochs at which ASHA compares a trial with its rung (Ray's ``_Bracket``: grace * rf^k
    for k = 0 .. int(log(max_t / grace) / log(rf))); it acts on the first result at or past each."""
    grace, rf = _grace(cfg), ASHA_REDUCTION_FACTOR
    n = int(math.log(cfg.epochs / grace) / math.log(rf) + 1)
    return sorted({grace * rf ** k for k in range(n)} - {cfg.epochs})


def _fault_tolerance(cfg: SearchConfig) -> int:
    """Epochs between checkpoints when only a crash (``--max-failures``) or a kill (``--resume``)
    needs one: a quarter of the budget, so a retry repeats at most that much of the trial."""
    return max(1, cfg.epochs // 4)


@dataclass(frozen=True)
class Cadence:
    """When the trials of a scheduler report to Ray Tune and checkpoint (``run_trial`` reads the
    keys of :meth:`keys`). A report costs tens of milliseconds in Ray's result path (see
    ``benchmarks/throughput.py``), an epoch of a small model about as much, so a trial reports at:
    ``milestones`` (the epochs the scheduler decides at), every ``every`` epochs (0: never on a
    count), every ``seconds`` of wall clock for the progress line (0: never on time; a scheduler
    that acts on whatever result it gets, PBT, must not see extra results), and the last epoch."""

    milestones: Callable[[SearchConfig], list[int]] = field(default=lambda cfg: [])
    every: Callable[[SearchConfig], int] = field(default=lambda cfg: 0)
    seconds: float = 10.0
    checkpoint_every: Callable[[SearchConfig], int] = field(default=_fault_tolerance)
    prune_ended: bool = True  # search.select.cleanup.PruneCheckpoints: ended trials' checkpoints go while it runs

    def keys(self, cfg: SearchConfig) -> dict[str, Any]:
        return {"report_at": [int(e) for e in self.milestones(cfg)], "report_every": int(self.every(cfg)),
                "report_seconds": float(self.seconds), "checkpoint_every": int(self.checkpoint_every(cfg))}


@dataclass(frozen=True)
class Scheduler:
    """An entry of :data:`SCHEDULERS`: Ray's trial scheduler and what the search does for it."""

    make: SchedulerFactory
    traits: registry_names.SchedulerTraits
    """What it can do (reads ``--grace-period``, draws a fixed population): the options check reads them there."""
    cadence: Cadence = field(default_factory=Cadence)
    """When its trials report and checkpoint."""
    population: Callable[[SearchConfig, Space], SearchAlgorithm] | None = None
    """A population fixed before the search starts instead of a searcher (Ray Tune cannot combine
    PBT with a search algorithm): no Optuna study, no ``--resume --num-samples`` extension."""

    def __call__(self, cfg: SearchConfig, space: Space) -> TrialScheduler:
        return self.make(cfg, space)


_SCHEDULER_TRAITS = registry_names.SCHEDULERS
SCHEDULERS: dict[str, Scheduler] = {
    # ASHA acts on the first result at or past each rung, so reports at the rungs are enough; ASHA and
    # the median rule get their records back on --resume (search.tune.replay)
    "asha": Scheduler(lambda cfg, space: RememberingASHA(**_common(cfg), max_t=cfg.epochs, grace_period=_grace(cfg),
                                                       reduction_factor=ASHA_REDUCTION_FACTOR),
                      _SCHEDULER_TRAITS["asha"], Cadence(milestones=asha_rungs)),
    # HyperBand pauses trials at its brackets' milestones and resumes them from their checkpoints
    "hyperband": Scheduler(lambda cfg, space: HyperBandScheduler(**_common(cfg), max_t=cfg.epochs, reduction_factor=3),
                           _SCHEDULER_TRAITS["hyperband"], Cadence(every=lambda cfg: 1, checkpoint_every=lambda cfg: 1)),
    # the median rule compares running means of every result up to an epoch
    "median": Scheduler(lambda cfg, space: RememberingMedian(**_common(cfg), grace_period=_grace(cfg),
                                                             min_samples_required=3),
                        _SCHEDULER_TRAITS["median"], Cadence(every=lambda cfg: 1)),
    # PBT exploits at every perturbation interval, from the checkpoint of that report, and may
    # clone an ended trial of its upper quantile, so no ended trial's checkpoint goes before the end
    "pbt": Scheduler(_pbt, _SCHEDULER_TRAITS["pbt"], Cadence(every=_perturbation_interval, seconds=0.0,
                                                            checkpoint_every=_perturbation_interval, prune_ended=False),
                     population=pbt_population),
    "fifo": Scheduler(lambda cfg, space: FIFOScheduler(), _SCHEDULER_TRAITS["fifo"]),
}
assert tuple(SCHEDULERS) == tuple(_SCHEDULER_TRAITS) and all(
    s.traits is _SCHEDULER_TRAITS[n] and (s.population is not None) == s.traits.population
    for n, s in SCHEDULERS.items()), "search.prepare.registry_names.SCHEDULERS declares the names and capabilities of these"

CADENCES: dict[str, Cadence] = {name: s.cadence for name, s in SCHEDULERS.items()}
"""Each scheduler's :class:`Cadence` (read by ``trainables.trainable``'s keys)."""


def has_study(cfg: SearchConfig) -> bool:
    """Whether the search samples from an Optuna study (every scheduler but a fixed population)."""
    return SCHEDULERS[cfg.scheduler].population is None
