"""Records -> MLflow: what the tracking callback's records do to the runs of a search.

:class:`MLflowWriter` is the ``apply`` of :class:`search.tracking.queue.Sender` (it runs on the
sender thread): it finds or creates the experiment, the search's parent run (by
``fusetune.search_name`` + ``fusetune.role = search``) and a trial's child run (by
``fusetune.trial_id``), never duplicating one, skips the epochs a resumed run already holds and
the records of a run already FINISHED, and at the search's end marks the runs of trials lost with
a killed driver as superseded. Tags, limits and helpers: :mod:`search.tracking.store`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from search.tracking.callback import logger
from search.tracking.results import STEP_METRIC
from search.tracking.store import (
    _MAX_METRICS_PER_BATCH,
    _MAX_PARAMS_PER_BATCH,
    _MAX_TAG_VALUE,
    ERROR_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    PARENT_RUN_TAG,
    ROLE_TAG,
    SEARCH_NAME_TAG,
    SUPERSEDED_ROLE,
    SUPERSEDED_TAG,
    TRIAL_ID_TAG,
    _param_value,
    _quote,
    default_artifact_location,
)


class MLflowWriter:
    """The MLflow side of a search's tracking (module docstring). ``trials`` (trial id -> its
    run's name and params) is filled by the callback; the rest is found or made here."""

    def __init__(self, tracking_uri: str, experiment: str, search_name: str, search_tags: dict[str, str],
                 search_params: dict[str, object], dataset: Any = None) -> None:
        self.tracking_uri, self.experiment, self.search_name = tracking_uri, experiment, search_name
        self.search_tags, self.search_params, self.dataset = search_tags, search_params, dataset
        self.lock = threading.Lock()                 # the callback reads what the sender thread writes
        self.parent_run_id: str | None = None
        self.experiment_id: str | None = None
        self.runs: dict[str, str] = {}               # trial_id -> run_id
        self.finished: set[str] = set()              # trial ids whose run is FINISHED
        self.trials: dict[str, dict] = {}            # trial_id -> {"name", "params"}
        self.skip_until: dict[str, int] = {}         # trial_id -> last step the run holds
        self.synced: set[str] = set()                # trial ids whose run was looked up this session
        self.open_runs: set[str] = set()             # run ids known to be RUNNING this session
        self.parent_checked = False                  # parent run looked up this session
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def apply(self, record: dict) -> None:
        """Send one record (raises when MLflow could not take it; the sender retries)."""
        op = record["op"]
        if op == "parent":
            self.ensure_parent()
            return
        if op == "summary":
            from mlflow.entities import Metric

            run_id = self.ensure_parent()
            self.client.log_batch(run_id, metrics=[Metric(k, float(v), record["time_ms"], 0)
                                                   for k, v in sorted(record["metrics"].items())])
            return
        if op == "end_parent":
            self.ensure_parent()
            if "trial_ids" in record:
                self.end_orphans(set(record["trial_ids"]), record.get("new_ids", []))
            self.client.set_terminated(self.parent_run_id, record["status"])
            return
        trial_id = record["trial_id"]
        run_id = self.ensure_run(trial_id)
        if run_id is None or trial_id in self.finished:
            return  # unknown trial, or a run that already finished in an earlier session
        if op == "metrics":
            self.log_metrics(trial_id, run_id, record)
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
                with self.lock:
                    self.finished.add(trial_id)
        # "trial" records only need the run to exist (done by _ensure_run)

    def log_metrics(self, trial_id: str, run_id: str, record: dict) -> None:
        """One report's epochs (those its ``curve`` carries, then its own), each epoch once."""
        step = int(record["step"])
        if step <= self.skip_until.get(trial_id, -1):
            return  # this epoch is already in the run (logged before a driver restart)
        self.reopen(run_id)
        from mlflow.entities import Metric, RunTag

        skip = self.skip_until.get(trial_id, -1)
        metrics = [Metric(k, v, record["time_ms"], int(e["step"]))
                   for e in record.get("curve", ()) if int(e["step"]) > skip for k, v in sorted(e["metrics"].items())]
        metrics += [Metric(k, v, record["time_ms"], step) for k, v in sorted(record["metrics"].items())]
        tags = [RunTag(k, v[:_MAX_TAG_VALUE]) for k, v in record.get("tags", {}).items()]
        for i in range(0, max(len(metrics), 1), _MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=metrics[i:i + _MAX_METRICS_PER_BATCH], tags=tags if i == 0 else [])
        # an epoch may come again in this session: a trial retried (--max-failures) or resumed
        # from a checkpoint before it re-reports the epochs since, after the killed driver's
        # unsent records (restored with Tune's snapshot) carried some of them already
        with self.lock:
            self.skip_until[trial_id] = max([skip, step, *(int(e["step"]) for e in record.get("curve", ()))])

    def end_orphans(self, trial_ids: set[str], new_ids: list[str]) -> None:
        """Child runs whose trial is not in the search's final trial list: trials a killed driver had
        started after Tune's last saved snapshot, which the resumed search sampled again under new
        ids. Each, oldest first, is tagged ``fusetune.superseded_by`` = the next trial this session
        sampled (in order) and gets the role ``superseded``, so that no count or table of the
        search's trial runs holds it; it ends as KILLED (never stays RUNNING), with the reason."""
        runs = self.client.search_runs(
            [self.ensure_experiment()],
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

    def reopen(self, run_id: str) -> None:
        """A run that ended FAILED/KILLED and receives results again (retried on resume) runs again."""
        if run_id in self.open_runs:
            return
        if self.client.get_run(run_id).info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        self.open_runs.add(run_id)

    def ensure_experiment(self) -> str:
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

    def ensure_parent(self) -> str:
        if self.parent_run_id is not None and self.parent_checked:
            return self.parent_run_id
        exp_id = self.ensure_experiment()
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
        self.log_params(run_id, {k: _param_value(v) for k, v in self.search_params.items()}, existing)
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, v[:_MAX_TAG_VALUE]) for k, v in tags.items()])
        if self.dataset is not None:  # MLflow keeps one input per dataset (name, digest) and run
            self.client.log_inputs(run_id, datasets=[self.dataset.entity()])
        with self.lock:
            self.parent_run_id = run_id
            self.parent_checked = True
        return run_id

    def ensure_run(self, trial_id: str) -> str | None:
        """The child run of a trial: looked up by tag once per session (a run created by an earlier
        driver is reused, and the epochs it already holds are skipped), created if absent."""
        if trial_id in self.synced:
            return self.runs.get(trial_id)
        info = self.trials.get(trial_id)
        if info is None:
            return None
        parent = self.ensure_parent()
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
        self.log_params(run_id, info["params"], existing)
        with self.lock:
            self.runs[trial_id] = run_id
            self.skip_until[trial_id] = skip_until
            if run.info.status == "FINISHED":
                self.finished.add(trial_id)
            self.synced.add(trial_id)
        return run_id

    def log_params(self, run_id: str, params: dict[str, str], existing: Mapping[str, str]) -> None:
        """Params are immutable in MLflow: log the new ones, keep (and report) changed ones."""
        from mlflow.entities import Param

        changed = sorted(k for k, v in params.items() if k in existing and existing[k] != v)
        if changed:
            logger.warning("run %s keeps its recorded params %s (the resumed search passed other values)",
                           run_id, ", ".join(changed))
        new = [Param(k, v) for k, v in params.items() if k not in existing]
        for i in range(0, len(new), _MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=new[i:i + _MAX_PARAMS_PER_BATCH])
