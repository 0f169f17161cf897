"""The search's Optuna study, kept in an RDB storage: where it lives, the searcher that writes
Ray's trials into it, and the warm start from an earlier search.

Where (:func:`storage_url`): ``--optuna-storage URL`` (a SQLAlchemy URL of a shared database,
e.g. ``postgresql://user@host/optuna``), else ``sqlite:///<storage>/<name>/optuna.db`` in the
search folder; a remote results folder (``s3://``, ...) without ``--optuna-storage`` keeps the
study in memory, as Ray's ``OptunaSearch`` does by default. The study is named after the search
(``--name``), so ``optuna.load_study(study_name=NAME, storage=URL)`` and ``optuna-dashboard URL``
open it. Its user attributes (:data:`STUDY_ATTRS`) say what it searched: space, data fingerprint,
objective.

How trials are recorded (:class:`PersistentOptunaSearch`, Ray's ``OptunaSearch`` underneath):
a trial that finished all its epochs is ``COMPLETE`` with its final value (mean over folds); one
a scheduler stopped early (its last result lacks ``final``) is ``PRUNED`` with its per-epoch
values as intermediate values; one that raised is ``FAIL``. Each Optuna trial carries its Ray
trial id (user attribute ``ray_trial_id``). The searcher's Ray checkpoint holds the sampler's random
state and the Ray -> Optuna trial map, not the study: on ``--resume`` the study is opened again from its
storage, and Optuna trials left RUNNING by a killed driver that no Ray trial continues end as
``FAIL``.

Warm start (:func:`warm_start_trials`): the ``COMPLETE`` trials of an earlier search's study, on
the same space, data (fingerprint) and objective, are added to the new study as finished trials
(``Study.add_trial``), so the sampler learns from them before its first suggestion; they are not
Ray trials and are not rerun.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.compat import (
    OptunaSearchSeam,
    report_intermediate_values,
    sampler_random_states,
    set_sampler_random_states,
    set_trial_user_attr,
    storage_trial_id,
    trial_of,
)
from search.prepare import registry_names
from search.prepare.config import SearchConfig
from search.prepare.errors import UsageError

logger = logging.getLogger("fusetune.optuna")

STUDY_FILE = "optuna.db"
RAY_TRIAL_ATTR = "ray_trial_id"
RETRY_ATTR = "fusetune.retry_of"
"""User attribute of the Optuna trial that continues a failed one its Ray trial re-runs: that one's number."""
WARM_START_ATTR = "fusetune.warm_start_from"
STUDY_ATTRS = ("fusetune.space", "fusetune.data_fingerprint", "fusetune.metric", "fusetune.mode")
"""Study user attributes a warm start compares (besides ``fusetune.data``, ``fusetune.sampler``)."""


# ----------------------------------------------------------------------------- where
def default_url(experiment_path: str) -> str | None:
    """``sqlite:///<search folder>/optuna.db``; None for a remote results folder."""
    if "://" in experiment_path:
        return None
    return f"sqlite:///{(Path(experiment_path) / STUDY_FILE).as_posix()}"


def storage_url(cfg: SearchConfig, name: str | None = None) -> str | None:
    """The storage of the study of search ``name`` (default: ``cfg.name``)."""
    if cfg.optuna_storage:
        return cfg.optuna_storage
    from search.prepare.config import experiment_path

    return default_url(experiment_path(cfg.storage, name or cfg.name or ""))


def check_url(url: str) -> None:
    """One-line :class:`UsageError` unless ``url`` is an RDB URL Optuna can use without a
    password in it (passwords come from the database client's environment, e.g. ``PGPASSWORD``)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    where = f"--optuna-storage {url}"
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UsageError(f"{where}: not a database URL; expected e.g. sqlite:///PATH/optuna.db or "
                         "postgresql://USER@HOST/DB") from None
    if parsed.password:
        raise UsageError(f"--optuna-storage {parsed.render_as_string(hide_password=True)}: leave the password out "
                         "of the URL (it would be saved with the search); give it in the database client's "
                         "environment, e.g. PGPASSWORD or ~/.pgpass for PostgreSQL")
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise UsageError(f"{where}: expected sqlite:///PATH/TO/optuna.db (a file, not in memory)")


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The RDB storage at ``url`` (schema created if new); one-line :class:`UsageError` if unusable."""
    check_url(url)
    try:
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(url)
    except Exception as exc:  # noqa: BLE001 - any failure means the storage is unusable
        text = " ".join(str(exc).split())[:240]
        raise UsageError(f"--optuna-storage {url}: unusable Optuna storage ({type(exc).__name__}: {text})") from None


