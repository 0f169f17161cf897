"""The deployable model package ("bundle"): a folder that a trained model can be rebuilt from and
that predicts with nothing but the folder and an installed fusetune.

Layout (every file listed with its SHA-256 and size in ``MANIFEST.json``, verified on load)::

    model.safetensors    the network's weights (safetensors: no pickle is ever loaded)
    config.json          the full trial config the model was built from (engine + method defaults filled in),
                         with ``config_version`` (trainables.config.CONFIG_VERSION; absent = 1)
    preprocessing.json   the Standardizer statistics (mean/std per vector input, fitted on the training part)
    inputs.json          method, class names, logical modalities, every input (name, kind, dim, tokens,
                         feature names), the encoders (ids, identities, representations, text pooling,
                         image processor), data name/fingerprint
    MANIFEST.json        {"format": "fusetune-bundle", "version": 1, "files": {name: {"sha256", "bytes"}}}
                         (a name is a relative POSIX path: an ensemble's member files sit in subfolders)
    MANIFEST.sig         optional: the producer's Ed25519 signature of MANIFEST.json (:func:`sign_bundle`,
                         checked by ``load_bundle(path, public_key=...)``; see :mod:`trainables.signing`)
    (extra files given to :func:`save_bundle`, e.g. a model card, are listed in the manifest too)

An ensemble (:mod:`trainables.ensemble`) is the same kind of folder: ``ensemble.json`` and the common
``inputs.json`` at the top, each member's files under ``members/<i>-<name>/``, one ``MANIFEST.json``
covering all of them; :func:`load_bundle` returns an :class:`~trainables.ensemble.EnsembleBundle` for it.

The manifest proves the files are intact; only the signature proves who wrote them (anyone can
edit a file and reseal the manifest). Inputs must be finite (NaN marks a missing modality); a
sample with every modality missing is refused rather than given a near-uniform prediction.

Input formats of :meth:`Bundle.predict` (both return class probabilities, float32 [N, C], columns
in ``class_names`` order):

- a pandas DataFrame: vector input ``x`` of width d is the d columns ``x/<feature>`` (feature names
  from the training data, ``0..d-1`` for encoded features); a row whose columns of an input are all
  NaN (or whose columns are absent altogether) lacks that modality. A raw text modality may instead
  be one string column named after it (``report``; None/NaN/"" = missing) when the model was trained
  on encoded text: the bundle runs the recorded text encoder (it must be available locally).
  Token inputs cannot be columns: use a dict.
- a dict of arrays: ``{input_name: array}`` with [N, d] for vector inputs, [N, L, d] for token
  inputs, optionally ``"mask": {modality: bool [N]}`` (logical or input name) and
  ``"token_mask": {input: bool [N, L]}``; flat keys ``"mask/<modality>"`` and
  ``"token_mask/<input>"`` are accepted too. Without an explicit mask a sample whose values of an
  input are all NaN lacks that modality, and without an explicit token mask a token whose features
  are all NaN is padding. Raw modalities (``{"report": [str | None], "image": float [N, C, H, W]}``)
  are encoded with the recorded encoders.

Predictions go through exactly the path of :meth:`trainables.engine.FoldTrainer.predict_proba`
(same inputs in the same order, the training part's standardisation, ``Backbone.predict_proba``), so
a bundle reproduces the trainer's probabilities.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainables.backbone import Backbone, DataSpec, InputSpec, TensorData, logical_name
from trainables.config import CONFIG_VERSION, VERSION_KEY, upgrade
from trainables.data.dataset import Modality, MultimodalDataset
from trainables.data.errors import DataError
from trainables.data.preprocess import Standardizer
from trainables.registry import get_method

FORMAT = "fusetune-bundle"
VERSION = 1
MANIFEST = "MANIFEST.json"
SIGNATURE = "MANIFEST.sig"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
PREPROCESSING = "preprocessing.json"
INPUTS = "inputs.json"
ENSEMBLE = "ensemble.json"
"""The file that makes a bundle an ensemble (:mod:`trainables.ensemble`)."""
CORE_FILES = (WEIGHTS, CONFIG, PREPROCESSING, INPUTS)
ENSEMBLE_CORE_FILES = (ENSEMBLE, INPUTS)
RESERVED = {MANIFEST, SIGNATURE, ENSEMBLE, *CORE_FILES}
"""Top-level names an extra file may not take."""
RAW_KINDS = {"sentence": "text", "cls": "text", "tokens": "text", "attributes": "text",
             "pooled": "image", "map": "image", "patches": "image"}
"""Encoder representation -> the raw modality kind it comes from (see :mod:`trainables.encoders`)."""


class BundleError(DataError):
    """A bundle that cannot be used (missing, tampered, truncated, wrong input); one line."""


# ----------------------------------------------------------------------------- what goes in
@dataclass
class BundleParts:
    """What a bundle is made of; :meth:`from_trainer` takes them from a fitted ``FoldTrainer``."""

    method: str
    config: dict[str, Any]
    model: Backbone
    standardizer: Standardizer
    spec: DataSpec
    input_names: list[str]                         # in the order the trainer feeds them
    token_masked: dict[str, bool] = field(default_factory=dict)  # token input -> had a token_mask

    @classmethod
    def from_trainer(cls, trainer: Any, data: MultimodalDataset | None = None) -> BundleParts:
        masked = {}
        if data is not None:
            masked = {k: data.modalities[k].token_mask is not None for k in trainer.modality_names
                      if k in data.modalities and data.modalities[k].kind == "tokens"}
        return cls(trainer.method, dict(trainer.config), trainer.model, trainer.standardizer, trainer.spec,
                   list(trainer.modality_names), masked)


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return str(v)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _encoders_record(config: dict[str, Any], input_names: list[str], data: MultimodalDataset | None) -> dict[str, Any]:
    """Per raw modality: its kind, the representations the model reads, the encoder id (config
    ``text_encoder``/``image_encoder``, else the data's encoding records), the encoder's identity
    (checkpoint SHA-256, or the random-init config) so a bundle can refuse a different encoder, and
    how its outputs were made: a text encoder's sentence ``pooling`` (for ``sentence`` and
    ``attributes``), an image checkpoint's ``processor`` (class and settings; None = images as given)."""
    records = (data.meta.get("encoders", {}) if data is not None else {}) or {}
    raw: dict[str, dict[str, Any]] = {}
    for name in input_names:
        modality, _, rep = name.partition(".")
        if rep not in RAW_KINDS:
            continue
        kind = RAW_KINDS[rep]
        entry = raw.setdefault(modality, {"kind": kind, "representations": [], "encoder": config.get(f"{kind}_encoder")})
        entry["representations"].append(rep)
        if not entry["encoder"] and name in records:
            entry["encoder"] = (records[name].get("encoder") or {}).get("id")
    for entry in raw.values():
        entry["identity"] = _encoder_identity(entry["kind"], entry["encoder"])
        entry.update(_encoding_record(entry["kind"], entry["encoder"], entry["representations"]))
    return raw


