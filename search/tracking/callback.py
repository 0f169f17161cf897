"""Mirror a Ray Tune search into MLflow: one parent run per search, one nested child run per trial.

:class:`MLflowTracking` is a :class:`ray.tune.Callback`. The Tune loop never talks to MLflow
itself: every hook turns what it sees into a small JSON-ready *record* and appends it to a bounded
queue; a background sender thread replays the records in order through an explicit
:class:`mlflow.MlflowClient` (run ids, never the fluent active run). When the tracking server is
unreachable the sender keeps the records and retries with exponential back-off, so the search never
waits on MLflow nor dies because of it; the records appear once the server is back, and the
experiment end waits (``flush_timeout``) for the queue to drain.

Nothing recorded is lost on a driver restart either: the unsent records, the trial -> run map and
the set of finished trials are the callback's Tune state (``get_state``/``set_state``), saved with
every experiment checkpoint and given back on ``--resume``. Runs are found again by tag, never
duplicated: the parent by ``fusetune.search_name`` (+ ``fusetune.role = search``), a child by
``fusetune.trial_id``; a child already FINISHED is not logged again, and the epochs a resumed child
already holds are not logged twice. A trial reports only some epochs to Tune; the others come in
the next result's ``curve`` and are logged in one batch with it, so every run has every epoch.

The parent run also gets the dataset as an MLflow dataset input (:mod:`search.prepare.dataset_input`)
and, when the search ends, summary metrics (:func:`summary_metrics`): ``best_<metric>`` over the
trials that finished all their epochs, ``trials_completed``/``_pruned``/``_failed`` and
``wall_time_s`` (the driver's time over all sessions of the search).

The queue and its sender thread (with the back-off) are :mod:`search.tracking.queue`; what a
record does to the runs is :mod:`search.tracking.writer`; this module is the Tune callback, which
makes the records and keeps the state. Also here: :func:`check_tracking_uri` (fail fast, one line,
before any trial starts) and :func:`default_tracking_uri` (a SQLite store in the results folder).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from search.prepare.errors import UsageError
from search.prepare.objective import Objective
from search.tracking.queue import Sender, fast_http
from search.tracking.queue import one_line as _one_line
from search.trust.credentials import refuse_credentials

logger = logging.getLogger("fusetune.tracking")

SEARCH_NAME_TAG = "fusetune.search_name"
TRIAL_ID_TAG = "fusetune.trial_id"
ROLE_TAG = "fusetune.role"          # "search" (parent) or "trial" (child)
SUPERSEDED_ROLE = "superseded"      # the role of a lost trial's run once a new trial took its place
SUPERSEDED_TAG = "fusetune.superseded_by"
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag (the UI groups children under it)
ERROR_TAG = "error"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
"""MLflow 3's experiment kind for model training (its UI's ``ExperimentKind.CUSTOM_MODEL_DEVELOPMENT``):
the UI opens such an experiment on its runs, not on the GenAI overview (traces, judges). Set on an
experiment this module creates, and on an existing one that has no kind yet."""
STEP_METRIC = "epoch"               # logged with every result; the resume guard reads its history
CURVE_KEY = "curve"
"""A result's list of the epochs the trial did not report on their own (``trainables.trainable``);
each is logged with its own step, in the same batch as the result."""

RESULT_TAG_KEYS = ("data_fingerprint", "code_version")
"""Metadata the trainable puts in every result; logged once per child run as tags."""

RAY_BOOKKEEPING = frozenset({
    "done", "training_iteration", "timesteps_total", "episodes_total", "timestamp", "time_this_iter_s",
    "time_since_restore", "timesteps_since_restore", "iterations_since_restore", "pid", "hostname",
    "node_ip", "date", "trial_id", "experiment_id", "experiment_tag", "should_checkpoint",
    "checkpoint_dir_name", "config", "warmup_time",
})
"""Keys Ray Tune adds to every result; ``time_total_s`` is kept (the trial's wall time so far)."""

# MLflow's limits (mlflow.utils.validation): per log_batch call and per value
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAM_VALUE = 6000
_MAX_TAG_VALUE = 8000

_PERMANENT_ERRORS = frozenset({"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "RESOURCE_ALREADY_EXISTS", "INVALID_STATE",
                               "RESOURCE_DOES_NOT_EXIST"})
"""MLflow error codes that retrying cannot fix: the record is dropped with a warning. Everything
else (connection refused, time-outs, 5xx, a locked SQLite file) is treated as an outage."""


# ----------------------------------------------------------------------------- URIs
def default_tracking_uri(storage_dir: str | Path) -> str:
    """The default store: ``sqlite:///<storage>/mlflow.db`` (absolute path)."""
    return f"sqlite:///{(Path(storage_dir).expanduser().resolve() / 'mlflow.db').as_posix()}"


def default_artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts (models): next to a SQLite store,
    ``<store folder>/mlartifacts/<experiment>``, not MLflow's default ``./mlruns`` of whatever the
    current folder is; ``None`` (the server's choice) for a tracking server."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    folder = Path(tracking_uri[len("sqlite:///"):]).expanduser().resolve().parent
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment) or "experiment"
    return (folder / "mlartifacts" / safe).as_uri()


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`UsageError` (one line) unless ``uri`` is a usable MLflow tracking store.

    Accepted: ``sqlite:///PATH`` (its folder is created), ``http(s)://HOST:PORT`` of an MLflow
    server (probed with one request, ``timeout`` seconds, no retries; credentials come from MLflow's
    own variables ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``/``_TOKEN``), and the database URIs
    MLflow supports (``postgresql://``, ``mysql://``, ...). Plain folders/``file:`` stores are refused:
    MLflow 3 deprecates them and they have no Model Registry.
    """
    refuse_credentials("--tracking-uri", uri)
    where = f"--tracking-uri {uri}"
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
        raise UsageError(f"{where}: plain folder stores are not supported (no Model Registry); "
                         "use sqlite:///PATH/mlflow.db or http(s)://HOST:PORT of an MLflow server")
    if scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if not path or path == ":memory:" or not uri.startswith("sqlite:///"):
            raise UsageError(f"{where}: expected sqlite:///PATH/TO/mlflow.db (a file, not in memory)")
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"{where}: cannot create the folder {Path(path).parent} ({e.strerror or e})") from None
    from search.trust.locks import store_creation_lock

    try:
        with fast_http(timeout), store_creation_lock(uri):  # a new SQLite store is created by one process at a time
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - any failure here means the store is unusable
        raise UsageError(f"{where}: {_describe_failure(e, scheme)}") from None


def _describe_failure(e: Exception, scheme: str) -> str:
    text = _one_line(str(e), 240)
    code = getattr(e, "error_code", "")
    if code in ("UNAUTHENTICATED", "PERMISSION_DENIED", "CUSTOMER_UNAUTHORIZED") or " 401" in text or " 403" in text:
        return ("authentication failed; set MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD "
                "or MLFLOW_TRACKING_TOKEN in the environment")
    if scheme in ("http", "https"):
        return f"MLflow tracking server unreachable or not an MLflow server ({text})"
    return f"unusable tracking store ({text})"


def _param_value(v: Any) -> str:
    s = json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list, tuple)) else str(v)
    return s if len(s) <= _MAX_PARAM_VALUE else s[: _MAX_PARAM_VALUE - 3] + "..."


def _quote(value: str) -> str:
    """A filter-string literal (MLflow accepts single or double quotes)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"cannot use {value!r} in an MLflow filter (contains both quote kinds)")


def end_search_run(uri: str, name: str, status: str) -> int:
    """End the MLflow run of the search ``name`` with ``status`` (``FAILED``, ``KILLED``) if it is
    still RUNNING (a driver that died without ending it; ``--resume`` runs it again). Returns how
    many runs it ended."""
    ended = 0
    with fast_http(10):
        client = MlflowClient(tracking_uri=uri)
        ids = [e.experiment_id for e in client.search_experiments()]
        found = client.search_runs(ids, filter_string=f"tags.`{SEARCH_NAME_TAG}` = {_quote(name)} and "
                                                      f"tags.`{ROLE_TAG}` = 'search'", max_results=10) if ids else []
        for run in found:
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, status)
                ended += 1
    return ended


