"""Registration: a search's top models and its ensemble logged to MLflow as pyfunc models and registered.

Each model of the top-k trials is refitted (:mod:`search.handoff.refit`), written as a
:mod:`trainables.bundle` (the same package ``python -m search.export`` hands to downstream teams) and
logged into that trial's child run as an MLflow pyfunc model (models-from-code: no pickled Python
object; :mod:`search.handoff.models`), the bundle folder being its one artifact, with an input
example and a signature, then registered as ``<space>-<data>``; the best version gets the alias
``champion``.

An ensemble (a :class:`TopTrial` with ``ensemble`` members: the weighted average of the class
probabilities of search trials and/or reference models) is handed off the same way, as ONE model:
every member fitted (:func:`search.handoff.refit.ensemble_members`), all written as one ensemble
bundle (:mod:`trainables.ensemble`), scored on the fixed test part, logged into the search's
``ensemble`` child run and registered under the same name (version tags
``fusetune.candidate=ensemble`` and ``fusetune.ensemble``: the members and weights).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from search.handoff.models import (
    _PYFUNC_CODE,
    CODE_RECORD,
    ENTRY_FILE,
    _example_rows,
    _tracking,
    code_paths,
    code_record,
    pip_requirements,
    pyfunc_input,
    signature,
)
from search.handoff.refit import Refit, _refit_once, ensemble_members
from search.tracking.queue import fast_http
from search.tracking.store import PARENT_RUN_TAG, ROLE_TAG, SEARCH_NAME_TAG, TRIAL_ID_TAG
from search.tune import faults
from trainables.bundle import copy_bundle, load_bundle, save_bundle
from trainables.data import MultimodalDataset
from trainables.metrics import METRICS, classification_metrics, scalar_metrics

logger = logging.getLogger("fusetune.models")

CHAMPION = "champion"
MODEL_NAME = "model"  # the logged model's name inside its run
VERSION_TRIAL_TAG = "fusetune.trial_id"
CONFIG_TAG = "fusetune.config"  # the full trial config, JSON: what promotion retrains to compare with
ENSEMBLE_ID = "ensemble"
"""Trial id (and role) of an ensemble's child run and model version."""
CANDIDATE_TAG = "fusetune.candidate"
ENSEMBLE_TAG = "fusetune.ensemble"
"""Model-version tag of an ensemble: its members (name, kind, weight, confirmed figures), JSON."""


@dataclass
class TopTrial:
    """One of the best trials of a search, as the driver ranks them (best first), or an ensemble.

    An ensemble has ``ensemble``: one record per member, in order, ``{"name": trial id or
    "reference:rf", "kind": "model" | "reference", "config": the member's full trial config or
    {"reference": "rf"}, "weight": float, "confirmed": {metric: value}}``; its ``config`` is then the
    search's fixed keys (data spec, method, seed, encoders, cache_dir, ...:
    :func:`trainables.trial_data.prepare_from_config` loads the training part from them), its
    ``trial_id`` conventionally :data:`ENSEMBLE_ID`, its ``metrics`` the ensemble's own figures."""

    trial_id: str
    config: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)   # final result: means, ``_std``, per fold
    checkpoint: str | None = None                            # the trial's last checkpoint folder
    tags: dict[str, str] = field(default_factory=dict)       # extra model-version tags (confirmed figures)
    ensemble: list[dict[str, Any]] | None = None             # members of an ensemble (see above)

    def members_summary(self) -> list[dict[str, Any]]:
        """The ensemble's members without their configs: what the version tag records."""
        return [{"name": m["name"], "kind": m["kind"], "weight": float(m["weight"]),
                 "confirmed": dict(m.get("confirmed") or {})} for m in self.ensemble or []]


def registered_model_name(space: str, data_name: str) -> str:
    """``<space>-<data>`` with the characters MLflow forbids in model names (``/``, ``:``) or that
    ``models:/<name>@<alias>`` URIs cannot carry (``@``) replaced."""
    data = Path(data_name).name if "/" in data_name else data_name
    return re.sub(r"[/:@=,\s]+", "-", f"{space}-{data}").strip("-")