def _encoding_record(kind: str, encoder_id: str | None, representations: list[str]) -> dict[str, Any]:
    """``{"pooling": ...}`` for text read through the sentence pooling, ``{"processor": ...}`` for images."""
    if not encoder_id:
        return {}
    try:
        from trainables.encoders import IMAGE_ENCODERS, TEXT_ENCODERS, resolve
        from trainables.encoders.encode import POOLED_TEXT
        from trainables.encoders.image import processor_identity

        if kind == "text":
            if not any(r in POOLED_TEXT for r in representations):
                return {}
            return {"pooling": resolve(encoder_id, TEXT_ENCODERS, "text encoder").sentence_pooling().identity()}
        return {"processor": processor_identity(resolve(encoder_id, IMAGE_ENCODERS, "image encoder"))}
    except Exception:  # noqa: BLE001 - not resolvable here: the bundle still works on encoded inputs
        return {}


def _encoder_identity(kind: str, encoder_id: str | None) -> dict[str, Any] | None:
    if not encoder_id:
        return None
    try:
        from trainables.encoders import IMAGE_ENCODERS, TEXT_ENCODERS, resolve

        ident = resolve(encoder_id, TEXT_ENCODERS if kind == "text" else IMAGE_ENCODERS, f"{kind} encoder").identity()
    except Exception:  # noqa: BLE001 - not resolvable here: the bundle still works on encoded inputs
        return None
    return {k: v for k, v in ident.items() if k not in _VERSION_KEYS}


_VERSION_KEYS = ("torch", "transformers")