def result_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of a Tune result worth tracking (nested dicts flattened with ``/``)."""
    out: dict[str, float] = {}

    def walk(prefix: str, d: Mapping[str, Any]) -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            if not prefix and k in RAY_BOOKKEEPING:
                continue
            if isinstance(v, Mapping):
                walk(f"{key}/", v)
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                out[key] = float(v)

    walk("", result)
    return out


def result_step(result: Mapping[str, Any]) -> int:
    """The epoch of a result (the trainable's ``epoch``, else Tune's ``training_iteration``)."""
    return int(result.get("epoch", result.get("training_iteration", 0)))


def trial_error_reason(trial: Any) -> str:
    """One line saying why a trial failed: the original exception (not Ray's wrapper and traceback)."""
    err: BaseException | None = None
    with contextlib.suppress(Exception):
        err = trial.get_pickled_error()
    if err is not None:
        cause = getattr(err, "cause", None) or err
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        return _one_line(f"{type(cause).__name__}: {first}" if first else type(cause).__name__, 1000)
    text = ""
    with contextlib.suppress(Exception):
        text = Path(trial.error_file).read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):  # the last "SomeError: message" line of the traceback
        head, sep, message = ln.partition(":")
        name = head.rsplit(".", 1)[-1]  # "trainables.trainable.TrialFailure" -> "TrialFailure"
        if sep and name and name[0].isupper() and head.replace(".", "").replace("_", "").isalnum():
            return _one_line(f"{name}:{message}", 1000)
    return _one_line(lines[-1], 1000) if lines else "unknown error"


