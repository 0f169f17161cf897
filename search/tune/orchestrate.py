"""Build and run the Ray Tune search: searcher, trainable, Tuner (or its restore).

Samplers and schedulers are registries (``SAMPLERS`` in :mod:`search.tune.samplers`, ``SCHEDULERS`` in
:mod:`search.tune.schedulers`): name -> an entry that makes the Optuna sampler or Ray scheduler and carries
what the search does differently for it (the points a sampler enqueues first, whether they are the whole
search, whether it is multi-objective; a scheduler's reporting and checkpoint cadence, whether it draws a
fixed population), so nothing here branches on a name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from ray import tune
from ray.tune.search import ConcurrencyLimiter, SearchAlgorithm, Searcher, SearchGenerator

from search import compat
from search.prepare.config import SearchConfig
from search.trust import integrity
from search.tune import faults, optuna_storage
from search.tune.samplers import SAMPLERS, initial_points, num_trials
from search.tune.schedulers import CADENCES, SCHEDULERS, has_study
from search.tune.settle import RecordFinal, settle
from spaces import Space
from trainables.trainable import TRAINABLES
from trainables.trial_data import TrialData, with_splits


# --------------------------------------------------------------------------------- the searcher
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
    # the search's splits made here: a trial's worker then imports no scikit-learn to make them again
    fn = tune.with_parameters(TRAINABLES[space.method], data=with_splits(data, cfg.folds, [cfg.seed], cfg.val_fraction))
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
