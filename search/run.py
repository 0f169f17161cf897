"""``python -m search.run``: a hyperparameter search of one space, tracked in MLflow.

    python -m search.run --space omnifuse
    python -m search.run --space climd --sampler grid --scheduler fifo --epochs 50
    python -m search.run --config search.yaml --num-samples 40
    python -m search.run --resume --name omnifuse-breast-tcga-20250101-120000

Order: options -> tracking URI and ``--address`` checks -> data (encoded once, feature cache) ->
Ray (local or ``--address``) and resources -> a model build check -> Tuner (or its restore) with the MLflow
callback and a progress line -> ``results.csv`` -> the top-k models logged and registered ->
the table of the best configurations and the command that opens the MLflow UI. Bad input is one
line on stderr and exit code 2, before any trial starts, and a refused search leaves nothing behind
(what its checks created is removed; a new MLflow store is created only once they pass); exit code
1 when no trial finished.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from typing import Any

from search import cli, config, faults, integrity, locks, oof, orchestrate, preflight, relocate, results, supervisor
from search.cleanup import PruneCheckpoints, Pruned, prune_checkpoints
from search.config import SearchConfig, experiment_path, resolve, storage_path
from search.credentials import private_outputs, redact
from search.errors import UsageError
from search.objective import Objective
from search.oof import KeepOutOfFold
from search.progress import ProgressLine, format_duration
from search.study_agreement import agree_with_tune
from search.timing import Steps, since_start
from trainables.data import DataError
from trainables.version import code_version

PROG = "python -m search.run"
SEARCH_FILE = "search.json"
"""The resolved options, saved in the search folder; ``--resume`` reads them back."""

TABLE_ROWS = 5
"""Configurations in the final table (at least; ``--top-k`` more if larger)."""

STEP_ORDER = ("startup_s", "checks_s", "data_s", "ray_init_s", "search_s", "results_s", "prune_s", "models_s",
              "reports_s", "total_s")
"""The fixed steps of a search in the final ``steps:`` line (seconds; ``startup`` = interpreter
start and imports, ``models`` = the confirmation stage, the references, the refit, test evaluation,
registration and promotion of the top-k)."""

RESUME_OVERRIDES = ("storage", "name", "resume", "address", "tracking_uri", "top_k", "num_samples")
"""Options a resumed search may change; the others are the saved search's. A larger
``--num-samples`` extends the search (a finished one too) by the extra trials."""


# --------------------------------------------------------------------------------- options
def options(given: dict[str, Any], *, refuse_taken: bool = True) -> SearchConfig:
    """The search's options from the ones given (by field name, as the command line, a ``--config``
    file or :func:`search.run_search` gave them): typed and checked (:func:`search.config.typed`),
    then resolved (a new search; one whose name is taken is refused unless not ``refuse_taken``)
    or read back from the search's ``search.json`` (``--resume``), in one line on the first problem."""
    given = config.typed(given)
    if not given.get("resume"):
        if "space" not in given:
            raise UsageError("--space is required (python -m search.spaces list)")
        cfg = resolve(SearchConfig(**given))
        if refuse_taken:
            refuse_existing(cfg)
        return cfg
    storage = given.get("storage", SearchConfig.storage)
    name = preflight.find_search(storage_path(storage), given.get("name"))
    integrity.verify(experiment_path(storage, name))  # before anything of it is read, Ray started or unpickled
    saved = json.loads(results.read_text(experiment_path(storage, name), SEARCH_FILE))
    # the folder it was found in, not the one it was saved in (a copied or moved results folder)
    cfg = relocate.rebased(config.from_saved(saved, f"--resume: {SEARCH_FILE} of {name}"), storage)
    if given.get("num_samples", cfg.num_samples) != cfg.num_samples:
        if given["num_samples"] < cfg.num_samples:
            raise UsageError(f"--num-samples {given['num_samples']}: a resumed search keeps its trials "
                             f"(it has {cfg.num_samples}); give more to extend it")
        if not orchestrate.has_study(cfg):
            raise UsageError("--num-samples: PBT's population is fixed when the search starts; it cannot be extended")
    for key, value in given.items():
        if key in RESUME_OVERRIDES:
            continue
        if getattr(cfg, key) != value:
            raise UsageError(f"{config.flag(key)}: cannot change on --resume (the search has {getattr(cfg, key)!r})")
    return replace(cfg, resume=True, name=name, **{k: v for k, v in given.items() if k in RESUME_OVERRIDES[3:]})