def check_new_study(url: str, name: str) -> None:
    """A new search must not write into an existing study of the same name (a shared database)."""
    storage = open_storage(url)
    if any(s.study_name == name for s in storage.get_all_studies()):
        raise UsageError(f"--name {name}: the Optuna storage {url} already has a study of that name; "
                         "choose another --name (or --resume the search)")


def study_attrs(cfg: SearchConfig, fingerprint: str) -> dict[str, str]:
    return {"fusetune.space": cfg.space, "fusetune.data_fingerprint": fingerprint,
            "fusetune.metric": ",".join(cfg.metric), "fusetune.mode": ",".join(cfg.mode),
            "fusetune.data": str(cfg.data), "fusetune.sampler": cfg.sampler}


# ----------------------------------------------------------------------------- warm start
def warm_start_trials(cfg: SearchConfig, fingerprint: str) -> list[FrozenTrial]:
    """The finished trials of the search ``cfg.warm_start`` as new trials of this one; a one-line
    :class:`UsageError` when its study is missing or searched another space, data or objective."""
    source = cfg.warm_start
    if not source:
        return []
    where = f"--warm-start {source}"
    if registry_names.SCHEDULERS[cfg.scheduler].population or not registry_names.SAMPLERS[cfg.sampler].learns:
        raise UsageError(f"{where}: needs a sampler that learns from finished trials (not --sampler "
                         f"{' nor '.join(n for n, s in registry_names.SAMPLERS.items() if not s.learns)} nor "
                         f"--scheduler {' nor '.join(registry_names.with_trait(registry_names.SCHEDULERS, 'population'))})")
    url = storage_url(cfg, source)
    if url is None:
        raise UsageError(f"{where}: the results folder {cfg.storage} is remote; give the --optuna-storage "
                         "that holds its study")
    if url.startswith("sqlite:///") and not cfg.optuna_storage and not Path(url[len("sqlite:///"):]).is_file():
        raise UsageError(f"{where}: no Optuna study file {url[len('sqlite:///'):]} (see --storage)")
    try:
        study = optuna.load_study(study_name=source, storage=open_storage(url))
    except KeyError:
        raise UsageError(f"{where}: no Optuna study {source!r} in {url}") from None
    attrs = study.user_attrs
    want = study_attrs(cfg, fingerprint)
    labels = {"fusetune.space": "space", "fusetune.data_fingerprint": "data fingerprint",
              "fusetune.metric": "metric", "fusetune.mode": "mode"}
    for key in STUDY_ATTRS:
        if attrs.get(key) != want[key]:
            raise UsageError(f"{where}: searched another {labels[key]} ({attrs.get(key)!r}, this search "
                             f"{want[key]!r}); a warm start needs the same space, data and objective")
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        raise UsageError(f"{where}: its study has no finished trial to start from")
    return [optuna.trial.create_trial(
        state=TrialState.COMPLETE, values=t.values, params=t.params, distributions=t.distributions,
        intermediate_values=t.intermediate_values,
        user_attrs={**t.user_attrs, WARM_START_ATTR: f"{source}#{t.number}"}) for t in done]


