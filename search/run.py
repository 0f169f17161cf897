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
from typing import Any, TextIO

from search.prepare import cli, config, parse, preflight
from search.prepare.config import SearchConfig, experiment_path, storage_path
from search.prepare.errors import UsageError
from search.prepare.resolve import resolve
from search.report.render import render
from search.select import results
from search.select.results import SEARCH_FILE
from search.stages import collect, prepare, select_and_hand_off, tune_trials
from search.trust import files, integrity, locks, relocate
from search.trust.credentials import private_outputs
from search.tune import faults, schedulers, supervisor
from trainables.data import DataError

PROG = "python -m search.run"
RESUME_OVERRIDES = ("storage", "name", "resume", "address", "tracking_uri", "top_k", "num_samples")
"""Options a resumed search may change; the others are the saved search's. A larger
``--num-samples`` extends the search (a finished one too) by the extra trials."""


# --------------------------------------------------------------------------------- options
def options(given: dict[str, Any], *, refuse_taken: bool = True) -> SearchConfig:
    """The search's options from the ones given (by field name, as the command line, a ``--config``
    file or :func:`search.run_search` gave them): typed and checked (:func:`search.prepare.parse.typed`),
    then resolved (a new search; one whose name is taken is refused unless not ``refuse_taken``)
    or read back from the search's ``search.json`` (``--resume``), in one line on the first problem."""
    given = parse.typed(given)
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
    saved = json.loads(files.read_text(experiment_path(storage, name), SEARCH_FILE))
    # the folder it was found in, not the one it was saved in (a copied or moved results folder)
    cfg = relocate.rebased(parse.from_saved(saved, f"--resume: {SEARCH_FILE} of {name}"), storage)
    if given.get("num_samples", cfg.num_samples) != cfg.num_samples:
        if given["num_samples"] < cfg.num_samples:
            raise UsageError(f"--num-samples {given['num_samples']}: a resumed search keeps its trials "
                             f"(it has {cfg.num_samples}); give more to extend it")
        if not schedulers.has_study(cfg):
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
    return execute(given, out=sys.stdout).exit_code


@private_outputs()  # set before Ray starts: its workers, checkpoints included, inherit it
def execute(given: dict[str, Any], out: TextIO | None = None) -> SearchResult:
    """A whole search from the given options (by :class:`SearchConfig` field name): the one code
    path of ``python -m search.run``, ``fusetune run`` and :func:`search.run_search`. One driver per
    search: a second one on the same search is refused (:func:`search.trust.locks.driver_lock`).
    ``out``: where the progress and the summary go (the command line's stdout); None prints nothing."""
    cfg = options(given)
    with locks.driver_lock(cfg.experiment_path, cfg.name):
        if not cfg.resume:
            refuse_existing(cfg)  # a driver of the same name that ended between our check and our lock
        return _execute(cfg, out)


def _execute(cfg: SearchConfig, out: TextIO | None) -> SearchResult:
    """The stages of a search, each taking the previous one's outcome: prepare (checks, data,
    cluster, tracking) -> tune (Ray Tune's trials) -> collect (results.csv, the Optuna study in
    agreement) -> select and hand off (confirmation, references, ensemble, refit, registration,
    promotion: :func:`search.select.champions.select`) -> report; :func:`render` writes the outcome to ``out``."""
    prepared = prepare(cfg, out)
    cfg = prepared.cfg
    tuned = tune_trials(cfg, prepared)
    collected = collect(cfg, prepared, tuned)
    if collected.unfinished:  # Ctrl-C: Tune saved its state and returned early
        prepared.say(f"\nstopped with {len(collected.unfinished)} trial(s) unfinished; results so far: "
                     f"{collected.csv_path}\ncontinue with: {PROG} --resume --storage {cfg.storage} --name {cfg.name}")
        return SearchResult(130, cfg.name, tuned.exp_path)
    chosen = select_and_hand_off(cfg, prepared, tuned, collected)
    faults.point("reports")
    with prepared.timings("reports_s"):
        from search.report.reports import write_search_reports

        reports = write_search_reports(tuned.exp_path, metric=cfg.primary_metric, mode=cfg.primary_mode,
                                       tracking_uri=prepared.uri, parent_run_id=tuned.parent_run_id, seed=cfg.seed)
    prepared.say(render(cfg, prepared, collected, chosen, reports))
    conf, ranked, versions = chosen.confirmation, collected.ranked, chosen.versions
    best = conf.champion.config if conf is not None and conf.champion is not None else (ranked[0].config if ranked else None)
    return SearchResult(0 if ranked else 1, cfg.name, tuned.exp_path, best,
                        f"models:/{chosen.registered}/{versions[0]}" if versions else None,
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
    child process they watch: :mod:`search.tune.supervisor`)."""
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
