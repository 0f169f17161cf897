"""An ensemble as one deployable bundle: the weighted average of the class probabilities of several
members, each a trained network or a reference model (logistic regression, random forest, gradient
boosting fitted on the flat design matrix of :mod:`trainables.tabular`).

Layout (one folder; one ``MANIFEST.json`` lists every file, member files by their relative path, so
:func:`~trainables.bundle.verify_bundle`, :func:`~trainables.bundle.sign_bundle` and
:func:`~trainables.bundle.copy_bundle` treat it like any bundle)::

    ensemble.json                  {"format": "fusetune-ensemble", "version": 1, "class_names": [...],
                                    "members": [{"name", "kind": "model" | "reference", "weight",
                                                 "folder", "confirmed": {metric: value}}, ...],
                                    "weights": [...]}   (weights in member order, summing to 1)
    inputs.json                    the common input schema (the keys of a single bundle's: class names,
                                   modalities, inputs, encoders, data, metadata; ``method`` = "ensemble"):
                                   every input some member reads
    members/<i>-<name>/            a network: model.safetensors, config.json, preprocessing.json, inputs.json
                                   (a single bundle's files), or a reference model:
                                   estimator.skops   the fitted sklearn estimator (``skops.io``, never pickle)
                                   reference.json    {"reference": "rf", "layout": TabularLayout JSON,
                                                      "classes": [class names]}
    MANIFEST.json, MANIFEST.sig    as for any bundle

:func:`~trainables.bundle.load_bundle` returns an :class:`EnsembleBundle` for such a folder. Its
``predict`` parses the input once (the common schema, exactly as :class:`~trainables.bundle.Bundle`
does), hands each network its own inputs through its own standardisation and model, each reference
model the design matrix of its :class:`~trainables.tabular.TabularLayout`, and returns
``sum_i weight_i * probs_i`` (float64 [N, C]).

A reference estimator is read by :func:`load_estimator`: the file must be a skops archive whose
every type is in :data:`REFERENCE_TYPES` (exactly what the three reference models are made of), and
skops loads it trusting those types only. skops alone would also trust its own defaults (most of
sklearn), so the archive's schema is audited first; a pickle, or a skops file naming any other
type, is refused before anything in it is built.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainables.bundle import (
    CORE_FILES,
    ENSEMBLE,
    FORMAT,
    INPUTS,
    VERSION,
    BundleError,
    BundleInputs,
    BundleParts,
    _building,
    _encoders_record,
    _jsonable,
    _write_extra,
    dataset_input_records,
    description_of,
    load_network,
    write_network,
)
from trainables.data.dataset import MultimodalDataset
from trainables.data.errors import DataError
from trainables.tabular import TabularLayout, predict_proba

ENSEMBLE_FORMAT = "fusetune-ensemble"
ENSEMBLE_VERSION = 1
MEMBERS = "members"
ESTIMATOR = "estimator.skops"
REFERENCE = "reference.json"
REFERENCE_FILES = (ESTIMATOR, REFERENCE)
KINDS = ("model", "reference")
WEIGHT_TOLERANCE = 1e-6

REFERENCE_TYPES: tuple[str, ...] = (
    # containers and scalars of the estimators' state
    "builtins.dict", "builtins.list", "builtins.tuple", "builtins.str", "builtins.int", "builtins.float",
    "builtins.bool", "builtins.NoneType",
    "numpy.ndarray", "numpy.float64", "numpy.int64", "numpy.uint64", "numpy.random._generator.Generator",
    # logreg: make_pipeline(StandardScaler(), LogisticRegressionCV(cv=StratifiedKFold) | LogisticRegression)
    "sklearn.pipeline.Pipeline", "sklearn.preprocessing._data.StandardScaler",
    "sklearn.linear_model._logistic.LogisticRegressionCV", "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.model_selection._split.StratifiedKFold",
    # rf
    "sklearn.ensemble._forest.RandomForestClassifier", "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._tree.Tree",
    # hgb (binary and multinomial losses)
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.preprocessing._label.LabelEncoder",
    "sklearn._loss.loss.HalfBinomialLoss", "sklearn._loss.loss.HalfMultinomialLoss",
    "sklearn._loss._loss.CyHalfBinomialLoss", "sklearn._loss._loss.CyHalfMultinomialLoss",
    "sklearn._loss.link.LogitLink", "sklearn._loss.link.MultinomialLogit", "sklearn._loss.link.Interval",
)
"""Every type (``module.qualname``) a reference estimator's skops file may name: what
``search.select.references``' logreg, rf and hgb are made of, and nothing else."""