def save_bundle(dest: str | Path, trainer_or_parts: Any, *, data: MultimodalDataset | None = None,
                metadata: dict[str, Any] | None = None, extra_files: dict[str, str | bytes] | None = None,
                overwrite: bool = False) -> Path:
    """Write a bundle folder at ``dest`` (atomically: built aside, then renamed into place).

    ``trainer_or_parts``: a fitted ``FoldTrainer`` or :class:`BundleParts`. ``data``: the (encoded)
    training data the trainer was fitted on, for feature names, token-mask presence and encoder
    identities. ``metadata``: JSON-ready facts kept in ``inputs.json`` (data fingerprint, metrics,
    code version, the command that reproduces the training). ``extra_files``: name -> content.
    """
    parts = trainer_or_parts if isinstance(trainer_or_parts, BundleParts) else BundleParts.from_trainer(trainer_or_parts, data)
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise BundleError(str(dest), "already exists (pass overwrite=True to replace it)")
    with _building(dest) as tmp:
        write_network(tmp, parts, data=data, metadata=metadata)
        _write_extra(tmp, extra_files)
    return dest


def write_network(folder: Path, parts: BundleParts, *, data: MultimodalDataset | None = None,
                  metadata: dict[str, Any] | None = None) -> None:
    """The four files of a network (:data:`CORE_FILES`) into ``folder``: a bundle's top level or an
    ensemble member's subfolder."""
    from safetensors.torch import save_model

    description = description_of(parts, data, metadata)
    folder.mkdir(parents=True, exist_ok=True)
    save_model(parts.model, str(folder / WEIGHTS))  # tensors on a GPU are copied to the CPU as they are written
    config = {**_jsonable(parts.config), VERSION_KEY: CONFIG_VERSION}
    (folder / CONFIG).write_text(json.dumps(config, indent=1, sort_keys=True))
    (folder / PREPROCESSING).write_text(json.dumps(parts.standardizer.state_dict()))
    (folder / INPUTS).write_text(json.dumps(description, indent=1))


