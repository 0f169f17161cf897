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
and, when the search ends, summary metrics (:func:`search.tracking.results.summary_metrics`): ``best_<metric>`` over the
trials that finished all their epochs, ``trials_completed``/``_pruned``/``_failed`` and
``wall_time_s`` (the driver's time over all sessions of the search).

The queue and its sender thread (with the back-off) are :mod:`search.tracking.queue`; what a
record does to the runs is :mod:`search.tracking.writer`; what the records carry of Tune's results
is :mod:`search.tracking.results`; this module is the Tune callback, which makes the records and
keeps the state. Where the store lives (:func:`~search.tracking.store.check_tracking_uri`: fail fast,
one line, before any trial starts; :func:`~search.tracking.store.default_tracking_uri`: a SQLite
store in the results folder) and the tags that find a search's runs: :mod:`search.tracking.store`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from search.tracking.queue import Sender
from search.tracking.results import (
    CURVE_KEY,
    RESULT_TAG_KEYS,
    STEP_METRIC,
    result_metrics,
    result_step,
    summary_metrics,
    trial_error_reason,
)
from search.tracking.store import _param_value

logger = logging.getLogger("fusetune.tracking")

_PERMANENT_ERRORS = frozenset({"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "RESOURCE_ALREADY_EXISTS", "INVALID_STATE",
                               "RESOURCE_DOES_NOT_EXIST"})
"""MLflow error codes that retrying cannot fix: the record is dropped with a warning. Everything
else (connection refused, time-outs, 5xx, a locked SQLite file) is treated as an outage."""


def _is_permanent(e: Exception) -> bool:
    return isinstance(e, MlflowException) and e.error_code in _PERMANENT_ERRORS


# ----------------------------------------------------------------------------- callback
class MLflowTracking(Callback):
    """Ray Tune callback writing the search to MLflow (see the module docstring).

    Args:
        tracking_uri: where to write (checked beforehand with :func:`search.tracking.store.check_tracking_uri`).
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
        from search.tracking.writer import MLflowWriter  # it imports this module's logger

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
