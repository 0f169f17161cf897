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

The parent run also gets the dataset as an MLflow dataset input (:mod:`search.dataset_input`)
and, when the search ends, summary metrics (:func:`summary_metrics`): ``best_<metric>`` over the
trials that finished all their epochs, ``trials_completed``/``_pruned``/``_failed`` and
``wall_time_s`` (the driver's time over all sessions of the search).

Also here: :func:`check_tracking_uri` (fail fast, one line, before any trial starts) and
:func:`default_tracking_uri` (a SQLite store in the results folder).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from search.errors import UsageError

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


_FAST_HTTP_LOCK = threading.Lock()
_fast_http_depth = 0
_fast_http_saved: dict[str, str | None] = {}


@contextlib.contextmanager
def fast_http(timeout: float, retries: int = 0) -> Iterator[None]:
    """Make MLflow's REST client fail fast (its defaults retry for minutes) inside the block.

    MLflow reads these variables at request time; a value the user set explicitly is respected.
    The variables are process-wide: overlapping blocks (the tracking thread and the main thread)
    share the settings of the outermost one, and the last to leave restores the user's values.
    """
    global _fast_http_depth
    wanted = {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(math.ceil(timeout))), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries)}
    with _FAST_HTTP_LOCK:
        if _fast_http_depth == 0:
            _fast_http_saved.clear()
            _fast_http_saved.update({k: os.environ.get(k) for k in wanted})
            for k, v in wanted.items():
                os.environ.setdefault(k, v)
        _fast_http_depth += 1
    try:
        yield
    finally:
        with _FAST_HTTP_LOCK:
            _fast_http_depth -= 1
            if _fast_http_depth == 0:
                for k, v in _fast_http_saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`UsageError` (one line) unless ``uri`` is a usable MLflow tracking store.

    Accepted: ``sqlite:///PATH`` (its folder is created), ``http(s)://HOST:PORT`` of an MLflow
    server (probed with one request, ``timeout`` seconds, no retries; credentials come from MLflow's
    own variables ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``/``_TOKEN``), and the database URIs
    MLflow supports (``postgresql://``, ``mysql://``, ...). Plain folders/``file:`` stores are refused:
    MLflow 3 deprecates them and they have no Model Registry.
    """
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
    try:
        with fast_http(timeout):
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


def _one_line(text: str, limit: int) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


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
    from search.config import natural_mode

    completed = [t.last_result for t in trials if getattr(t, "status", "") == "TERMINATED"
                 and (getattr(t, "last_result", None) or {}).get("final")]
    out = {"trials_completed": float(len(completed)),
           "trials_pruned": float(sum(getattr(t, "status", "") == "TERMINATED" for t in trials) - len(completed)),
           "trials_failed": float(sum(getattr(t, "status", "") == "ERROR" for t in trials))}
    for m in metrics:
        values = [float(r[m]) for r in completed if isinstance(r.get(m), (int, float)) and math.isfinite(r[m])]
        if values:
            out[f"best_{m}"] = max(values) if natural_mode(m) == "max" else min(values)
    return out


def _is_permanent(e: Exception) -> bool:
    return isinstance(e, MlflowException) and e.error_code in _PERMANENT_ERRORS


# ----------------------------------------------------------------------------- callback
_RUNTIME_ATTRS = frozenset({"_lock", "_changed", "_thread", "_client", "_closing", "_busy", "_down_since",
                            "_tagged", "_synced", "_open_runs", "_parent_checked", "_session_start", "_restored"})

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
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.search_name = search_name
        self.search_tags = {str(k): str(v) for k, v in search_tags.items()}
        self.search_params = dict(search_params)
        self.max_pending = int(max_pending)
        self.flush_timeout = float(flush_timeout)
        self.setup_timeout = float(setup_timeout)
        self.request_timeout = float(request_timeout)
        self.max_backoff = float(max_backoff)
        self.dataset = dataset
        if summary is None:
            from trainables.metrics import METRICS

            summary = (*METRICS, "loss")
        self.summary = tuple(summary)
        # persistent state (get_state / set_state)
        self.parent_run_id: str | None = None
        self.experiment_id: str | None = None
        self._runs: dict[str, str] = {}             # trial_id -> run_id
        self._finished: set[str] = set()            # trial ids whose run is FINISHED
        self._trials: dict[str, dict] = {}          # trial_id -> {"name", "params"}
        self._skip_until: dict[str, int] = {}       # trial_id -> last step the run already holds
        self._queue: deque[dict] = deque()
        self.dropped = 0                            # records dropped (queue full / rejected)
        self.wall_s = 0.0                           # driver time of the earlier sessions
        self._init_runtime()

    # ------------------------------------------------------------------ runtime (not pickled)
    def _init_runtime(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._closing = False
        self._busy = False
        self._down_since: float | None = None
        self._tagged: set[str] = set()              # trial ids whose result tags were queued
        self._synced: set[str] = set()              # trial ids whose run was looked up this session
        self._open_runs: set[str] = set()           # run ids known to be RUNNING this session
        self._parent_checked = False                # parent run looked up this session
        self._client: MlflowClient | None = None
        self._session_start = time.monotonic()
        self._restored: list[str] | None = None     # trial ids Tune held at this session's first step

    def __getstate__(self) -> dict:
        with self._lock:
            state = {k: v for k, v in self.__dict__.items()
                     if k not in _RUNTIME_ATTRS}
            state["_queue"] = deque(self._queue)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    # ------------------------------------------------------------------ Tune state
    def get_state(self) -> dict | None:
        with self._lock:
            return {
                "version": 1,
                "tracking_uri": self.tracking_uri,
                "parent_run_id": self.parent_run_id,
                "experiment_id": self.experiment_id,
                "runs": dict(self._runs),
                "finished": sorted(self._finished),
                "trials": dict(self._trials),
                "skip_until": dict(self._skip_until),
                "pending": list(self._queue),
                "dropped": self.dropped,
                "wall_s": self.wall_s + (time.monotonic() - self._session_start),
            }

    def set_state(self, state: dict) -> None:
        with self._lock:
            self._trials = dict(state.get("trials", {}))
            if state.get("tracking_uri") != self.tracking_uri:
                # resumed against another store: the saved run ids and unsent records belong to the old one
                logger.warning("resuming with tracking URI %s (was %s): the search's earlier MLflow runs stay there",
                               self.tracking_uri, state.get("tracking_uri"))
                return
            self.parent_run_id = state.get("parent_run_id")
            self.experiment_id = state.get("experiment_id")
            self._runs = dict(state.get("runs", {}))  # informative: runs are looked up again by tag
            self._finished = set(state.get("finished", []))
            self._skip_until = {k: int(v) for k, v in state.get("skip_until", {}).items()}
            self._queue = deque(state.get("pending", []))
            self.dropped = int(state.get("dropped", 0))
            self.wall_s = float(state.get("wall_s", 0.0))
            self._session_start = time.monotonic()

    # ------------------------------------------------------------------ Tune hooks
    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info) -> None:
        with self._lock:
            self._session_start = time.monotonic()
            self._queue.appendleft({"op": "parent"})
        self._start()
        if not self.flush(self.setup_timeout, until_parent=True):
            logger.warning("MLflow at %s not reachable yet; the search goes on and its records are buffered",
                           self.tracking_uri)

    def _remember(self, trial: Any) -> str:
        """Keep what a trial's run needs (name, params); any hook may be the first to see a trial
        (a trial can fail before it starts, a restored one may report before a start event)."""
        trial_id = str(trial.trial_id)
        if trial_id not in self._trials:
            with self._lock:
                self._trials[trial_id] = {
                    "name": str(trial),
                    "params": {str(k): _param_value(v) for k, v in (getattr(trial, "config", None) or {}).items()},
                }
        return trial_id

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        """On the first step of a session: remember which trials the restored search holds (a trial
        sampled later may supersede a lost one), and finish the runs of trials the snapshot holds as
        TERMINATED whose end never reached MLflow (a trial settled on resume: :mod:`search.settle`)."""
        if self._restored is not None:
            return
        self._restored = [str(t.trial_id) for t in trials]
        for t in trials:
            if getattr(t, "status", "") == "TERMINATED" and str(t.trial_id) not in self._finished \
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
            with self._lock:
                left = len(self._queue)
            logger.warning(
                "MLflow at %s still unreachable: %d records not sent; they stay in the experiment state "
                "and are sent when the search is resumed (--resume)", self.tracking_uri, left)
        if self.dropped:
            logger.warning("%d MLflow records were dropped (buffer full or rejected by the server)", self.dropped)

    # ------------------------------------------------------------------ queue
    def _put(self, record: dict) -> None:
        with self._lock:
            self._queue.append(record)
            if len(self._queue) > self.max_pending:
                self._drop_oldest_metrics()
            self._changed.notify_all()
        self._start()

    def _drop_oldest_metrics(self) -> None:
        for i, rec in enumerate(self._queue):
            if rec["op"] == "metrics" and i > 0:  # never the head: the sender may be replaying it
                del self._queue[i]
                if self.dropped == 0:
                    logger.warning("MLflow buffer full (%d records): dropping the oldest per-epoch metrics",
                                   self.max_pending)
                self.dropped += 1
                return

    def pending(self) -> int:
        """Records not yet sent (including the one being sent)."""
        with self._lock:
            return len(self._queue)

    def flush(self, timeout: float, *, until_parent: bool = False) -> bool:
        """Wait up to ``timeout`` s until every buffered record is sent; True when all were."""
        deadline = time.monotonic() + timeout
        self._start()
        with self._lock:
            while True:
                done = self._parent_checked if until_parent else (not self._queue and not self._busy)
                left = deadline - time.monotonic()
                if done or left <= 0:
                    return done
                self._changed.wait(min(left, 0.5))

    def close(self) -> None:
        """Stop the sender thread (records still queued are kept in the state)."""
        with self._lock:
            self._closing = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=self.request_timeout + 5)
        self._thread = None
        self._closing = False

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._closing = False
            self._thread = threading.Thread(target=self._send_loop, name="fusetune-mlflow", daemon=True)
            self._thread.start()

    def _send_loop(self) -> None:
        backoff = 0.5
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._changed.wait(0.5)
                if self._closing:
                    return  # what is still queued stays in the state
                record = self._queue[0]
                self._busy = True
            try:
                with fast_http(self.request_timeout):
                    self._apply(record)
            except Exception as e:  # noqa: BLE001 - the search must never die because of MLflow
                if _is_permanent(e):
                    logger.warning("MLflow rejected a %s record of %s: %s", record["op"],
                                   record.get("trial_id", "the search"), _one_line(str(e), 300))
                    self._pop(record, dropped=True)
                    continue
                with self._lock:
                    self._busy = False
                    if self._down_since is None:
                        self._down_since = time.monotonic()
                        logger.warning("MLflow at %s unreachable (%s); buffering records and retrying",
                                       self.tracking_uri, _one_line(str(e), 200))
                    self._changed.notify_all()
                    self._changed.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            backoff = 0.5
            if self._down_since is not None:
                logger.warning("MLflow at %s reachable again after %.0f s; sending %d buffered records",
                               self.tracking_uri, time.monotonic() - self._down_since, self.pending())
                self._down_since = None
            self._pop(record)

    def _pop(self, record: dict, dropped: bool = False) -> None:
        with self._lock:
            if self._queue and self._queue[0] is record:
                self._queue.popleft()
            self.dropped += int(dropped)
            self._busy = False
            self._changed.notify_all()

    # ------------------------------------------------------------------ records -> MLflow
    def _apply(self, record: dict) -> None:
        op = record["op"]
        if op == "parent":
            self._ensure_parent()
            return
        if op == "summary":
            from mlflow.entities import Metric

            run_id = self._ensure_parent()
            self.client.log_batch(run_id, metrics=[Metric(k, float(v), record["time_ms"], 0)
                                                   for k, v in sorted(record["metrics"].items())])
            return
        if op == "end_parent":
            self._ensure_parent()
            if "trial_ids" in record:
                self._end_orphans(set(record["trial_ids"]), record.get("new_ids", []))
            self.client.set_terminated(self.parent_run_id, record["status"])
            return
        trial_id = record["trial_id"]
        run_id = self._ensure_run(trial_id)
        if run_id is None or trial_id in self._finished:
            return  # unknown trial, or a run that already finished in an earlier session
        if op == "metrics":
            step = int(record["step"])
            if step <= self._skip_until.get(trial_id, -1):
                return  # this epoch is already in the run (logged before a driver restart)
            self._reopen(run_id)
            from mlflow.entities import Metric, RunTag

            skip = self._skip_until.get(trial_id, -1)
            metrics = [Metric(k, v, record["time_ms"], int(e["step"]))
                       for e in record.get("curve", ()) if int(e["step"]) > skip for k, v in sorted(e["metrics"].items())]
            metrics += [Metric(k, v, record["time_ms"], step) for k, v in sorted(record["metrics"].items())]
            tags = [RunTag(k, v[:_MAX_TAG_VALUE]) for k, v in record.get("tags", {}).items()]
            for i in range(0, max(len(metrics), 1), _MAX_METRICS_PER_BATCH):
                self.client.log_batch(run_id, metrics=metrics[i:i + _MAX_METRICS_PER_BATCH], tags=tags if i == 0 else [])
        elif op == "tags":
            for k, v in record["tags"].items():
                self.client.set_tag(run_id, k, v[:_MAX_TAG_VALUE])
        elif op == "end":
            for k, v in record.get("tags", {}).items():
                self.client.set_tag(run_id, k, v)
            if record["status"] == "FAILED":
                self.client.set_tag(run_id, ERROR_TAG, record.get("error", "")[:_MAX_TAG_VALUE])
            self.client.set_terminated(run_id, record["status"])
            if record["status"] == "FINISHED":
                with self._lock:
                    self._finished.add(trial_id)
        # "trial" records only need the run to exist (done by _ensure_run)

    def _end_orphans(self, trial_ids: set[str], new_ids: list[str]) -> None:
        """Child runs whose trial is not in the search's final trial list: trials a killed driver had
        started after Tune's last saved snapshot, which the resumed search sampled again under new
        ids. Each, oldest first, is tagged ``fusetune.superseded_by`` = the next trial this session
        sampled (in order) and gets the role ``superseded``, so that no count or table of the
        search's trial runs holds it; it ends as KILLED (never stays RUNNING), with the reason."""
        runs = self.client.search_runs(
            [self._ensure_experiment()],
            filter_string=f"tags.`{SEARCH_NAME_TAG}` = {_quote(self.search_name)} and tags.`{ROLE_TAG}` = 'trial'",
            order_by=["attributes.start_time ASC"], max_results=5000,
        )
        lost = [r for r in runs if r.data.tags.get(TRIAL_ID_TAG) not in trial_ids]
        replacements = iter(new_ids)
        for run in lost:
            tags = {ROLE_TAG: SUPERSEDED_ROLE,
                    ERROR_TAG: "trial lost with a killed driver before Tune saved it; sampled again, not resumed"}
            new = next(replacements, None)
            if new is not None:
                tags[SUPERSEDED_TAG] = new
            for k, v in tags.items():
                self.client.set_tag(run.info.run_id, k, v)
            if run.info.status == "RUNNING":
                self.client.set_terminated(run.info.run_id, "KILLED")

    def _reopen(self, run_id: str) -> None:
        """A run that ended FAILED/KILLED and receives results again (retried on resume) runs again."""
        if run_id in self._open_runs:
            return
        if self.client.get_run(run_id).info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        self._open_runs.add(run_id)

    def _ensure_experiment(self) -> str:
        if self.experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                try:
                    self.experiment_id = self.client.create_experiment(
                        self.experiment, artifact_location=default_artifact_location(self.tracking_uri, self.experiment),
                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
                except MlflowException as e:  # created meanwhile by another driver
                    if e.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                    self.experiment_id = self.client.get_experiment_by_name(self.experiment).experiment_id
            else:
                self.experiment_id = exp.experiment_id
                if EXPERIMENT_KIND_TAG not in exp.tags:  # a kind the user (or MLflow) chose stays
                    self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return self.experiment_id

    def _ensure_parent(self) -> str:
        if self.parent_run_id is not None and self._parent_checked:
            return self.parent_run_id
        exp_id = self._ensure_experiment()
        # looked up by tag (the id a restored state holds may name a run deleted meanwhile)
        found = self.client.search_runs(
            [exp_id],
            filter_string=f"tags.`{SEARCH_NAME_TAG}` = {_quote(self.search_name)} and tags.`{ROLE_TAG}` = 'search'",
            max_results=1,
        )
        tags = {**self.search_tags, SEARCH_NAME_TAG: self.search_name, ROLE_TAG: "search"}
        if found:
            run = found[0]
            run_id = run.info.run_id
            if run.info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            existing = run.data.params
        else:
            run_id = self.client.create_run(exp_id, tags=tags, run_name=self.search_name).info.run_id
            existing = {}
        self._log_params(run_id, {k: _param_value(v) for k, v in self.search_params.items()}, existing)
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, v[:_MAX_TAG_VALUE]) for k, v in tags.items()])
        if self.dataset is not None:  # MLflow keeps one input per dataset (name, digest) and run
            self.client.log_inputs(run_id, datasets=[self.dataset.entity()])
        with self._lock:
            self.parent_run_id = run_id
            self._parent_checked = True
            self._changed.notify_all()
        return run_id

    def _ensure_run(self, trial_id: str) -> str | None:
        """The child run of a trial: looked up by tag once per session (a run created by an earlier
        driver is reused, and the epochs it already holds are skipped), created if absent."""
        if trial_id in self._synced:
            return self._runs.get(trial_id)
        info = self._trials.get(trial_id)
        if info is None:
            return None
        parent = self._ensure_parent()
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TRIAL_ID_TAG}` = {_quote(trial_id)} and tags.`{SEARCH_NAME_TAG}` = {_quote(self.search_name)}",
            max_results=1,
        )
        skip_until = -1
        if found:
            run = found[0]
            run_id = run.info.run_id
            existing = run.data.params
            history = self.client.get_metric_history(run_id, STEP_METRIC)
            skip_until = max((int(m.step) for m in history), default=-1)
        else:
            tags = {PARENT_RUN_TAG: parent, TRIAL_ID_TAG: trial_id, SEARCH_NAME_TAG: self.search_name, ROLE_TAG: "trial"}
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=info["name"])
            run_id = run.info.run_id
            existing = {}
        self._log_params(run_id, info["params"], existing)
        with self._lock:
            self._runs[trial_id] = run_id
            self._skip_until[trial_id] = skip_until
            if run.info.status == "FINISHED":
                self._finished.add(trial_id)
            self._synced.add(trial_id)
        return run_id

    def _log_params(self, run_id: str, params: dict[str, str], existing: Mapping[str, str]) -> None:
        """Params are immutable in MLflow: log the new ones, keep (and report) changed ones."""
        from mlflow.entities import Param

        changed = sorted(k for k, v in params.items() if k in existing and existing[k] != v)
        if changed:
            logger.warning("run %s keeps its recorded params %s (the resumed search passed other values)",
                           run_id, ", ".join(changed))
        new = [Param(k, v) for k, v in params.items() if k not in existing]
        for i in range(0, len(new), _MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=new[i:i + _MAX_PARAMS_PER_BATCH])