def refuse_existing(cfg: SearchConfig) -> None:
    """A new search may not take the name of one that exists."""
    if preflight_exists(cfg):
        raise UsageError(f"--name {cfg.name}: a search of that name exists in {cfg.storage_path}; "
                         "add --resume to continue it, or choose another --name")


def preflight_exists(cfg: SearchConfig) -> bool:
    from ray import tune

    return tune.Tuner.can_restore(cfg.experiment_path)


def tracking_uri(cfg: SearchConfig) -> str:
    from search.tracking import default_tracking_uri

    if cfg.tracking_uri:
        return cfg.tracking_uri
    if "://" in cfg.storage_path:
        raise UsageError(f"--storage {cfg.storage}: a remote results folder needs --tracking-uri (an MLflow server)")
    return default_tracking_uri(cfg.storage_path)


def ui_command(uri: str, storage: str) -> str:
    """How to look at the search in MLflow: the server's page, or ``fusetune ui`` (on 127.0.0.1,
    the store's URI passed in its environment, never on a command line)."""
    from search.tracking import default_tracking_uri

    uri = redact(uri)
    if uri.startswith(("http://", "https://", "databricks")):
        return f"open {uri} (the MLflow server's UI)"
    if uri == default_tracking_uri(storage_path(storage)):
        return f"fusetune ui --storage {storage}"
    return f"fusetune ui --tracking-uri {uri}"


# --------------------------------------------------------------------------------- the search
@dataclass
class SearchResult:
    """What a search hands back to Python callers (:func:`search.run_search`); the CLI prints it."""

    exit_code: int                 # 0 done, 1 no trial finished, 130 interrupted (resume it)
    name: str
    folder: str                    # the search folder: results.csv, confirmation.csv, reports/, models/
    best_config: dict[str, Any] | None = None   # the champion's full config (confirmed best)
    model_uri: str | None = None   # models:/<registered name>/<version> of the search's best model
    alias: str | None = None       # the alias that version got: champion or challenger

    @property
    def metrics(self) -> Any:
        """``results.csv`` as a pandas DataFrame (one row per trial and reference model)."""
        import pandas as pd

        return pd.read_csv(f"{self.folder}/{results.RESULTS_CSV}")

    @property
    def confirmation(self) -> Any:
        """``confirmation.csv`` as a DataFrame (None when the stage was off)."""
        import os

        import pandas as pd

        path = f"{self.folder}/{results.CONFIRMATION_CSV}"
        return pd.read_csv(path) if os.path.exists(path) else None


def run(argv: list[str] | None = None) -> int:
    given, print_config = cli.parse_command(argv)
    if print_config:  # the resolved options, as --config reads them; nothing is run
        print(cli.config_yaml(options(given, refuse_taken=False)), end="", flush=True)
        return 0
    return execute(given).exit_code


@private_outputs()  # set before Ray starts: its workers, checkpoints included, inherit it
def execute(given: dict[str, Any]) -> SearchResult:
    """A whole search from the given options (by :class:`SearchConfig` field name): the one code
    path of ``python -m search.run``, ``fusetune run`` and :func:`search.run_search`. One driver per
    search: a second one on the same search is refused (:func:`search.locks.driver_lock`)."""
    cfg = options(given)
    with locks.driver_lock(cfg.experiment_path, cfg.name):
        if not cfg.resume:
            refuse_existing(cfg)  # a driver of the same name that ended between our check and our lock
        return _execute(cfg)


