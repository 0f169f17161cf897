"""The tracking store: where a search's MLflow runs live (URI, check, artifacts) and the tags that find them.

Also MLflow's limits on what is logged there.

:func:`check_tracking_uri` fails fast, in one line, before any trial starts;
:func:`default_tracking_uri` is a SQLite store in the results folder; :func:`end_search_run` ends
the run of a search whose driver died without ending it. The Tune callback that writes the runs
is :mod:`search.tracking.callback`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlflow.tracking import MlflowClient

from search.prepare.errors import UsageError
from search.tracking.queue import fast_http
from search.tracking.queue import one_line as _one_line
from search.trust.credentials import refuse_credentials

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
experiment the tracking creates, and on an existing one that has no kind yet."""

# MLflow's limits (mlflow.utils.validation): per log_batch call and per value
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAM_VALUE = 6000
_MAX_TAG_VALUE = 8000


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
