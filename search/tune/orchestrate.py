"""Build and run the Ray Tune search: sampler, scheduler, trainable, Tuner (or its restore).

Samplers and schedulers are registries (``SAMPLERS``, ``SCHEDULERS``): name -> an entry that makes
the Optuna sampler or Ray scheduler and carries what the search does differently for it (the
points a sampler enqueues first, whether they are the whole search, whether it is multi-objective;
a scheduler's reporting and checkpoint cadence, whether it draws a fixed population), so nothing
here branches on a name.

- Every sampler is an Optuna sampler behind ``OptunaSearch`` with the space's define-by-run
  function; the paper-default configuration is enqueued first (``points_to_evaluate``), then the
  ``--points`` the user gave. ``grid`` enumerates the space's paper-style grid
  (:meth:`spaces.space.Space.grid_points`: paper default first, the rest in a seeded order) as
  enqueued points, so conditional dimensions are respected; ``--num-samples`` larger than the
  grid is cut to the grid. ``nsga2`` (and tpe/random given several metrics) optimise several
  objectives at once.
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
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from ray import tune
from ray.tune.schedulers import FIFOScheduler, HyperBandScheduler, PopulationBasedTraining, TrialScheduler
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter, SearchAlgorithm, Searcher, SearchGenerator

from search import compat
from search.prepare import registry_names
from search.prepare.config import SearchConfig
from search.trust import integrity
from search.tune import faults, optuna_storage
from search.tune.replay import RememberingASHA, RememberingMedian
from search.tune.settle import RecordFinal, settle
from spaces import Space
from trainables.trainable import TRAINABLES
from trainables.trial_data import TrialData


# --------------------------------------------------------------------------------- samplers
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


def build_searcher(cfg: SearchConfig, space: Space, fingerprint: str = "",
                   warm: Sequence[optuna.trial.FrozenTrial] = ()) -> Searcher | SearchAlgorithm:
    """The Optuna searcher on the search's persistent study (:mod:`search.tune.optuna_storage`), with
    ``warm`` (an earlier search's finished trials) in it; the scheduler's fixed population
    where it draws one (PBT)."""
    population = SCHEDULERS[cfg.scheduler].population
    if population is not None:
        return population(cfg, space)
    metric: str | list[str] = list(cfg.metric) if cfg.multi_objective else cfg.primary_metric
    mode: str | list[str] = list(cfg.mode) if cfg.multi_objective else cfg.primary_mode
    return optuna_storage.PersistentOptunaSearch(
        space, metric=metric, mode=mode, points_to_evaluate=initial_points(cfg, space),
        sampler=SAMPLERS[cfg.sampler](cfg), study_name=cfg.name, storage_url=optuna_storage.storage_url(cfg),
        attrs=optuna_storage.study_attrs(cfg, fingerprint), warm=warm)


class SearchBudget(SearchGenerator):
    """Ray's ``SearchGenerator`` whose number of trials can grow when the search is resumed:
    Ray restores the count it was started with; ``total`` (this session's ``--num-samples``)
    raises it, so a finished search samples the extra trials and its finished ones stay."""

    def __init__(self, searcher: Searcher, total: int) -> None:
        super().__init__(searcher)
        self.total = total
        self.settled: dict[str, dict[str, Any]] = {}
        self.storage_path: str | None = None  # where the search is now (set on resume)

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        # Ray restores the experiment of the first session with its storage: the trials sampled from
        # here on would be written where the results folder was then (a copied or moved folder)
        experiment = compat.generator_experiment(self)
        if experiment is not None and getattr(self, "storage_path", None):
            compat.rebase_experiment_storage(experiment, self.storage_path)
        compat.raise_total_samples(self, self.total)
        # trials search.tune.settle marked finished: the searcher's snapshot still has them running
        for trial_id, result in getattr(self, "settled", {}).items():
            self.on_trial_complete(trial_id, result=result)
        self.settled = {}


def search_algorithm(cfg: SearchConfig, space: Space, fingerprint: str = "",
                     warm: Sequence[optuna.trial.FrozenTrial] = ()) -> SearchAlgorithm:
    """The searcher as Tune would wrap it (``--max-concurrent`` as a ``ConcurrencyLimiter``), in a
    :class:`SearchBudget`; PBT's population as it is."""
    searcher = build_searcher(cfg, space, fingerprint, warm)
    if not isinstance(searcher, Searcher):
        return searcher
    if cfg.max_concurrent:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=cfg.max_concurrent)
    return SearchBudget(searcher, num_trials(cfg, space))


def base_searcher(search_alg: Any) -> Any:
    """The innermost searcher of Tune's wrappers (``SearchGenerator``, ``ConcurrencyLimiter``)."""
    while hasattr(search_alg, "searcher"):
        search_alg = search_alg.searcher
    return search_alg


def pbt_population(cfg: SearchConfig, space: Space) -> BasicVariantGenerator:
    """PBT's initial population: the paper default, the ``--points``, then random draws from the
    space (conditional dimensions respected), all fixed before the search starts."""
    points = initial_points(cfg, space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=cfg.search_seed))
    while len(points) < cfg.num_samples:
        points.append({k: v for k, v in space.sample(study.ask()).items() if k not in space.fixed})
    return BasicVariantGenerator(points_to_evaluate=points[: cfg.num_samples], random_state=cfg.search_seed)


# --------------------------------------------------------------------------------- schedulers
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