def description_of(parts: BundleParts, data: MultimodalDataset | None = None,
                   metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """``inputs.json``: the method, the classes, every input in feeding order, the encoders, the
    training data's name and the caller's ``metadata``."""
    return {
        "format": FORMAT, "version": VERSION,
        "method": parts.method,
        "class_names": list(parts.spec.class_names),
        "modalities": list(dict.fromkeys(logical_name(n) for n in parts.input_names)),
        "inputs": input_records(parts, data),
        "encoders": _encoders_record(parts.config, parts.input_names, data),
        "data": {"name": data.name if data is not None else None},
        "metadata": _jsonable(metadata or {}),
        "torch": torch.__version__,
    }


def input_records(parts: BundleParts, data: MultimodalDataset | None = None) -> list[dict[str, Any]]:
    """One record per input, in the order the trainer feeds them: name, logical modality, kind,
    width; a token input's length and whether it had a token mask; a vector input's feature names
    (the training data's when they are unique and complete, else ``0..d-1``)."""
    return _records(parts.spec, parts.input_names, parts.token_masked, data)


def dataset_input_records(data: MultimodalDataset, input_names: list[str]) -> list[dict[str, Any]]:
    """:func:`input_records` of the (encoded) inputs ``input_names`` of ``data``, for a model that is
    not a network (an ensemble's reference member reads them through its tabular layout)."""
    sub = data.with_modalities({n: data.modalities[n] for n in input_names})
    masked = {n: sub.modalities[n].token_mask is not None for n in input_names if sub.modalities[n].kind == "tokens"}
    return _records(DataSpec.from_dataset(sub), list(input_names), masked, data)


def _records(spec: DataSpec, input_names: list[str], token_masked: dict[str, bool],
             data: MultimodalDataset | None) -> list[dict[str, Any]]:
    spec_inputs = {i.name: i for i in spec.inputs}
    records = []
    for name in input_names:
        i = spec_inputs[name]
        entry: dict[str, Any] = {"name": name, "modality": logical_name(name), "kind": i.kind, "dim": i.dim}
        if i.kind == "tokens":
            entry["length"] = i.length
            entry["token_mask"] = bool(token_masked.get(name, True))
        else:
            feats = None
            if data is not None and name in data.modalities and data.modalities[name].feature_names:
                feats = [str(f) for f in data.modalities[name].feature_names]
            if feats is None or len(feats) != i.dim or len(set(feats)) != len(feats):
                feats = [str(k) for k in range(i.dim)]
            entry["features"] = feats
        records.append(entry)
    return records


@contextlib.contextmanager
def _building(dest: Path) -> Iterator[Path]:
    """Build a bundle in a temporary sibling folder; on success write its manifest and rename it to
    ``dest`` (replacing it), so a reader never sees half a bundle; on failure remove it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        yield tmp
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*")
                       if p.is_file() and p.relative_to(tmp).as_posix() != MANIFEST)
        manifest = {"format": FORMAT, "version": VERSION,
                    "files": {f: {"sha256": _sha256(tmp / f), "bytes": (tmp / f).stat().st_size} for f in files}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_extra(folder: Path, extra_files: dict[str, str | bytes] | None) -> None:
    for name, content in (extra_files or {}).items():
        if name in RESERVED or Path(name).name != name:
            raise BundleError(name, "extra bundle files need a plain file name other than the bundle's own")
        (folder / name).write_bytes(content.encode() if isinstance(content, str) else content)


# ----------------------------------------------------------------------------- what comes out
def verify_bundle(path: str | Path, *, public_key: Any = None) -> dict[str, Any]:
    """Check ``MANIFEST.json`` against the files and, with ``public_key`` (an Ed25519 public key,
    PEM bytes or a PEM file), the manifest's signature; returns the manifest or raises
    :class:`BundleError`."""
    path = Path(path)
    where = f"bundle {path}"
    if not path.is_dir():
        raise BundleError(where, "not found (expected a bundle folder)")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise BundleError(where, f"has no {MANIFEST}; not a fusetune bundle") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BundleError(where, f"{MANIFEST} is not valid JSON (truncated or edited)") from None
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise BundleError(where, f"{MANIFEST} does not describe a {FORMAT}")
    if manifest.get("version") != VERSION:
        raise BundleError(where, f"format version {manifest.get('version')} is not supported (this fusetune reads {VERSION})")
    for core in ENSEMBLE_CORE_FILES if is_ensemble(manifest) else CORE_FILES:
        if core not in manifest["files"]:
            raise BundleError(where, f"{MANIFEST} does not list {core}")
    root = path.resolve()
    for name, entry in manifest["files"].items():
        _check_manifest_path(name, where)
        f = path / name
        if not f.resolve().is_relative_to(root):
            raise BundleError(where, f"file {name} listed in {MANIFEST} is a link to outside the bundle")
        if not f.is_file() or not isinstance(entry, dict):
            raise BundleError(where, f"file {name} listed in {MANIFEST} is missing")
        size = f.stat().st_size
        if size != entry.get("bytes"):
            raise BundleError(where, f"file {name} has {size} bytes, the manifest says {entry.get('bytes')} "
                                     "(truncated or altered)")
        if _sha256(f) != entry.get("sha256"):
            raise BundleError(where, f"file {name} does not match its SHA-256 in {MANIFEST} (tampered or corrupted)")
    if public_key is not None:
        _check_signature(path, public_key)
    return manifest


def is_ensemble(manifest: dict[str, Any]) -> bool:
    """Whether a (verified) manifest describes an ensemble: it lists :data:`ENSEMBLE`."""
    return ENSEMBLE in manifest.get("files", {})


def _check_manifest_path(name: Any, where: str) -> None:
    """A manifest name is a relative POSIX path inside the bundle: no absolute path, no ``..``, no
    empty or ``.`` part, no backslash (a Windows separator would name another file there)."""
    parts = name.split("/") if isinstance(name, str) else []
    if (not parts or name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts)
            or ":" in parts[0]):
        raise BundleError(where, f"{MANIFEST} lists {name!r}, which is not a relative path inside the bundle")


def _check_signature(path: Path, public_key: Any) -> None:
    from trainables import signing

    where = f"bundle {path}"
    try:
        record = json.loads((path / SIGNATURE).read_text())
    except FileNotFoundError:
        raise BundleError(where, f"is not signed (no {SIGNATURE}), so its origin cannot be checked") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BundleError(where, f"{SIGNATURE} is not valid JSON") from None
    try:
        signing.verify((path / MANIFEST).read_bytes(), record, public_key, where)
    except signing.SigningError as exc:
        raise BundleError(exc.where, exc.problem) from None


def _read_json(path: Path, name: str) -> dict[str, Any]:
    """The bundle's JSON file ``name`` as an object; a one-line :class:`BundleError` naming it when it
    is not UTF-8 JSON or not an object (edited, then the manifest re-hashed to match)."""
    try:
        value = json.loads((path / name).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
        raise BundleError(f"bundle {path}", f"{name} is not valid JSON ({reason}); edited after export?") from None
    if not isinstance(value, dict):
        raise BundleError(f"bundle {path}", f"{name} is not a JSON object (found a {type(value).__name__})")
    return value


def sign_bundle(path: str | Path, private_key: Any) -> Path:
    """Sign the (verified) bundle's manifest with an Ed25519 private key or the path of its PEM
    file: writes ``MANIFEST.sig``."""
    from trainables import signing

    path = Path(path)
    verify_bundle(path)
    key = signing.load_private_key(private_key) if isinstance(private_key, (str, Path)) else private_key
    record = signing.sign((path / MANIFEST).read_bytes(), key)
    (path / SIGNATURE).write_text(json.dumps(record, indent=1))
    return path / SIGNATURE


def copy_bundle(src: str | Path, dest: str | Path, *, extra_files: dict[str, str | bytes] | None = None,
                overwrite: bool = False) -> Path:
    """A verified copy of the bundle ``src`` at ``dest`` with ``extra_files`` (name -> content, e.g. a
    model card) added or replaced and the manifest rewritten; the bundle's own files are copied
    byte for byte (atomically: built aside, then renamed into place)."""
    manifest = verify_bundle(src)
    src, dest = Path(src), Path(dest)
    if dest.exists() and not overwrite:
        raise BundleError(str(dest), "already exists (pass overwrite=True to replace it)")
    with _building(dest) as tmp:
        for name in manifest["files"]:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / name, tmp / name)
        _write_extra(tmp, extra_files)
    return dest


def load_bundle(path: str | Path, *, device: str = "cpu", public_key: Any = None) -> Bundle:
    """Verify the manifest (and with ``public_key`` the producer's signature), rebuild the model
    from ``inputs.json`` + ``config.json`` and load its weights. An ensemble's folder gives an
    :class:`~trainables.ensemble.EnsembleBundle` (same interface), its members loaded the same way."""
    path = Path(path)
    manifest = verify_bundle(path, public_key=public_key)
    if is_ensemble(manifest):
        from trainables.ensemble import _load_verified

        return _load_verified(path, manifest, device=device)  # type: ignore[return-value]  # same interface
    return load_network(path, device=device)


def load_network(folder: Path, *, device: str = "cpu", where: str | None = None) -> Bundle:
    """The network in ``folder`` (:data:`CORE_FILES`), already verified by the caller's manifest:
    a bundle's top level or an ensemble member's subfolder."""
    folder = Path(folder)
    where = where or f"bundle {folder}"
    try:
        description = _read_json(folder, INPUTS)
        config = upgrade(_read_json(folder, CONFIG))  # an older config version: old keys renamed
        standardizer = Standardizer.from_state_dict(_read_json(folder, PREPROCESSING))
    except OSError:
        raise BundleError(where, f"lacks a readable {INPUTS}, {CONFIG} or {PREPROCESSING}") from None
    spec = DataSpec(
        tuple(InputSpec(i["name"], i["kind"], int(i["dim"]), i.get("length")) for i in description["inputs"]),
        len(description["class_names"]), tuple(description["class_names"]),
    )
    try:
        cls = get_method(description["method"]).load()
    except KeyError as e:
        raise BundleError(where, f"{e.args[0]} (installed fusetune lacks this method)") from None
    with torch.random.fork_rng(devices=[]):  # building draws initial weights; leave the caller's RNG alone
        model = cls.from_config(spec, config)
    from safetensors.torch import load_model

    try:
        load_model(model, str(folder / WEIGHTS), strict=True)
    except (RuntimeError, KeyError, ValueError) as e:
        raise BundleError(where, f"weights do not fit the {description['method']} model: "
                                 f"{' '.join(str(e).split())[:300]}") from None
    model.to(device).eval()
    return Bundle(folder, description, config, model, standardizer, device)


class BundleInputs:
    """What a loaded bundle takes as input (``inputs.json``): classes, modalities, inputs, encoders,
    and the parsing of a DataFrame or a dict of arrays into a :class:`MultimodalDataset` (module
    docstring). :class:`Bundle` and :class:`~trainables.ensemble.EnsembleBundle` predict from it."""

    def __init__(self, path: Path, description: dict[str, Any]) -> None:
        self.path = Path(path)
        self.description = description
        self.method: str = description["method"]
        self.class_names: list[str] = list(description["class_names"])
        self.modalities: list[str] = list(description["modalities"])
        self.inputs: list[dict[str, Any]] = list(description["inputs"])
        self.encoders: dict[str, dict[str, Any]] = dict(description.get("encoders", {}))
        self.metadata: dict[str, Any] = dict(description.get("metadata", {}))

    # ------------------------------------------------------------------ schema
    def input_columns(self) -> list[str]:
        """DataFrame columns of the vector inputs, ``<input>/<feature>``."""
        return [f"{i['name']}/{f}" for i in self.inputs if i["kind"] == "vector" for f in i["features"]]

    @property
    def has_token_inputs(self) -> bool:
        return any(i["kind"] == "tokens" for i in self.inputs)

    def to_dataset(self, data: Any) -> MultimodalDataset:
        """The model's inputs as a :class:`MultimodalDataset` (unscaled; encoders run for raw inputs)."""
        import pandas as pd

        if isinstance(data, pd.DataFrame):
            arrays, masks, token_masks, raw = self._from_frame(data)
        elif isinstance(data, Mapping):
            arrays, masks, token_masks, raw = self._from_dict(data)
        else:
            raise BundleError("predict", f"expected a pandas DataFrame or a dict of arrays, got {type(data).__name__}")
        return self._assemble(arrays, masks, token_masks, raw)

    def _raw_for(self, input_name: str) -> str | None:
        modality, _, rep = input_name.partition(".")
        return modality if modality in self.encoders and rep in self.encoders[modality]["representations"] else None

    def _from_frame(self, frame) -> tuple[dict, dict, dict, dict]:
        arrays: dict[str, np.ndarray] = {}
        raw: dict[str, np.ndarray] = {}
        columns = set(map(str, frame.columns))
        for i in self.inputs:
            name = i["name"]
            if i["kind"] == "tokens":
                source = self._raw_for(name)
                if source is not None and source in columns:
                    continue  # encoded from the raw column below
                raise BundleError(f"input {name!r}", "is a token input; pass a dict of arrays, not a DataFrame")
            cols = [f"{name}/{f}" for f in i["features"]]
            present = [c for c in cols if c in columns]
            if len(present) == len(cols):
                try:
                    arrays[name] = frame[cols].to_numpy(dtype=np.float64, na_value=np.nan)
                except (TypeError, ValueError):
                    bad = next(c for c in cols if not _numeric(frame[c]))
                    raise BundleError(f"column {bad!r}", "must be numeric (NaN for missing)") from None
            elif present:
                absent = [c for c in cols if c not in columns]
                raise BundleError(f"input {name!r}", f"{len(absent)} of its {len(cols)} columns are absent "
                                  f"(first: {absent[0]!r}); give all of them, or none for a missing modality")
        for modality, enc in self.encoders.items():
            if modality in columns and enc["kind"] == "text":
                raw[modality] = frame[modality].to_numpy(dtype=object)
        if not arrays and not raw:
            example = self.input_columns()[:1] or list(self.encoders)[:1]
            raise BundleError("predict", f"none of the model's input columns are in the frame (e.g. {example[0]!r})")
        return arrays, {}, {}, raw

    def _from_dict(self, data: Mapping) -> tuple[dict, dict, dict, dict]:
        masks = {str(k): v for k, v in dict(data.get("mask", {}) or {}).items()}
        token_masks = {str(k): v for k, v in dict(data.get("token_mask", {}) or {}).items()}
        arrays: dict[str, np.ndarray] = {}
        raw: dict[str, np.ndarray] = {}
        known = {i["name"] for i in self.inputs}
        for key, value in data.items():
            key = str(key)
            if key in ("mask", "token_mask"):
                continue
            if key.startswith("mask/"):
                masks[key[5:]] = value
            elif key.startswith("token_mask/"):
                token_masks[key[11:]] = value
            elif key in known:
                arrays[key] = value
            elif key in self.encoders:
                raw[key] = np.asarray(value, dtype=object if self.encoders[key]["kind"] == "text" else np.float64)
            else:
                raise BundleError(f"input {key!r}", "is not an input of this model; "
                                                    f"inputs: {', '.join(sorted(known | set(self.encoders)))}")
        if not arrays and not raw:
            raise BundleError("predict", "the dict holds no model input")
        return arrays, masks, token_masks, raw

    def _assemble(self, arrays: dict, masks: dict, token_masks: dict, raw: dict) -> MultimodalDataset:
        sizes = {len(np.asarray(v)) for v in (*arrays.values(), *raw.values())}
        if len(sizes) != 1:
            raise BundleError("predict", f"inputs have different numbers of samples: {sorted(sizes)}")
        n = sizes.pop()
        if n == 0:
            raise BundleError("predict", "no samples to predict (an empty frame or arrays of length 0)")
        encoded = self._encode_raw(raw, n) if raw else {}
        modalities: dict[str, Modality] = {}
        logical_masks: dict[str, np.ndarray] = {}
        for i in self.inputs:
            name, kind, dim = i["name"], i["kind"], int(i["dim"])
            shape = (n, dim) if kind == "vector" else (n, int(i["length"]), dim)
            if name in arrays:
                given = np.asarray(arrays[name], dtype=np.float64)  # as given: 1e300 is not yet inf
                if given.shape != shape:
                    want = "[N, d]" if kind == "vector" else "[N, L, d]"
                    raise BundleError(f"input {name!r}", f"expected {want} = {list(shape)[1:]} per sample, "
                                                         f"got shape {list(given.shape)}")
                _refuse_non_finite(name, given, n)
                x = given.astype(np.float32)
                nan = np.isnan(x)
                row_nan = nan.reshape(n, -1).all(axis=1)
                tmask = None
                if kind == "tokens" and i.get("token_mask", True):
                    tmask = token_masks.get(name)
                    tmask = ~nan.all(axis=2) if tmask is None else self._bool(tmask, (n, shape[1]), f"token_mask of {name!r}")
                explicit = masks.get(name, masks.get(logical_name(name)))
                mask = ~row_nan if explicit is None else self._bool(explicit, (n,), f"mask of {name!r}")
                partial = nan.reshape(n, -1).any(axis=1) & mask
                if kind == "tokens":  # NaN marks padding tokens; real tokens must be complete
                    real = tmask if tmask is not None else np.ones(shape[:2], bool)
                    partial = (nan.any(axis=2) & real).any(axis=1) & mask
                if partial.any():
                    raise BundleError(f"input {name!r}", f"sample {int(np.flatnonzero(partial)[0])} has NaN in some of its "
                                      "values; a modality is given whole or marked missing (all NaN)")
                x = np.where(nan, 0.0, x).astype(np.float32)
                x[~mask] = 0.0
                m = Modality(name, kind, x, mask, token_mask=None if tmask is None else tmask & mask[:, None])
            elif name in encoded:
                m = encoded[name]
            else:  # not given at all: missing for every sample
                m = Modality(name, kind, np.zeros(shape, np.float32), np.zeros(n, bool),
                             token_mask=np.zeros(shape[:2], bool) if kind == "tokens" and i.get("token_mask", True) else None)
            lm = logical_name(name)
            if lm in logical_masks and not np.array_equal(logical_masks[lm], m.mask):
                raise BundleError(f"modality {lm!r}", "its inputs disagree on which samples have it")
            logical_masks[lm] = m.mask
            modalities[name] = m
        _refuse_empty_samples(logical_masks, n)
        return MultimodalDataset("predict", np.arange(n).astype(str), np.zeros(n, np.int64), list(self.class_names), modalities)

    @staticmethod
    def _bool(value: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
        arr = np.asarray(value)
        if arr.shape != shape:
            raise BundleError(what, f"expected shape {list(shape)}, got {list(arr.shape)}")
        return arr.astype(bool)

    def _encode_raw(self, raw: dict[str, np.ndarray], n: int) -> dict[str, Modality]:
        """Run the recorded encoders on raw text/image inputs (no feature cache)."""
        from trainables.encoders import encode_dataset

        mods: dict[str, Modality] = {}
        for name, values in raw.items():
            enc = self.encoders[name]
            if not enc.get("encoder"):
                raise BundleError(f"input {name!r}", "the bundle does not record which encoder produced it; pass encoded inputs")
            if enc.get("identity") and _encoder_identity(enc["kind"], enc["encoder"]) != enc["identity"]:
                raise BundleError(f"{enc['kind']} encoder {enc['encoder']!r}", "is not available here or differs from "
                                  "the one the model was trained with (checkpoint hash); pass encoded inputs")
            if ("pooling" in enc
                    and _encoding_record(enc["kind"], enc["encoder"], enc["representations"]).get("pooling")
                    != enc["pooling"]):
                raise BundleError(f"text encoder {enc['encoder']!r}", f"pools differently here than when the model was "
                                  f"trained (recorded {enc['pooling']}); pass encoded inputs")
            if enc["kind"] == "text":
                texts = np.array(["" if _is_missing(v) else str(v) for v in values], dtype=object)
                mask = np.array([bool(t.strip()) for t in texts])
                mods[name] = Modality(name, "text", texts, mask)
            else:
                given = np.asarray(values, dtype=np.float64)
                if given.ndim != 4:
                    raise BundleError(f"input {name!r}", f"images must be [N, C, H, W], got shape {list(given.shape)}")
                _refuse_non_finite(name, given, n)
                images = given.astype(np.float32)
                mask = ~np.isnan(images).reshape(n, -1).all(axis=1)
                mods[name] = Modality(name, "image", np.nan_to_num(images, nan=0.0), mask)
        data = MultimodalDataset("predict", np.arange(n).astype(str), np.zeros(n, np.int64), list(self.class_names), mods)
        reps = {name: tuple(self.encoders[name]["representations"]) for name in raw}
        ids = {f"{e['kind']}_encoder": e["encoder"] for k, e in self.encoders.items() if k in raw}
        out = encode_dataset(data, reps, use_cache=False, **ids)
        return dict(out.modalities)



class Bundle(BundleInputs):
    """A loaded bundle: ``predict(frame_or_dict) -> probs [N, C]`` (see the module docstring)."""

    def __init__(self, path: Path, description: dict[str, Any], config: dict[str, Any], model: Backbone,
                 standardizer: Standardizer, device: str = "cpu") -> None:
        super().__init__(path, description)
        self.config = config
        self.model = model
        self.standardizer = standardizer
        self.device = device

    def predict(self, data: Any, batch_size: int = 256) -> np.ndarray:
        """Class probabilities [N, C] for a DataFrame or a dict of arrays (module docstring)."""
        return self.predict_dataset(self.to_dataset(data), batch_size=batch_size)

    def predict_dataset(self, dataset: MultimodalDataset, batch_size: int = 256) -> np.ndarray:
        """Class probabilities [N, C] of parsed, unscaled inputs (:meth:`to_dataset`; inputs the model
        does not read are ignored): the training part's standardisation, then the network."""
        own = dataset.with_modalities({i["name"]: dataset.modalities[i["name"]] for i in self.inputs})
        return self.model.predict_proba(TensorData(self.standardizer.transform(own), self.device), batch_size=batch_size)

def _refuse_non_finite(name: str, values: np.ndarray, n: int) -> None:
    """inf, or a finite value beyond float32 (which would become inf), is refused: the network
    would turn it into NaN probabilities. NaN stays the missing-value marker."""
    with np.errstate(invalid="ignore"):
        bad = (np.isinf(values) | (np.abs(values) > np.finfo(np.float32).max)).reshape(n, -1)
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        value = values.reshape(n, -1)[row][bad[row]][0]
        raise BundleError(f"input {name!r}", f"sample {row} has the non-finite or out-of-range value {value:g} "
                          "(inputs must be finite float32; NaN marks a missing modality)")


def _refuse_empty_samples(masks: dict[str, np.ndarray], n: int) -> None:
    """A sample with no modality at all has nothing to predict from: the network would return
    little more than its class prior, so it is an error rather than a silent near-uniform row."""
    present = np.zeros(n, bool)
    for mask in masks.values():
        present |= np.asarray(mask, bool)
    if not present.all():
        missing = np.flatnonzero(~present)
        raise BundleError("predict", f"sample {int(missing[0])} has every modality missing ({len(missing)} such "
                          "sample(s)); give at least one modality per sample, or leave those samples out")


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _numeric(series) -> bool:
    from pandas.api.types import is_numeric_dtype

    return bool(is_numeric_dtype(series))