def _execute(cfg: SearchConfig) -> SearchResult:
    space = cfg.space_spec
    uri = tracking_uri(cfg)
    supervisor.report(name=cfg.name, folder=cfg.experiment_path, storage=cfg.storage, tracking_uri=uri,
                      address=cfg.address)
    from search.dataset_input import DatasetInfo
    from search.tracking import MLflowTracking, check_tracking_uri

    timings = Steps(startup_s=since_start())
    # the driver's own torch work (model check, refit of the top-k) runs on a trial's share of the
    # cores: torch's default (every core) makes each small op wait for the slowest thread, which on
    # a busy machine made a refit 13x slower (benchmarks/RESULTS.md, throughput)
    import torch

    torch.set_num_threads(max(1, int(cfg.cpus_per_trial)))
    from search import optuna_storage

    copied_from = None
    if cfg.resume:  # a copied results folder: its MLflow store's artifact locations follow it
        saved_storage = storage_path(json.loads(results.read_text(cfg.experiment_path, SEARCH_FILE))["storage"])
        if relocate.rebase_mlflow_store(uri, saved_storage, cfg.storage_path) or saved_storage != cfg.storage_path:
            copied_from = relocate.rebase_uri(uri, cfg.storage_path, saved_storage)
    study_url = optuna_storage.storage_url(cfg) if orchestrate.has_study(cfg) else None
    # what the checks below create (folders, the study's database) is removed if one of them refuses;
    # a new MLflow store is created only after them (MLflow keeps a store open per URI in the process)
    new = preflight.NewPaths(cfg, uri, study_url)
    tracking_option = "--tracking-uri" if cfg.tracking_uri else f"--storage {cfg.storage} (its mlflow.db)"
    new_store = preflight.sqlite_path(uri) in new
    try:
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
        slots = preflight.check_resources(cfg)
        if cfg.max_concurrent is None:
            # as many as fit; Tune then also starts that many trial workers at once (with a searcher it
            # starts one at a time otherwise) and samples a trial only when it can run
            cfg = replace(cfg, max_concurrent=slots)
        with timings("checks_s"):
            preflight.smoke_check(cfg, space, data)
            if new_store:
                check_tracking_uri(uri)
    except BaseException:
        new.remove()
        raise

    exp_path = cfg.experiment_path
    total = orchestrate.num_trials(cfg, space)
    search_tags = {"fusetune.space": space.name, "fusetune.method": space.method, "fusetune.data": cfg.data_name,
                   "fusetune.data_spec": cfg.data, "fusetune.data_fingerprint": data.fingerprint,
                   "fusetune.code_version": code_version(), "fusetune.sampler": cfg.sampler,
                   "fusetune.scheduler": cfg.scheduler}
    if cfg.parent_run_id:
        from search.tracking import PARENT_RUN_TAG

        search_tags[PARENT_RUN_TAG] = cfg.parent_run_id
    tracking = MLflowTracking(uri, cfg.experiment, cfg.name, search_tags=search_tags, search_params=cfg.as_params(),
                             dataset=DatasetInfo.of(cfg, data), copied_from=copied_from)
    callbacks = [ProgressLine(total=total, epochs=cfg.epochs, metric=cfg.primary_metric, mode=cfg.primary_mode), tracking]
    results.write_text(json.dumps(cfg.as_saved(), indent=2, default=list), exp_path, SEARCH_FILE)
    # the only deleter of checkpoints: the disk does not grow with the trials, and none a resume needs goes
    callbacks.append(KeepOutOfFold())  # before the pruner: a trial's predictions outlive its checkpoint
    callbacks.append(PruneCheckpoints(cfg.primary_metric, cfg.primary_mode, keep=max(cfg.top_k, 1),
                                      ended=orchestrate.SCHEDULERS[cfg.scheduler].cadence.prune_ended))
    integrity.install()  # every snapshot Tune writes is sealed before it reaches the search folder
    if cfg.resume:
        integrity.verify(exp_path)
        tuner = orchestrate.restore_tuner(cfg, space, data, callbacks)
    else:
        tuner = orchestrate.build_tuner(cfg, space, data, callbacks, warm)
    integrity.seal(exp_path)  # tuner.pkl, written when the Tuner is built
    print(f"{'resuming' if cfg.resume else 'search'} {cfg.name}: space {space.name} ({space.method}) on {cfg.data} "
          f"[{len(data.data)} training samples, {'hold-out' if cfg.folds == 0 else f'{cfg.folds}-fold'}], "
          f"{total} trials x {cfg.epochs} epochs, sampler {cfg.sampler}, scheduler {cfg.scheduler}, "
          f"objective {', '.join(f'{m} ({d})' for m, d in zip(cfg.metric, cfg.mode))}", flush=True)
    if study_url:
        print(f"Optuna study {cfg.name}: optuna-dashboard {redact(study_url)}" + (
            f" (warm start: {len(warm)} finished trials of {cfg.warm_start})" if warm else ""), flush=True)
    elif orchestrate.has_study(cfg):
        print("Optuna study in memory (a remote --storage; give --optuna-storage URL to keep it)", flush=True)
    with timings("search_s"):
        grid = tuner.fit()
    pruner = next((c for c in callbacks if isinstance(c, PruneCheckpoints)), None)
    return finish(cfg, space, data, grid.experiment_path, grid.filesystem, uri, tracking.parent_run_id, timings,
                  search_tags, pruned_during=pruner.pruned if pruner else None)