# --------------------------------------------------------------------------------- the tuner
def checkpoint_every(cfg: SearchConfig) -> int:
    """Epochs between checkpoints (the last epoch always has one; checkpoints are written only
    with a report): what the scheduler needs, else what fault tolerance needs."""
    return CADENCES[cfg.scheduler].checkpoint_every(cfg)


def fixed_keys(cfg: SearchConfig, space: Space) -> dict[str, Any]:
    """The keys every trial config gets besides the sampled ones (ARCHITECTURE.md, "Config path")."""
    return {
        **space.fixed,
        "method": space.method, "space": space.name, "data": cfg.data, "seed": cfg.seed,
        "folds": cfg.folds, "val_fraction": cfg.val_fraction, "epochs": cfg.epochs,
        **CADENCES[cfg.scheduler].keys(cfg),
        "metric": cfg.primary_metric if not cfg.multi_objective else list(cfg.metric),
        "mode": cfg.primary_mode if not cfg.multi_objective else list(cfg.mode),
        "text_encoder": cfg.text_encoder, "image_encoder": cfg.image_encoder, "cache_dir": cfg.cache_dir,
    }


def param_space(cfg: SearchConfig, space: Space) -> dict[str, Any]:
    """The Tuner's ``param_space``: the fixed keys. With a fixed population (PBT) also every dimension as ``None``:
    Ray's ``BasicVariantGenerator`` only fills keys its ``param_space`` has, so a member of the
    population lacking a conditional dimension records it as null (the trainable drops it)."""
    keys = fixed_keys(cfg, space)
    if not has_study(cfg):
        keys = {**{name: None for name in space.names}, **keys}
    return keys


def trial_dirname(trial: Any) -> str:
    """Short trial folder names (``<trainable>_<trial id>``): Ray's default lists every parameter."""
    return f"{trial.trainable_name}_{trial.trial_id}"


def trainable(cfg: SearchConfig, space: Space, data: TrialData) -> Any:
    """The family's function trainable with the data in the object store and its resources."""
    fn = tune.with_parameters(TRAINABLES[space.method], data=data)
    return tune.with_resources(fn, {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial})


def result_loggers() -> list[tune.Callback]:
    """The result files every trial folder gets: ``result.json`` (every report, its ``curve``
    included: :mod:`search.select.results` and the reports read it) and ``progress.csv``. Ray would add a
    TensorBoard logger too, writing an event file on every report that nothing here reads and
    that cannot hold a ``curve``; ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS`` (set by
    ``search.prepare.preflight.connect``) leaves it out."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    return [JsonLoggerCallback(), CSVLoggerCallback()]


def build_tuner(cfg: SearchConfig, space: Space, data: TrialData, callbacks: list[tune.Callback],
                warm: Sequence[optuna.trial.FrozenTrial] = ()) -> tune.Tuner:
    search_alg = search_algorithm(cfg, space, data.fingerprint, warm)
    compat.snapshot_each_new_trial()
    return tune.Tuner(
        trainable(cfg, space, data),
        param_space=param_space(cfg, space),
        tune_config=tune.TuneConfig(
            search_alg=search_alg,
            scheduler=SCHEDULERS[cfg.scheduler](cfg, space),
            num_samples=num_trials(cfg, space),
            # the SearchBudget holds the ConcurrencyLimiter; PBT's generator takes the bound itself
            max_concurrent_trials=None if isinstance(search_alg, SearchBudget) else cfg.max_concurrent,
            reuse_actors=True,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=cfg.name,
            storage_path=cfg.storage_path,
            callbacks=[*callbacks, RecordFinal(), *result_loggers(), *faults.callbacks()],
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            # Ray deletes none: its rotation (num_to_keep) deletes a checkpoint the stored snapshot may
            # still point to; search.select.cleanup.PruneCheckpoints deletes only what no resume can need
            # (a checkpoint holds every fold's model and optimizer: OmniFuse, 5 folds, 17 to 200 MB)
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            verbose=0,
        ),
    )


def restore_tuner(cfg: SearchConfig, space: Space, data: TrialData, callbacks: list[tune.Callback]) -> tune.Tuner:
    """The search ``--name`` as it was left: finished trials stay, unfinished ones continue from
    their checkpoints, the searcher's state comes back (its Optuna study from its storage). The
    callbacks are this run's (new tracking URI, fresh progress line) with the state Tune saved
    for them. A ``--num-samples`` above the saved one extends the search by that many trials.
    A trial whose final result was recorded after the last snapshot stays finished (:mod:`search.tune.settle`)."""
    settled = settle(cfg.experiment_path)
    compat.snapshot_each_new_trial()
    integrity.seal(cfg.experiment_path)  # settle rewrote Tune's experiment state (verified before it)
    tuner = tune.Tuner.restore(cfg.experiment_path, trainable(cfg, space, data), resume_unfinished=True,
                               resume_errored=False, restart_errored=False)
    compat.set_run_callbacks(tuner, [*callbacks, RecordFinal(), *result_loggers(), *faults.callbacks()])
    search_alg = compat.tuner_search_alg(tuner)
    if isinstance(search_alg, SearchBudget):
        search_alg.total = num_trials(cfg, space)
        search_alg.settled = settled
        search_alg.storage_path = cfg.storage_path
        base = base_searcher(search_alg)
        if isinstance(base, optuna_storage.PersistentOptunaSearch) and base.storage_url is not None:
            base.storage_url = optuna_storage.storage_url(cfg)
    return tuner