# ----------------------------------------------------------------------------- the searcher
class PersistentOptunaSearch(OptunaSearchSeam):
    """Ray's ``OptunaSearch`` on a persistent study (see the module docstring).

    Args:
        storage_url: the study's RDB URL; None keeps it in memory.
        attrs: the study's user attributes (:func:`study_attrs`).
        warm: finished trials added to a new study before its first suggestion.
        The rest: as ``OptunaSearch``.
    """

    def __init__(self, *args: Any, storage_url: str | None, attrs: dict[str, str] | None = None,
                 warm: Sequence[FrozenTrial] = (), **kwargs: Any) -> None:
        self.storage_url = storage_url
        self._attrs = dict(attrs or {})
        self._warm = list(warm)
        super().__init__(*args, storage=open_storage(storage_url) if storage_url else None, **kwargs)

    def setup_study(self, mode: str | list) -> None:
        # the points to evaluate first are enqueued one at a time, when their trial is asked for:
        # Optuna's ask scans every waiting trial, and a database holding a 729-point grid as waiting
        # trials made each ask take a second (and enqueueing them all, most of a minute)
        points = self.take_points_to_evaluate()
        super().setup_study(mode)
        self._queued = [dict(p) for p in points]
        self._skip_seen = bool(self._warm)  # a point the warm start already evaluated is not run again
        for key, value in self._attrs.items():
            self.ot_study.set_user_attr(key, value)
        for trial in self._warm:  # first, so the search's own trials follow them
            self.ot_study.add_trial(trial)
        self._warm = []

    @property
    def study(self) -> optuna.Study:
        return self.ot_study

    def suggest(self, trial_id: str) -> dict | None:
        self._live()
        new = trial_id not in self.ot_trials
        if new and self._queued:
            self.ot_study.enqueue_trial(self._queued.pop(0), skip_if_exists=self._skip_seen)
        params = super().suggest(trial_id)
        if new and trial_id in self.ot_trials:
            self.ot_trials[trial_id].set_user_attr(RAY_TRIAL_ATTR, trial_id)
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Intermediate values by epoch (Ray's own class steps by report count), the epochs a sparse
        report carries in its ``curve`` included."""
        self._live()
        ot_trial = self._reporting_into(trial_id)
        if ot_trial is None:
            return None
        if not isinstance(self.metric, str) or trial_id in self.completed_trials or trial_id not in self.ot_trials:
            return super().on_trial_result(trial_id, result)
        points = [(point.get("epoch", result.get("training_iteration")), point.get(self.metric))
                  for point in [*result.get("curve", ()), result]]
        report_intermediate_values(ot_trial, [(int(epoch), float(value)) for epoch, value in points
                                              if isinstance(value, (int, float)) and epoch is not None])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._live()
        if self._reporting_into(trial_id) is None:
            return  # its Optuna trial was told before a driver restart; that verdict stands
        if (result and isinstance(self.metric, str) and self.metric in result and trial_id in self.ot_trials
                and trial_id not in self.completed_trials):
            # Tune hands the last result to on_trial_complete only: it is an intermediate value too
            # (a trial settled on resume may have been told before the driver died)
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                self.on_trial_result(trial_id, result)
        if result and not error and not result.get("final") and trial_id not in self.completed_trials:
            # a scheduler ended it before its last epoch: what it reported are intermediate values
            try:
                self.ot_study.tell(self.ot_trials[trial_id], state=TrialState.PRUNED)
            except Exception as exc:  # noqa: BLE001 - e.g. already told before a driver restart
                logger.warning("Optuna trial of %s not marked pruned: %s", trial_id, exc)
            self.completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)

    # ---- one source of truth: an Optuna trial is never reported into after it was told
    def _reporting_into(self, trial_id: str) -> Any:
        """The Optuna trial that ``trial_id``'s results go to, checked once per session against the
        study's storage; None when there is none to report into.

        A Ray trial running again whose Optuna trial was told FAIL (a node lost with it, or an
        error Tune now retries) gets a fresh Optuna trial with the same parameters (Optuna's public
        ``enqueue_trial`` + ``ask``; user attribute ``fusetune.retry_of`` = the failed trial's
        number), so its new results are recorded and the failed one stays as it was told. One told
        COMPLETE or PRUNED before a driver restart keeps that verdict (None: nothing more is reported)."""
        ot_trial = self.ot_trials.get(trial_id)
        if ot_trial is None or self.storage_url is None or trial_id in self._checked:
            return ot_trial
        frozen = self.ot_study.get_trials(deepcopy=False)[ot_trial.number]
        self._checked.add(trial_id)
        if frozen.state == TrialState.RUNNING:
            return ot_trial
        if frozen.state != TrialState.FAIL:
            self.completed_trials.add(trial_id)
            return None
        self.ot_study.enqueue_trial(frozen.params, user_attrs={RAY_TRIAL_ATTR: trial_id, RETRY_ATTR: frozen.number})
        fresh = self.ot_study.ask(fixed_distributions=frozen.distributions)
        self.ot_trials[trial_id] = fresh
        self.completed_trials.discard(trial_id)
        logger.info("Ray trial %s runs again: Optuna trial %d (failed) continues as trial %d", trial_id,
                    frozen.number, fresh.number)
        return fresh

    @property
    def _checked(self) -> set[str]:
        """Ray trials whose Optuna trial was checked against the storage in this session (not pickled)."""
        if "_checked_ids" not in self.__dict__:
            self.__dict__["_checked_ids"] = set()
        return self.__dict__["_checked_ids"]

    def _live(self) -> None:
        """Open the study again when this searcher came back from ``tuner.pkl`` alone, without
        :meth:`restore` (a driver killed between writing ``tuner.pkl`` and Tune's first snapshot)."""
        if self.ot_study is None and self.storage_url is not None:
            self._open({rid: int(tid) for rid, tid in self.__dict__.get("_ot_trial_ids", {}).items()})

    def _open(self, ids: dict[str, int]) -> None:
        """The study from its storage (this session's URL: the results folder may have moved), the
        Ray trials mapped onto their Optuna trials, the ones nobody continues failed."""
        self.ot_storage = open_storage(self.storage_url)
        self.ot_study = optuna.load_study(study_name=self.study_name, storage=self.ot_storage,
                                          sampler=self.ot_sampler, pruner=optuna.pruners.NopPruner())
        self.ot_trials = {rid: trial_of(self.ot_study, tid) for rid, tid in ids.items()}
        self.__dict__["_checked_ids"] = set()
        self._fail_lost(set(ids.values()))

    # ---- pickled by Ray into tuner.pkl with the TuneConfig: the sampler and the trial map; the study
    # stays in its storage and is opened again by restore()
    def __getstate__(self) -> dict[str, Any]:
        if self.storage_url is None:
            return self.__dict__.copy()
        state = self.detached_state()
        state.pop("_checked_ids", None)  # checked in this session only
        state["_ot_trial_ids"] = {rid: storage_trial_id(t) for rid, t in self.ot_trials.items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "_ot_trial_ids" in state:
            self.clear_live_state()

    def save(self, checkpoint_path: str) -> None:
        """A persistent study's searcher state as JSON (the trial map and the queue; the trials
        themselves are in the storage); an in-memory study is Ray's own checkpoint."""
        if self.storage_url is None:
            return super().save(checkpoint_path)
        state = {"format": "fusetune-optuna-search/1", "study_name": self.study_name,
                 "ot_trial_ids": {rid: storage_trial_id(t) for rid, t in self.ot_trials.items()},
                 "completed": sorted(self.completed_trials), "queued": self._queued, "skip_seen": self._skip_seen,
                 "sampler_random_states": sampler_random_states(self.ot_sampler)}
        with open(checkpoint_path, "w") as f:
            json.dump(state, f, default=str)

    def restore(self, checkpoint_path: str) -> None:
        if self.storage_url is None:
            return super().restore(checkpoint_path)
        with open(checkpoint_path) as f:
            state = json.load(f)
        self.study_name = state["study_name"]
        self.completed_trials = set(state["completed"])
        self._queued, self._skip_seen, self._warm = list(state["queued"]), bool(state["skip_seen"]), []
        # the sampler is the one Tune pickled when the search started: its random state comes back as
        # it was at the snapshot, so the resumed search draws what the uninterrupted one drew (an
        # older snapshot without it: a fresh seed, so the start-up points already tried are not redrawn)
        if "sampler_random_states" in state:
            set_sampler_random_states(self.ot_sampler, state["sampler_random_states"])
        else:
            self.ot_sampler.reseed_rng()
        self._open({rid: int(tid) for rid, tid in state["ot_trial_ids"].items()})

    def _fail_lost(self, known: set[int]) -> None:
        """Optuna trials a killed driver asked for after Ray's last snapshot: no Ray trial continues
        them (the resumed search samples others), so they end as FAIL rather than stay RUNNING."""
        for t in self.ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if storage_trial_id(t) not in known:
                set_trial_user_attr(self.ot_study, storage_trial_id(t), "fusetune.lost",
                                    "started by a driver killed before Ray saved it; not resumed")
                self.ot_study.tell(t.number, state=TrialState.FAIL)