def finish(cfg: SearchConfig, space: Any, data: Any, exp_path: str, fs: Any, uri: str, parent_run_id: str | None,
           timings: dict[str, float], search_tags: dict[str, str], pruned_during: Pruned | None = None) -> SearchResult:
    from search.champions import select

    sampled = space.names
    timings = timings if isinstance(timings, Steps) else Steps(timings)
    faults.point("results")
    with timings("results_s"):
        rows = results.collect(exp_path, fs)
        agree_with_tune(cfg, rows)  # a driver killed between Tune and Optuna
        pareto = results.pareto_front(rows, cfg.metric, cfg.mode) if cfg.multi_objective else None
        csv_path = results.write_text(results.csv_text(rows, sampled, pareto), exp_path, results.RESULTS_CSV, fs)
    ranked = results.ranked(rows, cfg.primary_metric, cfg.primary_mode)
    oof.recover(exp_path, ranked, fs)  # a driver killed between a trial's last checkpoint and its copy
    unfinished = [r for r in rows if r.status not in ("TERMINATED", "ERROR")]
    if unfinished:  # Ctrl-C: Tune saved its state and returned early
        print(f"\nstopped with {len(unfinished)} trial(s) unfinished; results so far: {csv_path}\n"
              f"continue with: {PROG} --resume --storage {cfg.storage} --name {cfg.name}")
        return SearchResult(130, cfg.name, exp_path)
    shown = ranked[: max(cfg.top_k, TABLE_ROWS)]
    with timings("prune_s"):  # an ended search: only the top trials' checkpoints are still read (export)
        pruned = prune_checkpoints(rows, {r.trial_id for r in ranked[: max(cfg.top_k, 1)]}, fs)
        if pruned_during is not None:
            pruned = Pruned(pruned.folders + pruned_during.folders, pruned.bytes + pruned_during.bytes)
    if cfg.confirm_repeats and ranked:
        print(f"confirming the top {min(max(cfg.top_k, 1), len(ranked))}, the paper default"
              f"{' and ' + ', '.join(cfg.references) if cfg.references else ''} on {cfg.confirm_repeats} fresh "
              f"repetition(s) of the folds" + (f", and an ensemble of at most {cfg.ensemble_size} ({cfg.ensemble})"
                                               if cfg.ensemble != "off" else "") + " ...", flush=True)
    with timings("models_s"):  # confirmation, references, refit, test evaluation, registration, promotion
        chosen = select(cfg, space, rows, ranked, data, exp_path=exp_path, fs=fs, uri=uri, parent_run_id=parent_run_id,
                        data_name=cfg.data_name, fixed=orchestrate.fixed_keys(cfg, space), search_tags=search_tags)
    if chosen.reference_rows:
        csv_path = results.write_text(results.csv_text(rows, sampled, pareto, chosen.reference_rows), exp_path,
                                      results.RESULTS_CSV, fs)
    versions, registered = chosen.versions, chosen.registered
    from search.confirm import summary
    from search.confirm import table as confirmation_table
    from search.reports import write_search_reports

    faults.point("reports")
    with timings("reports_s"):
        reports = write_search_reports(exp_path, metric=cfg.primary_metric, mode=cfg.primary_mode,
                                       tracking_uri=uri, parent_run_id=parent_run_id, seed=cfg.seed)
    failed = sum(r.status == "ERROR" for r in rows)
    print()
    print(f"{len(rows)} trials ({len(ranked)} finished all {cfg.epochs} epochs, "
          f"{len(rows) - len(ranked) - failed} stopped early, {failed} failed) in {format_duration(timings['search_s'])}"
          f" (Ray start {timings['ray_init_s']:.1f}s, data {timings['data_s']:.1f}s)")
    if pruned.folders:
        print(f"{pruned.folders} checkpoint(s) of trials outside the top {max(cfg.top_k, 1)} deleted "
              f"({pruned.bytes / 2**20:.1f} MiB)")
    print(f"top {len(shown)} by {cfg.primary_metric} " + ("(mean ± std over folds):" if cfg.folds else "(hold-out split):"))
    print(results.table(shown, cfg.primary_metric, sampled, cfg.metric[1:], spread=cfg.folds != 0))
    if pareto is not None:
        print(f"pareto-optimal trials on {', '.join(cfg.metric)}: {', '.join(sorted(pareto)) or '-'}")
    if chosen.confirmation is not None:
        print(f"\nconfirmation on fresh folds ({cfg.primary_metric}, mean ± std over the "
              f"{cfg.confirm_repeats} x {max(cfg.folds, 1)} fresh fold scores):")
        print(confirmation_table(chosen.confirmation))
        print(summary(chosen.confirmation))
        if cfg.multi_objective and cfg.ensemble != "off":
            print(f"(a multi-objective search: the ensemble is selected and confirmed on the first objective, "
                  f"{cfg.primary_metric}, alone)")
    elif chosen.reference_rows and ranked:
        m, best = cfg.primary_metric, ranked[0].value(cfg.primary_metric)
        objective = Objective(m, cfg.primary_mode)
        ref = max(chosen.reference_rows, key=lambda r: objective.key(r[m]))
        beaten = objective.better(best, ref[m])
        print("references on the search's folds: " + ", ".join(f"{r['trial_id']} {r[m]:.4f}" for r in chosen.reference_rows)
              + f"; the best trial ({best:.4f}) {'beats' if beaten else 'does not beat'} {ref['trial_id']} "
              "(not confirmed on fresh folds: --confirm-repeats 0)")
    if versions:
        print(f"registered model {registered}: versions {', '.join(map(str, versions))}; "
              f"v{versions[0]} -> alias {chosen.decision.alias} ({chosen.decision.reason})")
    print(f"results: {csv_path}")
    print(f"reports: {reports.location}" + (f" (skipped: {', '.join(reports.skipped)})" if reports.skipped else ""))
    print(f"MLflow: {ui_command(uri, cfg.storage)}")
    timings["total_s"] = since_start()
    print(f"steps: {timings.line(STEP_ORDER)}", flush=True)
    conf = chosen.confirmation
    best = conf.champion.config if conf is not None and conf.champion is not None else (ranked[0].config if ranked else None)
    return SearchResult(0 if ranked else 1, cfg.name, exp_path, best,
                        f"models:/{registered}/{versions[0]}" if versions else None,
                        chosen.decision.alias if chosen.decision else None)


