"""The stages of one search, each a function of the options and the previous stage's outcome:
:func:`prepare` (checks, data, cluster) -> :func:`tune_trials` (Ray Tune's trials) ->
:func:`collect` (``results.csv``, the Optuna study in agreement with Tune) ->
:func:`select_and_hand_off` (confirmation, references, ensemble, refit, registration, promotion)
; the reports and :mod:`search.report.render` close it (:func:`search.run.execute` chains them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

from search.prepare import preflight
from search.prepare.config import SearchConfig, storage_path
from search.prepare.errors import UsageError
from search.report.timing import Steps, since_start
from search.select import oof, results, results_csv
from search.select.cleanup import PruneCheckpoints, Pruned, prune_checkpoints
from search.select.oof import KeepOutOfFold
from search.select.results import SEARCH_FILE
from search.trust import files, integrity, relocate
from search.trust.credentials import redact
from search.tune import faults, orchestrate, samplers, schedulers, supervisor
from search.tune.progress import ProgressLine
from search.tune.settle import stop_if_lost
from search.tune.study_agreement import agree_with_tune
from trainables.version import code_version


def tracking_uri(cfg: SearchConfig) -> str:
    from search.tracking.store import default_tracking_uri

    if cfg.tracking_uri:
        return cfg.tracking_uri
    if "://" in cfg.storage_path:
        raise UsageError(f"--storage {cfg.storage}: a remote results folder needs --tracking-uri (an MLflow server)")
    return default_tracking_uri(cfg.storage_path)


# --------------------------------------------------------------------------------- stage 1: prepare
@dataclass
class Prepared:
    """What the checks, the data and the cluster leave for the trials."""

    cfg: SearchConfig                 # the options, with what the cluster fixed (--max-concurrent)
    space: Any
    uri: str                          # the MLflow tracking URI
    data: Any                         # trainables.trial_data.TrialData
    study_url: str | None             # the persistent Optuna study's storage, if any
    warm: list[Any]                   # finished trials of --warm-start
    timings: Steps
    search_tags: dict[str, str]
    copied_from: str | None = None    # a copied results folder: where its MLflow store was
    out: TextIO | None = None         # where the driver's lines go (the command line: stdout); None: nowhere

    def say(self, text: str) -> None:
        """A line for the user, if anyone asked for them (:func:`search.run.execute`'s ``out``)."""
        if self.out is not None:
            print(text, file=self.out, flush=True)


def prepare(cfg: SearchConfig, out: TextIO | None = None) -> Prepared:
    """Every check that can refuse the search, then the data and the Ray cluster. What the checks
    create (folders, the study's database) is removed if one of them refuses; a new MLflow store is
    created only after them (MLflow keeps a store open per URI in the process)."""
    space = cfg.space_spec
    uri = tracking_uri(cfg)
    supervisor.report(name=cfg.name, folder=cfg.experiment_path, storage=cfg.storage, tracking_uri=uri,
                      address=cfg.address)
    from search.prepare import dataset_input  # noqa: F401 - MLflow's import counts as start-up
    from search.tune import optuna_storage

    timings = Steps(startup_s=since_start())
    # the driver's own torch work (model check, refit of the top-k) runs on a trial's share of the
    # cores: torch's default (every core) makes each small op wait for the slowest thread, which on
    # a busy machine made a refit 13x slower (benchmarks/RESULTS.md, throughput)
    import torch

    torch.set_num_threads(max(1, int(cfg.cpus_per_trial)))
    copied_from = None
    if cfg.resume:  # a copied results folder: its MLflow store's artifact locations follow it
        saved_storage = storage_path(json.loads(files.read_text(cfg.experiment_path, SEARCH_FILE))["storage"])
        if relocate.rebase_mlflow_store(uri, saved_storage, cfg.storage_path) or saved_storage != cfg.storage_path:
            copied_from = relocate.rebase_uri(uri, cfg.storage_path, saved_storage)
    study_url = optuna_storage.storage_url(cfg) if schedulers.has_study(cfg) else None
    new = preflight.NewPaths(cfg, uri, study_url)
    try:
        cfg, data, warm = _checked(cfg, space, uri, study_url, preflight.sqlite_path(uri) in new, timings)
    except BaseException:
        new.remove()
        raise
    search_tags = {"fusetune.space": space.name, "fusetune.method": space.method, "fusetune.data": cfg.data_name,
                   "fusetune.data_spec": cfg.data, "fusetune.data_fingerprint": data.fingerprint,
                   "fusetune.code_version": code_version(), "fusetune.sampler": cfg.sampler,
                   "fusetune.scheduler": cfg.scheduler}
    if cfg.parent_run_id:
        from search.tracking.store import PARENT_RUN_TAG

        search_tags[PARENT_RUN_TAG] = cfg.parent_run_id
    return Prepared(cfg, space, uri, data, study_url, warm, timings, search_tags, copied_from, out)


def _checked(cfg: SearchConfig, space: Any, uri: str, study_url: str | None, new_store: bool,
             timings: Steps) -> tuple[SearchConfig, Any, list[Any]]:
    """The checks that can refuse a search, the data, the warm start, Ray: the options with the
    cluster's slots, the data, the warm-start trials."""
    from search.tracking.store import check_tracking_uri
    from search.tune import optuna_storage

    tracking_option = "--tracking-uri" if cfg.tracking_uri else f"--storage {cfg.storage} (its mlflow.db)"
    with timings("checks_s"):
        preflight.check_storage(cfg)
        preflight.check_sqlite_file(tracking_option, uri)
        if new_store:
            preflight.check_creatable(tracking_option, preflight.sqlite_path(uri))
        else:
            check_tracking_uri(uri)
        if study_url:
            optuna_storage.open_storage(study_url)
            if not cfg.resume:
                optuna_storage.check_new_study(study_url, cfg.name)
        if cfg.address:
            preflight.check_address(cfg.address)
    with timings("data_s"):
        data = preflight.load_data(cfg, space)
    warm = optuna_storage.warm_start_trials(cfg, data.fingerprint) if not cfg.resume else []
    supervisor.keep_ray_output_in(cfg.experiment_path)  # Ray's dumps in <search>/driver.log, not the terminal
    timings.update(preflight.connect(cfg))
    cfg = _with_slots(cfg, preflight.check_resources(cfg))
    with timings("checks_s"):
        preflight.smoke_check(cfg, space, data)
        if new_store:
            check_tracking_uri(uri)
    return cfg, data, list(warm)


def _with_slots(cfg: SearchConfig, slots: int) -> SearchConfig:
    """Without --max-concurrent, as many trials as fit: Tune then also starts that many trial
    workers at once (with a searcher it starts one at a time otherwise) and samples a trial only
    when it can run."""
    return replace(cfg, max_concurrent=slots) if cfg.max_concurrent is None else cfg


# --------------------------------------------------------------------------------- stage 2: tune
@dataclass
class Tuned:
    """Where Ray Tune's trials are, once ``Tuner.fit`` returned (every trial ended, or a Ctrl-C)."""

    exp_path: str
    fs: Any                               # the search folder's pyarrow filesystem
    parent_run_id: str | None             # the search's MLflow run
    pruned_during: Pruned                 # checkpoints deleted while the trials ran


def tune_trials(cfg: SearchConfig, prepared: Prepared) -> Tuned:
    """The trials, tracked in MLflow (a new search, or the one ``--resume`` continues)."""
    from search.prepare.dataset_input import DatasetInfo
    from search.tracking.callback import MLflowTracking

    space, data, timings = prepared.space, prepared.data, prepared.timings
    exp_path = cfg.experiment_path
    total = samplers.num_trials(cfg, space)
    tracking = MLflowTracking(prepared.uri, cfg.experiment, cfg.name, search_tags=prepared.search_tags,
                              search_params=cfg.as_params(), dataset=DatasetInfo.of(cfg, data),
                              copied_from=prepared.copied_from)
    callbacks = [ProgressLine(total=total, epochs=cfg.epochs, metric=cfg.primary_metric, mode=cfg.primary_mode,
                              stream=prepared.out, shown=prepared.out is not None),
                 tracking]
    files.write_text(json.dumps(cfg.as_saved(), indent=2, default=list), exp_path, SEARCH_FILE)
    # the only deleter of checkpoints: the disk does not grow with the trials, and none a resume needs goes
    callbacks.append(KeepOutOfFold())  # before the pruner: a trial's predictions outlive its checkpoint
    pruner = PruneCheckpoints(cfg.primary_metric, cfg.primary_mode, keep=max(cfg.top_k, 1),
                              ended=schedulers.SCHEDULERS[cfg.scheduler].cadence.prune_ended)
    callbacks.append(pruner)
    integrity.install()  # every snapshot Tune writes is sealed before it reaches the search folder
    if cfg.resume:
        integrity.verify(exp_path)
        tuner = orchestrate.restore_tuner(cfg, space, data, callbacks)
    else:
        tuner = orchestrate.build_tuner(cfg, space, data, callbacks, prepared.warm)
    integrity.seal(exp_path)  # tuner.pkl, written when the Tuner is built
    prepared.say(f"{'resuming' if cfg.resume else 'search'} {cfg.name}: space {space.name} ({space.method}) on "
                 f"{cfg.data} [{len(data.data)} training samples, "
                 f"{'hold-out' if cfg.folds == 0 else f'{cfg.folds}-fold'}], {total} trials x {cfg.epochs} epochs, "
                 f"sampler {cfg.sampler}, scheduler {cfg.scheduler}, "
                 f"objective {', '.join(f'{m} ({d})' for m, d in zip(cfg.metric, cfg.mode))}")
    if prepared.study_url:
        warm = prepared.warm
        prepared.say(f"Optuna study {cfg.name}: optuna-dashboard {redact(prepared.study_url)}" + (
            f" (warm start: {len(warm)} finished trials of {cfg.warm_start})" if warm else ""))
    elif schedulers.has_study(cfg):
        prepared.say("Optuna study in memory (a remote --storage; give --optuna-storage URL to keep it)")
    with timings("search_s"):
        grid = tuner.fit()
    stop_if_lost(grid, "search", own_node_only=True)  # the driver's own Ray node died: nothing after can run
    return Tuned(grid.experiment_path, grid.filesystem, tracking.parent_run_id, pruner.pruned)


# --------------------------------------------------------------------------------- stage 3: collect
@dataclass
class Collected:
    """Every trial as Tune left it, written to ``results.csv``."""

    rows: list[Any]                       # search.select.results.TrialResult, in creation order
    ranked: list[Any]                     # the trials that finished every epoch, best first
    pareto: set[str] | None
    csv_path: str
    pruned: Pruned = field(default_factory=lambda: Pruned(0, 0))  # checkpoints deleted (select_and_hand_off)

    @property
    def unfinished(self) -> list[Any]:
        return [r for r in self.rows if r.status not in ("TERMINATED", "ERROR")]


def collect(cfg: SearchConfig, prepared: Prepared, tuned: Tuned) -> Collected:
    """``results.csv``; the Optuna study brought into agreement with Tune's trials; the finished
    trials' out-of-fold predictions recovered (a driver killed between a checkpoint and its copy)."""
    exp_path, fs, sampled = tuned.exp_path, tuned.fs, prepared.space.names
    faults.point("results")
    with prepared.timings("results_s"):
        rows = results.collect(exp_path, fs)
        agree_with_tune(cfg, rows)  # a driver killed between Tune and Optuna
        pareto = results.pareto_front(rows, cfg.metric, cfg.mode) if cfg.multi_objective else None
        csv_path = files.write_text(results_csv.csv_text(rows, sampled, pareto), exp_path, results.RESULTS_CSV, fs)
    ranked = results.ranked(rows, cfg.primary_metric, cfg.primary_mode)
    oof.recover(exp_path, ranked, fs)
    return Collected(rows, ranked, pareto, csv_path)


# --------------------------------------------------------------------------------- stage 4: select and hand off
def select_and_hand_off(cfg: SearchConfig, prepared: Prepared, tuned: Tuned, collected: Collected) -> Any:
    """Only the top trials' checkpoints kept; then :func:`search.select.champions.select` (confirmation,
    references, ensemble, refit, registration, promotion); ``results.csv`` gains the references."""
    from search.select.champions import select

    rows, ranked, timings = collected.rows, collected.ranked, prepared.timings
    with timings("prune_s"):  # an ended search: only the top trials' checkpoints are still read (export)
        pruned = prune_checkpoints(rows, {r.trial_id for r in ranked[: max(cfg.top_k, 1)]}, tuned.fs)
    collected.pruned = Pruned(pruned.folders + tuned.pruned_during.folders, pruned.bytes + tuned.pruned_during.bytes)
    if cfg.confirm_repeats and ranked:
        prepared.say(f"confirming the top {min(max(cfg.top_k, 1), len(ranked))}, the paper default"
                     f"{' and ' + ', '.join(cfg.references) if cfg.references else ''} on {cfg.confirm_repeats} fresh "
                     f"repetition(s) of the folds" + (f", and an ensemble of at most {cfg.ensemble_size} "
                                                      f"({cfg.ensemble})" if cfg.ensemble != "off" else "") + " ...")
    with timings("models_s"):  # confirmation, references, refit, test evaluation, registration, promotion
        chosen = select(cfg, prepared.space, rows, ranked, prepared.data, exp_path=tuned.exp_path, fs=tuned.fs,
                        uri=prepared.uri, parent_run_id=tuned.parent_run_id, data_name=cfg.data_name,
                        fixed=orchestrate.fixed_keys(cfg, prepared.space), search_tags=prepared.search_tags)
    if chosen.reference_rows:
        collected.csv_path = files.write_text(
            results_csv.csv_text(rows, prepared.space.names, collected.pareto, chosen.reference_rows), tuned.exp_path,
            results.RESULTS_CSV, tuned.fs)
    return chosen