# ----------------------------------------------------------------------------- what goes in
@dataclass(frozen=True)
class ReferenceModel:
    """A fitted reference estimator with the layout that builds its design matrix. Not refitted
    once written: its file is dumped once (:attr:`stored`) for every bundle it goes into."""

    estimator: Any
    layout: TabularLayout
    reference: str
    """The reference's name (``logreg``, ``rf``, ``hgb``: ``search.select.references.REFERENCES``)."""

    @functools.cached_property
    def stored(self) -> bytes:
        """The estimator as skops bytes, checked to load back through the allow-list (what the
        bundle could never load is refused here); computed on first use, then kept (a registration
        writes the same members into two bundles, and 300 trees take a while to dump and load)."""
        import tempfile

        import skops.io

        with tempfile.TemporaryDirectory(prefix="fusetune-reference-") as tmp:
            path = Path(tmp) / ESTIMATOR
            skops.io.dump(self.estimator, path)
            load_estimator(path, where=f"reference {self.reference}")
            return path.read_bytes()


@dataclass(frozen=True)
class Member:
    """One member of an ensemble to save: a fitted network (a ``FoldTrainer`` or
    :class:`~trainables.bundle.BundleParts`) or a :class:`ReferenceModel`, with its weight."""

    name: str
    model: Any
    weight: float
    confirmed: Mapping[str, float] = field(default_factory=dict)
    """The member's confirmed figures (metric -> value), for the model card."""

    @property
    def kind(self) -> str:
        return "reference" if isinstance(self.model, ReferenceModel) else "model"


def normalized_weights(weights: Sequence[float], where: str = "ensemble") -> list[float]:
    """``weights`` divided by their sum; each must be finite and non-negative, the sum positive."""
    values = [float(w) for w in weights]
    if not values or any(not math.isfinite(w) or w < 0 for w in values) or sum(values) <= 0:
        raise BundleError(where, f"weights must be finite, non-negative and not all zero, got {values}")
    total = sum(values)
    return [w / total for w in values]