# ----------------------------------------------------------------------------- MLflow
def _child_run(client: MlflowClient, parent_run_id: str, trial_id: str, role: str = "trial") -> str:
    parent = client.get_run(parent_run_id)
    found = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{TRIAL_ID_TAG}` = '{trial_id}' and tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'",
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    if role == "trial":
        logger.warning("no MLflow run of trial %s under search run %s; creating one for its model", trial_id, parent_run_id)
    tags = {PARENT_RUN_TAG: parent_run_id, TRIAL_ID_TAG: trial_id, ROLE_TAG: role,
            SEARCH_NAME_TAG: parent.data.tags.get(SEARCH_NAME_TAG, "")}
    run = client.create_run(parent.info.experiment_id, tags=tags, run_name=trial_id)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def _existing_version(client: MlflowClient, name: str, run_id: str):
    with contextlib.suppress(Exception):
        for v in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
            return v
    return None


def log_top_models(top: list[TopTrial], *, space: str, data_name: str, tracking_uri: str,
                   parent_run_id: str, registered_name: str, bundle_dir: str | Path | None = None,
                   device: str | None = None, set_alias: bool = True) -> list[str]:
    """Refit, bundle, log and register the models of ``top`` (best first); alias ``champion`` on the
    first unless ``set_alias`` is false (the search's gated promotion, :mod:`search.handoff.promotion`,
    decides instead). Returns the registered model versions in the order of ``top``.

    Idempotent: a trial whose run already holds a registered version of ``registered_name`` (a
    repeated call after ``--resume``) keeps that version and is not refitted; its tags are set
    again, which completes those of a version a killed driver had registered but not tagged.
    ``bundle_dir``: also keep each bundle there as ``<rank>-<trial_id>/`` (what ``search.export``
    copies from). An ensemble entry (``trial.ensemble``) is logged into the search's child run of
    role ``ensemble`` (created if missing); a configuration refitted for one entry is reused by the
    others.
    """
    client = MlflowClient(tracking_uri)
    versions: list[str] = []
    refits: dict[str, Refit] = {}
    for rank, trial in enumerate(top, start=1):
        run_id = _child_run(client, parent_run_id, trial.trial_id, ENSEMBLE_ID if trial.ensemble else "trial")
        existing = _existing_version(client, registered_name, run_id)
        if existing is not None:
            version = str(existing.version)
        else:
            version = register_model(trial, rank, run_id=run_id, space=space, data_name=data_name,
                                     tracking_uri=tracking_uri, registered_name=registered_name,
                                     bundle_dir=bundle_dir, device=device, refits=refits)
            faults.point("registration")
        tag_version(client, registered_name, version, trial, rank)
        versions.append(version)
    if versions and set_alias:
        client.set_registered_model_alias(registered_name, CHAMPION, versions[0])
        client.set_tag(parent_run_id, "fusetune.champion", f"models:/{registered_name}/{versions[0]}")
    return versions


def register_model(trial: TopTrial, rank: int, *, run_id: str, space: str, data_name: str, tracking_uri: str,
                   registered_name: str, bundle_dir: str | Path | None = None, device: str | None = None,
                   refits: dict[str, Refit] | None = None) -> str:
    """Refit ``trial``'s config (an ensemble: every member), bundle it and log it as the pyfunc
    model of its run ``run_id``, registered under ``registered_name``; the test figures (when the
    data has a test part) go to the run first, so a registered version always has them. Returns
    the new version. ``refits``: configurations already refitted in this call (config JSON -> Refit)."""
    if trial.ensemble:
        return _register_ensemble(trial, rank, run_id=run_id, space=space, data_name=data_name,
                                  tracking_uri=tracking_uri, registered_name=registered_name,
                                  bundle_dir=bundle_dir, device=device, refits=refits)
    config = trial.config
    fit = _refit_once(config, device, refits)
    metadata = {
        "space": space, "data": data_name, "data_spec": config.get("data"), "data_fingerprint": fit.fingerprint,
        "trial_id": trial.trial_id, "rank": rank, "refit": "whole training part, same seed and epochs",
        "cv_metrics": _numbers(trial.metrics),
        "test_metrics": fit.test_metrics,
    }

    def write(dest: Path, extra: dict[str, str]) -> Path:
        return save_bundle(dest, fit.trainer, data=fit.train, metadata=metadata, extra_files=extra, overwrite=True)

    return _log_bundle(write, f"{rank}-{trial.trial_id}", fit.test if fit.test is not None else fit.train,
                       fit.test_metrics, run_id=run_id, tracking_uri=tracking_uri, registered_name=registered_name,
                       bundle_dir=bundle_dir)


def _numbers(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _log_bundle(write: Any, keep_as: str, example_data: MultimodalDataset, test_metrics: dict[str, Any] | None, *,
                run_id: str, tracking_uri: str, registered_name: str, bundle_dir: str | Path | None) -> str:
    """Write the bundle (``write(dest, extra_files)``) with the pyfunc entry and code record among
    its files, keep a copy as ``bundle_dir/keep_as``, and log it into ``run_id`` as the pyfunc model
    registered under ``registered_name`` (test figures first). Returns the new version."""
    test_scalars = scalar_metrics(test_metrics) if test_metrics else {}
    with tempfile.TemporaryDirectory(prefix="fusetune-model-") as tmp:
        # bundle files too, so its manifest records the entry file and the code MLflow runs
        entry = {ENTRY_FILE: _PYFUNC_CODE, CODE_RECORD: json.dumps(code_record(), indent=1, sort_keys=True)}
        bundle_path = write(Path(tmp) / "bundle", entry)
        if bundle_dir is not None:  # the very bundle logged, byte for byte (not written again)
            copy_bundle(bundle_path, Path(bundle_dir) / keep_as, overwrite=True)
        bundle = load_bundle(bundle_path)
        example = pyfunc_input(bundle, _example_rows(example_data))
        code = Path(tmp) / ENTRY_FILE
        code.write_text(_PYFUNC_CODE)
        with _tracking(tracking_uri), fast_http(60, retries=3), mlflow.start_run(run_id=run_id):
            if test_scalars:
                mlflow.log_metrics({f"test_{k}": float(v) for k, v in test_scalars.items()})
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME, python_model=str(code), artifacts={"bundle": str(bundle_path)},
                signature=signature(bundle), input_example=example, pip_requirements=pip_requirements(bundle),
                code_paths=code_paths(),
                registered_model_name=registered_name,
            )
    return str(info.registered_model_version)


def _register_ensemble(trial: TopTrial, rank: int, *, run_id: str, space: str, data_name: str, tracking_uri: str,
                       registered_name: str, bundle_dir: str | Path | None, device: str | None,
                       refits: dict[str, Refit] | None) -> str:
    """:func:`register_model` of an ensemble: members fitted, one ensemble bundle, scored on the
    fixed test part when the data has one."""
    from trainables.ensemble import save_ensemble_bundle

    members, train, test, fingerprint = ensemble_members(trial, device=device, refits=refits)
    config = trial.config
    metadata: dict[str, Any] = {
        "space": space, "data": data_name, "data_spec": config.get("data"), "data_fingerprint": fingerprint,
        "trial_id": trial.trial_id, "rank": rank, "kind": ENSEMBLE_ID,
        "refit": (f"every member on the whole training part (networks: their trial's seed and epochs; reference "
                  f"models: seed {config.get('seed')})"),
        "cv_metrics": _numbers(trial.metrics),
        "members": [{**m, "weight": float(m["weight"])} for m in trial.ensemble or []],
        "test_metrics": None,
    }
    with tempfile.TemporaryDirectory(prefix="fusetune-ensemble-") as tmp:
        if test is not None:  # score the ensemble exactly as it will be served: from its own bundle
            scored = load_bundle(save_ensemble_bundle(Path(tmp) / "scored", members, data=train))
            metadata["test_metrics"] = classification_metrics(test.labels, scored.predict_dataset(test),
                                                              scored.class_names)

    def write(dest: Path, extra: dict[str, str]) -> Path:
        return save_ensemble_bundle(dest, members, data=train, metadata=metadata, extra_files=extra, overwrite=True)

    return _log_bundle(write, f"{rank}-{trial.trial_id}", test if test is not None else train,
                       metadata["test_metrics"], run_id=run_id, tracking_uri=tracking_uri,
                       registered_name=registered_name, bundle_dir=bundle_dir)


def tag_version(client: MlflowClient, name: str, version: str, trial: TopTrial, rank: int) -> None:
    """The model version's tags: its trial, rank, cross-validation figures (``cv_<metric>``), full
    config and the caller's (confirmed figures, fingerprint); an ensemble's also ``fusetune.candidate``
    = ``ensemble`` and its members and weights (:data:`ENSEMBLE_TAG`). Setting them again changes nothing."""
    tags = {VERSION_TRIAL_TAG: trial.trial_id, "fusetune.rank": str(rank),
            **{f"cv_{k}": f"{trial.metrics[k]:.4f}" for k in METRICS if k in trial.metrics},
            CONFIG_TAG: json.dumps(trial.config, sort_keys=True, default=str), **trial.tags}
    if trial.ensemble:
        tags.update({CANDIDATE_TAG: ENSEMBLE_ID, ENSEMBLE_TAG: json.dumps(trial.members_summary(), sort_keys=True)})
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