def quiet_libraries() -> None:
    """Only warnings from MLflow's store set-up and Optuna; their INFO lines drown the progress."""
    import logging
    import os
    import warnings

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow  # noqa: F401  (configures its logger on import; lower it afterwards)
    import optuna

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # Tune logs every failed trial's whole traceback; ProgressLine prints its one-line reason and
    # the traceback stays in the trial's error.txt
    logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
    logging.getLogger("ray.tune.tune").setLevel(logging.CRITICAL)
    # a resumed search's trials killed before their first result have none to fetch: expected, not news
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # a trial resumed from a checkpoint re-reports the epochs after it; Optuna keeps the first value
    # (its message names the step: "... because this `step=13` is already reported.")
    warnings.filterwarnings("ignore", message="The reported value is ignored because this `step")


def main(argv: list[str] | None = None) -> int:
    """The command line in this process (``python -m search.run`` and ``fusetune run`` run it in a
    child process they watch: :mod:`search.supervisor`)."""
    quiet_libraries()
    try:
        return run(argv)
    except (UsageError, DataError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; continue with --resume (same --storage and --name)", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - only the stops of supervisor.cause; anything else is raised
        if supervisor.cause(exc) is None:
            raise
        return supervisor.stopped(exc)


if __name__ == "__main__":
    sys.exit(supervisor.supervised(main))