def member_folder(index: int, name: str) -> str:
    """``members/<index>-<name>`` with the name reduced to characters safe in any file system."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "member"
    return f"{MEMBERS}/{index}-{safe}"


def save_ensemble_bundle(dest: str | Path, members: Sequence[Member], *, data: MultimodalDataset,
                         metadata: dict[str, Any] | None = None, extra_files: dict[str, str | bytes] | None = None,
                         overwrite: bool = False) -> Path:
    """Write the ensemble of ``members`` as one bundle folder at ``dest`` (atomically, like
    :func:`~trainables.bundle.save_bundle`).

    ``data``: the (encoded) training part every member was fitted on (feature names, the reference
    models' inputs, encoder identities). Weights are normalised to sum to 1. ``metadata``: JSON-ready
    facts kept in the common ``inputs.json``; ``extra_files``: top-level name -> content.
    """
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise BundleError(str(dest), "already exists (pass overwrite=True to replace it)")
    if not members:
        raise BundleError(str(dest), "an ensemble needs at least one member")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise BundleError(str(dest), f"member names must be unique, got {names}")
    weights = normalized_weights([m.weight for m in members], f"ensemble {dest}")
    classes = list(data.class_names)
    records, descriptions = [], []
    with _building(dest) as tmp:
        for index, (member, weight) in enumerate(zip(members, weights)):
            folder = member_folder(index, member.name)
            own = {"ensemble_member": member.name, "weight": weight, "confirmed": _jsonable(dict(member.confirmed))}
            if isinstance(member.model, ReferenceModel):
                descriptions.append(_write_reference(tmp / folder, member.model, data, own))
            else:
                parts = member.model if isinstance(member.model, BundleParts) else BundleParts.from_trainer(member.model, data)
                if list(parts.spec.class_names) != classes:
                    raise BundleError(f"member {member.name!r}", f"was trained on classes {list(parts.spec.class_names)}, "
                                      f"the data has {classes}")
                write_network(tmp / folder, parts, data=data, metadata=own)
                descriptions.append(description_of(parts, data, own))
            records.append({"name": member.name, "kind": member.kind, "weight": weight, "folder": folder,
                            "confirmed": _jsonable(dict(member.confirmed))})
        (tmp / ENSEMBLE).write_text(json.dumps({"format": ENSEMBLE_FORMAT, "version": ENSEMBLE_VERSION,
                                                "class_names": classes, "members": records, "weights": weights},
                                               indent=1))
        (tmp / INPUTS).write_text(json.dumps(common_description(descriptions, data, metadata), indent=1))
        _write_extra(tmp, extra_files)
    return dest


def _write_reference(folder: Path, ref: ReferenceModel, data: MultimodalDataset,
                     own: dict[str, Any]) -> dict[str, Any]:
    """A reference member's files; returns its description (the inputs its layout reads)."""
    folder.mkdir(parents=True)
    (folder / ESTIMATOR).write_bytes(ref.stored)  # loaded back through the allow-list when dumped
    record = {"reference": ref.reference, "layout": ref.layout.to_json(), "classes": list(data.class_names)}
    (folder / REFERENCE).write_text(json.dumps(record, indent=1))
    inputs = list(ref.layout.inputs)
    return {"class_names": list(data.class_names), "inputs": dataset_input_records(data, inputs),
            "encoders": _encoders_record({}, inputs, data), "metadata": own}


def common_description(descriptions: Sequence[dict[str, Any]], data: MultimodalDataset,
                       metadata: dict[str, Any] | None) -> dict[str, Any]:
    """The ensemble's ``inputs.json``: every input some member reads (in first-member order), the
    members' encoders, the data's name and ``metadata``. Members that record the same input or
    modality differently are refused."""
    import torch

    inputs: dict[str, dict[str, Any]] = {}
    encoders: dict[str, dict[str, Any]] = {}
    for d in descriptions:
        for i in d["inputs"]:
            if inputs.setdefault(i["name"], i) != i:
                raise BundleError("ensemble", f"its members read input {i['name']!r} differently "
                                  f"({inputs[i['name']]} vs {i}); members must share one encoded training part")
        for modality, enc in d["encoders"].items():
            known = encoders.setdefault(modality, {**enc, "representations": list(enc["representations"])})
            if {k: v for k, v in known.items() if k != "representations"} != {k: v for k, v in enc.items()
                                                                               if k != "representations"}:
                raise BundleError("ensemble", f"its members encode modality {modality!r} differently")
            known["representations"] += [r for r in enc["representations"] if r not in known["representations"]]
    records = list(inputs.values())
    return {
        "format": FORMAT, "version": VERSION, "method": "ensemble",
        "class_names": list(data.class_names),
        "modalities": list(dict.fromkeys(i["modality"] for i in records)),
        "inputs": records, "encoders": encoders,
        "data": {"name": data.name}, "metadata": _jsonable(metadata or {}),
        "torch": torch.__version__,
    }


# ----------------------------------------------------------------------------- what comes out
def _schema_types(node: Any, out: set[str]) -> set[str]:
    """Every ``module.class`` a skops schema names, at any depth."""
    if isinstance(node, dict):
        if "__class__" in node or "__module__" in node:
            out.add(f"{node.get('__module__')}.{node.get('__class__')}")
        for value in node.values():
            _schema_types(value, out)
    elif isinstance(node, list):
        for value in node:
            _schema_types(value, out)
    return out


def load_estimator(path: Path, *, where: str | None = None) -> Any:
    """The sklearn estimator in the skops file ``path``, if every type it names is in
    :data:`REFERENCE_TYPES`; :class:`~trainables.bundle.BundleError` (one line, naming the file)
    for anything else. Nothing in the file is built before the check."""
    import zipfile

    where = where or f"file {path}"
    try:
        with zipfile.ZipFile(path) as archive:
            schema = json.loads(archive.read("schema.json"))
    except (zipfile.BadZipFile, KeyError, OSError, json.JSONDecodeError, UnicodeDecodeError):
        raise BundleError(where, "is not a skops file (expected the zip archive skops.io.dump writes); "
                          "refusing to load it") from None
    foreign = sorted(_schema_types(schema, set()) - set(REFERENCE_TYPES))
    if foreign:
        raise BundleError(where, f"names {len(foreign)} type(s) outside the reference models' allow-list "
                          f"(first: {foreign[0]}); refusing to load it")
    import skops.io

    try:
        return skops.io.load(path, trusted=list(REFERENCE_TYPES))
    except Exception as exc:  # noqa: BLE001 - skops and sklearn raise many types on a damaged file
        raise BundleError(where, f"cannot be loaded by skops ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:200]})") from None


@dataclass
class LoadedReference:
    """A reference member, loaded: predicts from parsed inputs like ``Bundle.predict_dataset``."""

    model: ReferenceModel
    num_classes: int

    def predict_dataset(self, dataset: MultimodalDataset, batch_size: int = 256) -> np.ndarray:
        del batch_size  # one matrix
        try:
            return predict_proba(self.model.estimator, self.model.layout, dataset, self.num_classes)
        except DataError as e:
            raise BundleError(e.where, e.problem) from None


@dataclass
class EnsembleMember:
    """A loaded member: ``name``, ``kind`` (``model`` or ``reference``), ``weight``, its confirmed
    figures and the loaded predictor (a :class:`~trainables.bundle.Bundle` or a :class:`LoadedReference`)."""

    name: str
    kind: str
    weight: float
    folder: str
    confirmed: dict[str, Any]
    predictor: Any


class EnsembleBundle(BundleInputs):
    """A loaded ensemble bundle: the interface of :class:`~trainables.bundle.Bundle` (``predict``,
    ``class_names``, ``inputs``, ``to_dataset``, ...) plus ``members``."""

    def __init__(self, path: Path, description: dict[str, Any], members: list[EnsembleMember],
                 device: str = "cpu") -> None:
        super().__init__(path, description)
        self.members = members
        self.device = device

    @property
    def weights(self) -> np.ndarray:
        return np.array([m.weight for m in self.members], dtype=np.float64)

    def predict(self, data: Any, batch_size: int = 256) -> np.ndarray:
        """Class probabilities [N, C] float64: the weighted sum of the members' probabilities of
        ``data`` (a DataFrame or a dict of arrays, parsed once; see :mod:`trainables.bundle`)."""
        return self.predict_dataset(self.to_dataset(data), batch_size=batch_size)

    def predict_dataset(self, dataset: MultimodalDataset, batch_size: int = 256) -> np.ndarray:
        out = np.zeros((len(dataset), len(self.class_names)), dtype=np.float64)
        for member in self.members:
            out += member.weight * np.asarray(member.predictor.predict_dataset(dataset, batch_size=batch_size),
                                              dtype=np.float64)
        return out


def read_ensemble_json(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """``ensemble.json`` of the bundle ``path``, checked: its format, members of a known kind in
    folders whose files the manifest lists, weights that match the members' and sum to 1."""
    where = f"bundle {path}"
    try:
        record = json.loads((path / ENSEMBLE).read_text())
        members = record["members"]
        weights = [float(w) for w in record["weights"]]
        record["class_names"] = [str(c) for c in record["class_names"]]
        own = [float(m["weight"]) for m in members]
        ok = record.get("format") == ENSEMBLE_FORMAT and isinstance(members, list) and len(members) > 0
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise BundleError(where, f"{ENSEMBLE} does not describe a {ENSEMBLE_FORMAT} (expected format, class_names, "
                          "members with weights, weights)")
    if record.get("version") != ENSEMBLE_VERSION:
        raise BundleError(where, f"{ENSEMBLE} version {record.get('version')} is not supported "
                          f"(this fusetune reads {ENSEMBLE_VERSION})")
    if weights != own:
        raise BundleError(where, f"{ENSEMBLE}: the weights vector {weights} does not match the members' weights {own}")
    if any(not math.isfinite(w) or w < 0 for w in weights) or abs(sum(weights) - 1.0) > WEIGHT_TOLERANCE:
        raise BundleError(where, f"{ENSEMBLE}: weights must be non-negative and sum to 1, got {weights}")
    files = manifest["files"]
    for m in members:
        kind, folder = m.get("kind"), m.get("folder")
        if kind not in KINDS:
            raise BundleError(where, f"{ENSEMBLE}: member {m.get('name')!r} has kind {kind!r}, expected one of {KINDS}")
        sub = folder[len(MEMBERS) + 1:] if isinstance(folder, str) and folder.startswith(f"{MEMBERS}/") else ""
        if sub in ("", ".", "..") or "/" in sub or "\\" in sub:
            raise BundleError(where, f"{ENSEMBLE}: member {m.get('name')!r} has folder {folder!r}, expected "
                              f"{MEMBERS}/<name>")
        for name in CORE_FILES if kind == "model" else REFERENCE_FILES:
            if f"{folder}/{name}" not in files:
                raise BundleError(where, f"{folder}/{name} is not listed in its MANIFEST.json")
    return record


def _load_verified(path: Path, manifest: dict[str, Any], *, device: str = "cpu") -> EnsembleBundle:
    """The ensemble bundle at ``path`` whose ``manifest`` :func:`~trainables.bundle.load_bundle` has verified."""
    where = f"bundle {path}"
    record = read_ensemble_json(path, manifest)
    try:
        description = json.loads((path / INPUTS).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BundleError(where, f"{INPUTS} is not valid JSON") from None
    classes = list(record["class_names"])
    if list(description.get("class_names", [])) != classes:
        raise BundleError(where, f"{INPUTS} and {ENSEMBLE} name different classes")
    known = {i["name"] for i in description["inputs"]}
    members = []
    for m in record["members"]:
        folder = path / m["folder"]
        mwhere = f"{where} member {m['folder']}"
        if m["kind"] == "model":
            predictor: Any = load_network(folder, device=device, where=mwhere)
            own, needs = predictor.class_names, [i["name"] for i in predictor.inputs]
        else:
            ref = _load_reference(folder, mwhere)
            predictor = LoadedReference(ref, len(classes))
            own, needs = _reference_classes(folder, mwhere), list(ref.layout.inputs)
        if own != classes:
            raise BundleError(mwhere, f"predicts classes {own}, the ensemble's are {classes}")
        if not set(needs) <= known:
            raise BundleError(mwhere, f"reads inputs {sorted(set(needs) - known)} that {INPUTS} does not describe")
        members.append(EnsembleMember(str(m["name"]), m["kind"], float(m["weight"]), m["folder"],
                                      dict(m.get("confirmed") or {}), predictor))
    return EnsembleBundle(path, description, members, device)


def _reference_record(folder: Path, where: str) -> dict[str, Any]:
    try:
        record = json.loads((folder / REFERENCE).read_text())
        if isinstance(record, dict) and isinstance(record.get("reference"), str) and isinstance(record.get("classes"), list):
            return record
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        pass
    raise BundleError(f"{where}/{REFERENCE}", "expected {\"reference\": name, \"layout\": {...}, \"classes\": [...]}")


def _reference_classes(folder: Path, where: str) -> list[str]:
    return [str(c) for c in _reference_record(folder, where)["classes"]]


def _load_reference(folder: Path, where: str) -> ReferenceModel:
    """A reference member: ``reference.json`` read, ``estimator.skops`` loaded through the allow-list,
    the two checked against each other (the estimator reads the layout's width, predicts known classes)."""
    record = _reference_record(folder, where)
    try:
        layout = TabularLayout.from_json(record.get("layout"))
    except DataError as e:
        raise BundleError(f"{where}/{REFERENCE}", e.problem) from None
    estimator = load_estimator(folder / ESTIMATOR, where=f"{where}/{ESTIMATOR}")
    width = getattr(estimator, "n_features_in_", None)
    classes = np.asarray(getattr(estimator, "classes_", []))
    if width != layout.width or not hasattr(estimator, "predict_proba"):
        raise BundleError(f"{where}/{ESTIMATOR}", f"is not a fitted classifier of the layout's {layout.width} columns")
    if classes.size == 0 or classes.dtype.kind not in "iu" or classes.min() < 0 or classes.max() >= len(record["classes"]):
        raise BundleError(f"{where}/{ESTIMATOR}", f"predicts labels {classes.tolist()}, expected class indices "
                          f"below {len(record['classes'])}")
    return ReferenceModel(estimator, layout, record["reference"])