def summary_metrics(trials: list, metrics: tuple[str, ...]) -> dict[str, float]:
    """The parent run's summary of Tune's trials: counts by outcome and, for each of ``metrics``
    (and the objectives the trials carry), its best final value (in the metric's own direction)
    among the trials that finished all their epochs."""
    from search.prepare.config import natural_mode

    completed = [t.last_result for t in trials if getattr(t, "status", "") == "TERMINATED"
                 and (getattr(t, "last_result", None) or {}).get("final")]
    out = {"trials_completed": float(len(completed)),
           "trials_pruned": float(sum(getattr(t, "status", "") == "TERMINATED" for t in trials) - len(completed)),
           "trials_failed": float(sum(getattr(t, "status", "") == "ERROR" for t in trials))}
    for m in metrics:
        values = [float(r[m]) for r in completed if isinstance(r.get(m), (int, float)) and math.isfinite(r[m])]
        if values:
            out[f"best_{m}"] = Objective(m, natural_mode(m)).best(values)
    return out


def _is_permanent(e: Exception) -> bool:
    return isinstance(e, MlflowException) and e.error_code in _PERMANENT_ERRORS


# ----------------------------------------------------------------------------- callback
class MLflowTracking(Callback):
    """Ray Tune callback writing the search to MLflow (see the module docstring).

    Args:
        tracking_uri: where to write (checked beforehand with :func:`check_tracking_uri`).
        experiment: MLflow experiment name (created if absent).
        search_name: the search's name; its parent run is found again by it on resume.
        search_tags: tags of the parent run (space, dataset name and fingerprint, code version,
            sampler, scheduler, ...).
        search_params: the search options, logged as params of the parent run.
        max_pending: bound on buffered records while the server is down; beyond it the oldest
            per-epoch metric records are dropped (run creation, params and final status never are).
        flush_timeout: seconds the experiment end waits for buffered records to be sent.
        setup_timeout: seconds ``setup`` waits for the parent run (so ``parent_run_id`` is set).
        request_timeout: per-request time-out of MLflow's REST client while the search runs.
        max_backoff: longest pause between two attempts while the server is unreachable.
        dataset: the search's dataset, logged as the parent run's dataset input.
        summary: metrics whose best final value the parent run gets (default: every metric the
            task computes, and the loss).
        copied_from: the tracking URI of the store this one is a copy of (a copied results
            folder, :mod:`search.trust.relocate`): a state saved against it is this store's.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        search_name: str,
        search_tags: dict[str, str],
        search_params: dict[str, object],
        *,
        max_pending: int = 20_000,
        flush_timeout: float = 120.0,
        setup_timeout: float = 15.0,
        request_timeout: float = 10.0,
        max_backoff: float = 15.0,
        dataset: Any = None,
        summary: tuple[str, ...] | None = None,
        copied_from: str | None = None,
    ) -> None:
        if summary is None:
            from trainables.metrics import METRICS

            summary = (*METRICS, "loss")
        self._args = {"tracking_uri": tracking_uri, "experiment": experiment, "search_name": search_name,
                      "search_tags": {str(k): str(v) for k, v in search_tags.items()},
                      "search_params": dict(search_params), "max_pending": int(max_pending),
                      "flush_timeout": float(flush_timeout), "setup_timeout": float(setup_timeout),
                      "request_timeout": float(request_timeout), "max_backoff": float(max_backoff),
                      "dataset": dataset, "summary": tuple(summary), "copied_from": copied_from}
        self.tracking_uri, self.experiment, self.search_name = tracking_uri, experiment, search_name
        self.flush_timeout, self.setup_timeout = float(flush_timeout), float(setup_timeout)
        self.summary = tuple(summary)
        self.copied_from = copied_from
        from search.tracking.writer import MLflowWriter  # it imports this module's tags and limits

        self.writer = MLflowWriter(tracking_uri, experiment, search_name, self._args["search_tags"],
                                   self._args["search_params"], dataset)
        self.sender = Sender(self.writer.apply, permanent=_is_permanent, droppable=lambda r: r["op"] == "metrics",
                             target=tracking_uri, max_pending=max_pending, request_timeout=request_timeout,
                             max_backoff=max_backoff)
        self.wall_s = 0.0                           # driver time of the earlier sessions
        self._session_start = time.monotonic()
        self._tagged: set[str] = set()              # trial ids whose result tags were queued
        self._restored: list[str] | None = None     # trial ids Tune held at this session's first step

    # pickled by Ray with the RunConfig: the arguments and the Tune state, no thread nor lock
    def __getstate__(self) -> dict:
        return {"args": self._args, "state": self.get_state()}

    def __setstate__(self, pickled: dict) -> None:
        self.__init__(**pickled["args"])
        self.set_state(pickled["state"])

    @property
    def parent_run_id(self) -> str | None:
        return self.writer.parent_run_id

    @property
    def experiment_id(self) -> str | None:
        return self.writer.experiment_id

    @property
    def client(self) -> MlflowClient:
        return self.writer.client

    @property
    def dropped(self) -> int:
        """Records dropped (buffer full or rejected by the server)."""
        return self.sender.dropped

    # ------------------------------------------------------------------ Tune state
    def get_state(self) -> dict | None:
        w = self.writer
        with w.lock:
            state = {
                "version": 1,
                "tracking_uri": self.tracking_uri,
                "parent_run_id": w.parent_run_id,
                "experiment_id": w.experiment_id,
                "runs": dict(w.runs),
                "finished": sorted(w.finished),
                "trials": dict(w.trials),
                "skip_until": dict(w.skip_until),
            }
        state.update(pending=self.sender.records(), dropped=self.sender.dropped,
                     wall_s=self.wall_s + (time.monotonic() - self._session_start))
        return state

    def set_state(self, state: dict) -> None:
        w = self.writer
        with w.lock:
            w.trials = dict(state.get("trials", {}))
        if state.get("tracking_uri") not in (self.tracking_uri, self.copied_from):
            # resumed against another store: the saved run ids and unsent records belong to the old one
            logger.warning("resuming with tracking URI %s (was %s): the search's earlier MLflow runs stay there",
                           self.tracking_uri, state.get("tracking_uri"))
            return
        with w.lock:
            w.parent_run_id = state.get("parent_run_id")
            w.experiment_id = state.get("experiment_id")
            w.runs = dict(state.get("runs", {}))  # informative: runs are looked up again by tag
            w.finished = set(state.get("finished", []))
            w.skip_until = {k: int(v) for k, v in state.get("skip_until", {}).items()}
        self.sender.load(state.get("pending", []), int(state.get("dropped", 0)))
        self.wall_s = float(state.get("wall_s", 0.0))
        self._session_start = time.monotonic()

    # ------------------------------------------------------------------ Tune hooks
    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info) -> None:
        self._session_start = time.monotonic()
        self.sender.put({"op": "parent"}, first=True)
        if not self.flush(self.setup_timeout, until_parent=True):
            logger.warning("MLflow at %s not reachable yet; the search goes on and its records are buffered",
                           self.tracking_uri)

    def _remember(self, trial: Any) -> str:
        """Keep what a trial's run needs (name, params); any hook may be the first to see a trial
        (a trial can fail before it starts, a restored one may report before a start event)."""
        trial_id = str(trial.trial_id)
        with self.writer.lock:
            if trial_id not in self.writer.trials:
                self.writer.trials[trial_id] = {
                    "name": str(trial),
                    "params": {str(k): _param_value(v) for k, v in (getattr(trial, "config", None) or {}).items()},
                }
        return trial_id

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        """On the first step of a session: remember which trials the restored search holds (a trial
        sampled later may supersede a lost one), and finish the runs of trials the snapshot holds as
        TERMINATED whose end never reached MLflow (a trial settled on resume: :mod:`search.tune.settle`)."""
        if self._restored is not None:
            return
        self._restored = [str(t.trial_id) for t in trials]
        for t in trials:
            if getattr(t, "status", "") == "TERMINATED" and str(t.trial_id) not in self.writer.finished \
                    and (getattr(t, "last_result", None) or {}).get("final"):
                self.on_trial_result(iteration, trials, t, dict(t.last_result))
                self.on_trial_complete(iteration, trials, t)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self._put({"op": "trial", "trial_id": self._remember(trial)})

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info) -> None:
        trial_id = self._remember(trial)
        step = result_step(result)
        metrics = result_metrics(result)
        metrics[STEP_METRIC] = float(step)
        record: dict[str, Any] = {"op": "metrics", "trial_id": trial_id, "step": step, "metrics": metrics,
                                  "time_ms": int(time.time() * 1000)}
        curve = result.get(CURVE_KEY)
        if curve:  # the epochs the trial did not report on their own: one batch with the result
            record["curve"] = [{"step": result_step(e), "metrics": {**result_metrics(e), STEP_METRIC: float(result_step(e))}}
                               for e in curve if isinstance(e, Mapping)]
        if trial_id not in self._tagged:
            tags = {k: str(result[k]) for k in RESULT_TAG_KEYS if k in result}
            if tags:
                record["tags"] = tags
                self._tagged.add(trial_id)
        self._put(record)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info) -> None:
        record: dict[str, Any] = {"op": "end", "trial_id": self._remember(trial), "status": "FINISHED"}
        last = getattr(trial, "last_result", None) or {}
        planned = (getattr(trial, "config", None) or {}).get("epochs")
        if "epoch" in last and planned is not None and int(last["epoch"]) < int(planned):
            # a scheduler (ASHA, HyperBand, median) ended it before its last epoch
            record["tags"] = {"fusetune.stopped_early": "true", "fusetune.epochs_done": str(int(last["epoch"]))}
        self._put(record)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self._put({"op": "end", "trial_id": self._remember(trial), "status": "FAILED", "error": trial_error_reason(trial)})

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info) -> None:
        self._put({"op": "tags", "trial_id": self._remember(trial),
                   "tags": {"fusetune.retries": str(getattr(trial, "num_failures", "")),
                            "fusetune.last_retry_reason": trial_error_reason(trial)}})

    def on_experiment_end(self, trials: list, **info) -> None:
        statuses = {getattr(t, "status", "TERMINATED") for t in trials}
        complete = statuses <= {"TERMINATED", "ERROR"}
        summary = summary_metrics(trials, self.summary)
        summary["wall_time_s"] = self.wall_s + (time.monotonic() - self._session_start)
        self._put({"op": "summary", "metrics": summary, "time_ms": int(time.time() * 1000)})
        restored = set(self._restored or [])
        self._put({"op": "end_parent", "status": "FINISHED" if complete else "KILLED",
                   "trial_ids": sorted(str(t.trial_id) for t in trials),
                   "new_ids": [str(t.trial_id) for t in trials if str(t.trial_id) not in restored]})
        sent = self.flush(self.flush_timeout)
        self.close()
        if not sent:
            left = self.sender.pending()
            logger.warning(
                "MLflow at %s still unreachable: %d records not sent; they stay in the experiment state "
                "and are sent when the search is resumed (--resume)", self.tracking_uri, left)
        if self.dropped:
            logger.warning("%d MLflow records were dropped (buffer full or rejected by the server)", self.dropped)

    # ------------------------------------------------------------------ the queue
    def _put(self, record: dict) -> None:
        self.sender.put(record)

    def pending(self) -> int:
        """Records not yet sent (including the one being sent)."""
        return self.sender.pending()

    def flush(self, timeout: float, *, until_parent: bool = False) -> bool:
        """Wait up to ``timeout`` s until every buffered record is sent; True when all were."""
        return self.sender.wait(timeout, (lambda: self.writer.parent_checked) if until_parent else None)

    def close(self) -> None:
        """Stop the sender thread (records still queued are kept in the state)."""
        self.sender.close()
