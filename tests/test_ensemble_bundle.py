"""trainables.ensemble and its registration: an ensemble of networks and reference models is ONE
bundle (one manifest, signable) that predicts the weighted sum of its members' probabilities;
reference estimators load through a type allow-list (never pickle); tampered ensembles are refused
in one line; search.handoff.registration registers an ensemble as one MLflow model version, idempotently."""

from __future__ import annotations

import json
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from search.handoff.models import pyfunc_input
from search.select import references
from toydata import Vec, toy_dataset
from trainables import signing
from trainables.bundle import MANIFEST, BundleError, _building, copy_bundle, load_bundle, save_bundle, sign_bundle
from trainables.data import MultimodalDataset
from trainables.engine import FoldTrainer
from trainables.ensemble import (
    ENSEMBLE_FORMAT,
    ESTIMATOR,
    REFERENCE,
    EnsembleBundle,
    Member,
    ReferenceModel,
    load_estimator,
)

CLASSES = ["low", "mid", "high"]


def synthetic(n: int, seed: int) -> MultimodalDataset:
    """``n`` samples of 3 classes, vector inputs ``a`` (6 named features) and ``b`` (4), ``b``
    missing for every fourth sample (zeroed, as loaders do)."""
    return toy_dataset(n, [Vec("a", 6, features=[f"g{k}" for k in range(6)]),
                           Vec("b", 4, shift=-1.0, absent=slice(1, None, 4), features=[f"p{k}" for k in range(4)])],
                       class_names=CLASSES, seed=seed, name="synthetic")


@pytest.fixture(scope="module")
def fitted():
    train, test = synthetic(90, 0), synthetic(12, 1)
    nets = []
    for seed, (lr, hidden) in enumerate([(3e-3, 16), (1e-2, 8)]):
        trainer = FoldTrainer("baseline", {"epochs": 1, "lr": lr, "hidden": hidden}, train, seed=seed)
        trainer.train_epoch()
        nets.append(trainer)
    refs = {name: ReferenceModel(*references.fit(name, train, 0), name) for name in ("rf", "logreg")}
    return train, test, nets, refs


@pytest.fixture(scope="module")
def ensemble(fitted, tmp_path_factory):
    from trainables.ensemble import save_ensemble_bundle

    train, _, nets, refs = fitted
    members = [Member("t_00001", nets[0], 2.0, {"macro_f1": 0.81}), Member("t_00002", nets[1], 1.0),
               Member("reference:rf", refs["rf"], 1.0, {"macro_f1": 0.78}), Member("reference:logreg", refs["logreg"], 1.0)]
    return save_ensemble_bundle(tmp_path_factory.mktemp("ensemble") / "e", members, data=train,
                                metadata={"note": "four members"})


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    return signing.keygen(folder / "producer")


def _reseal(path: Path) -> None:
    """What an attacker can do without the key: edit files, then rewrite the manifest to match."""
    resealed = path.parent / f"{path.name}.resealed"
    with _building(resealed) as out:
        for f in sorted(path.rglob("*")):
            rel = f.relative_to(path)
            if f.is_file() and rel.as_posix() != MANIFEST:
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, out / rel)
    shutil.rmtree(path)
    resealed.rename(path)


def _one_line_refusal(path: Path, match: str, **kwargs) -> str:
    with pytest.raises(BundleError, match=match) as err:
        load_bundle(path, **kwargs)
    assert "\n" not in str(err.value)
    return str(err.value)


# --------------------------------------------------------------------------------- predictions
def test_an_ensemble_predicts_the_weighted_sum_of_its_members(fitted, ensemble, tmp_path):
    train, test, nets, refs = fitted
    bundle = load_bundle(ensemble)
    assert isinstance(bundle, EnsembleBundle)
    assert [(m.name, m.kind) for m in bundle.members] == [("t_00001", "model"), ("t_00002", "model"),
                                                         ("reference:rf", "reference"), ("reference:logreg", "reference")]
    np.testing.assert_allclose(bundle.weights, [0.4, 0.2, 0.2, 0.2], rtol=1e-12)
    assert bundle.class_names == CLASSES and bundle.modalities == ["a", "b"] and not bundle.has_token_inputs
    assert bundle.input_columns()[:2] == ["a/g0", "a/g1"] and bundle.metadata == {"note": "four members"}
    assert json.loads((ensemble / "ensemble.json").read_text())["format"] == ENSEMBLE_FORMAT

    frame = pyfunc_input(bundle, test)  # 'b' all NaN for samples 1, 5, 9
    assert frame.filter(like="b/").iloc[1].isna().all()
    singles = [load_bundle(save_bundle(tmp_path / f"net{k}", t, data=train)) for k, t in enumerate(nets)]
    member_probs = [singles[0].predict(frame), singles[1].predict(frame),
                    references.predict_proba(refs["rf"].estimator, refs["rf"].layout, test, 3),
                    references.predict_proba(refs["logreg"].estimator, refs["logreg"].layout, test, 3)]
    for single, trainer in zip(singles, nets):  # a network member is exactly its own single bundle
        np.testing.assert_allclose(single.predict(frame), trainer.predict_proba(test), rtol=1e-5, atol=1e-6)
    expected = np.zeros((len(test), 3))
    for m, p in zip(bundle.members, member_probs):
        expected += m.weight * p.astype(np.float64)
    probs = bundle.predict(frame)
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)  # networks give float32 rows
    assert len({tuple(np.round(p[0], 6)) for p in member_probs}) == 4  # the members do differ
    arrays = {name: np.where(m.mask[:, None], m.values, np.nan) for name, m in test.modalities.items()}
    np.testing.assert_allclose(bundle.predict(arrays), expected, rtol=0, atol=1e-12)  # dict input, same parse


def test_a_reference_only_ensemble_predicts_what_the_reference_predicts(fitted, tmp_path):
    from trainables.ensemble import save_ensemble_bundle

    train, test, _, refs = fitted
    path = save_ensemble_bundle(tmp_path / "rf-alone", [Member("reference:rf", refs["rf"], 3.0)], data=train)
    bundle = load_bundle(path)
    assert [(m.name, m.kind, m.weight) for m in bundle.members] == [("reference:rf", "reference", 1.0)]
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()) == [
        MANIFEST, "ensemble.json", "inputs.json", f"members/0-reference-rf/{ESTIMATOR}", f"members/0-reference-rf/{REFERENCE}"]
    np.testing.assert_array_equal(bundle.predict(pyfunc_input(bundle, test)),
                                  references.predict_proba(refs["rf"].estimator, refs["rf"].layout, test, 3))


@pytest.mark.parametrize("labels", [np.arange(30) % 3, np.arange(30) % 2, np.r_[np.zeros(29, int), 1]],
                         ids=["three-classes", "binary", "one-sample-class"])
def test_every_reference_model_loads_through_the_allow_list(labels, tmp_path):
    import skops.io

    x = np.random.default_rng(0).normal(size=(30, 5)) + labels[:, None]
    for name, factory in references.REFERENCES.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence notes and sklearn's API-transition FutureWarnings
            estimator = factory(0, labels)
            small = {k: 5 for k in ("n_estimators", "max_iter") if k in estimator.get_params(deep=False)}
            estimator = estimator.set_params(**small).fit(x, labels)  # fewer trees, the same types
            skops.io.dump(estimator, tmp_path / f"{name}.skops")
            loaded = load_estimator(tmp_path / f"{name}.skops")
            np.testing.assert_array_equal(loaded.predict_proba(x), estimator.predict_proba(x))


# --------------------------------------------------------------------------------- tampering
def _copy(ensemble: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(ensemble, dest)
    return dest


def _member(path: Path, suffix: str) -> Path:
    return next(p for p in (path / "members").iterdir() if p.name.endswith(suffix))


def test_an_edited_member_file_is_refused(ensemble, tmp_path):
    path = _copy(ensemble, tmp_path)
    rf = _member(path, "reference-rf") / REFERENCE
    rf.write_text(rf.read_text().replace("0.", "9.", 1))
    message = _one_line_refusal(path, "does not match its SHA-256")
    assert "members/2-reference-rf/reference.json" in message


def test_a_pickle_in_place_of_the_estimator_is_refused_without_running(ensemble, tmp_path):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = _copy(ensemble, tmp_path)
    (_member(path, "reference-rf") / ESTIMATOR).write_bytes(pickle.dumps(Payload()))
    _reseal(path)  # the manifest now matches: only the file's type can give it away
    message = _one_line_refusal(path, "is not a skops file")
    assert f"members/2-reference-rf/{ESTIMATOR}" in message
    assert not marker.exists()


def test_a_skops_file_of_another_type_is_refused(fitted, ensemble, tmp_path):
    import skops.io
    from sklearn.svm import SVC

    train, *_ = fitted
    path = _copy(ensemble, tmp_path)
    other = SVC().fit(np.random.default_rng(0).normal(size=(30, 22)), np.arange(30) % 3)
    estimator = _member(path, "reference-logreg") / ESTIMATOR
    skops.io.dump(other, estimator)
    assert skops.io.get_untrusted_types(file=estimator) == []  # skops alone would trust and build it
    _reseal(path)
    message = _one_line_refusal(path, "outside the reference models' allow-list")
    assert "sklearn.svm._classes.SVC" in message and f"members/3-reference-logreg/{ESTIMATOR}" in message


@pytest.mark.parametrize("name", ["../outside.json", "members/../../outside.json", "/etc/hostname", "members//x"])
def test_a_manifest_path_leaving_the_bundle_is_refused(ensemble, tmp_path, name):
    path = _copy(ensemble, tmp_path)
    (tmp_path / "outside.json").write_text("{}")
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"][name] = {"sha256": "0" * 64, "bytes": 2}
    (path / MANIFEST).write_text(json.dumps(manifest))
    _one_line_refusal(path, "is not a relative path inside the bundle")


def test_a_link_out_of_the_bundle_and_an_unlisted_member_file_are_refused(ensemble, tmp_path):
    from trainables.bundle import _sha256

    path = _copy(ensemble, tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    (path / "members" / "link.txt").symlink_to(outside)
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"]["members/link.txt"] = {"sha256": _sha256(outside), "bytes": outside.stat().st_size}
    (path / MANIFEST).write_text(json.dumps(manifest))
    _one_line_refusal(path, "is a link to outside the bundle")

    path = _copy(ensemble, tmp_path / "again")
    manifest = json.loads((path / MANIFEST).read_text())
    del manifest["files"]["members/0-t_00001/preprocessing.json"]
    (path / MANIFEST).write_text(json.dumps(manifest))
    _one_line_refusal(path, "members/0-t_00001/preprocessing.json is not listed in its MANIFEST.json")


def _reweigh(record: dict) -> None:
    for m in record["members"]:
        m["weight"] = 0.5
    record["weights"] = [0.5] * len(record["members"])


def _vector_only(record: dict) -> None:
    record["weights"] = [0.25] * len(record["members"])


def _climb_out(record: dict) -> None:
    record["members"][0]["folder"] = "members/.."


@pytest.mark.parametrize(("edit", "match"), [(_reweigh, "must be non-negative and sum to 1"),
                                             (_vector_only, "does not match the members' weights"),
                                             (_climb_out, "has folder 'members/..'")])
def test_an_inconsistent_ensemble_json_is_refused(ensemble, tmp_path, edit, match):
    path = _copy(ensemble, tmp_path)
    record = json.loads((path / "ensemble.json").read_text())
    edit(record)
    (path / "ensemble.json").write_text(json.dumps(record))
    _reseal(path)
    _one_line_refusal(path, match)


# --------------------------------------------------------------------------------- signing
def test_a_signed_ensemble_loads_under_its_key_and_a_modified_member_breaks_it(fitted, ensemble, keys, tmp_path):
    _, test, _, _ = fitted
    private, public = keys
    signed = copy_bundle(ensemble, tmp_path / "signed")
    sign_bundle(signed, private)
    bundle = load_bundle(signed, public_key=public)
    assert isinstance(bundle, EnsembleBundle)
    frame = pyfunc_input(bundle, test)
    np.testing.assert_array_equal(bundle.predict(frame), load_bundle(ensemble).predict(frame))

    preprocessing = signed / "members" / "1-t_00002" / "preprocessing.json"
    preprocessing.write_text(preprocessing.read_text().replace("0.", "9.", 3))
    _reseal(signed)
    load_bundle(signed)  # the manifest alone is fooled: integrity, not origin
    _one_line_refusal(signed, "signature does not verify", public_key=public)


# --------------------------------------------------------------------------------- registration
def test_an_ensemble_is_registered_as_one_model_version_once(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    import search.handoff.refit as refitting
    from mlflow_server import sqlite_store
    from search.handoff.models import load_model
    from search.handoff.registration import ENSEMBLE_ID, TopTrial, log_top_models, registered_model_name
    from test_models import BASE, search_runs
    from trainables.data import load_dataset

    uri = sqlite_store(tmp_path / "store")
    member = {**BASE, "epochs": 2}
    fixed = {k: v for k, v in member.items() if k not in ("lr", "hidden")}
    single = TopTrial("t_00001", member, {"macro_f1": 0.70})
    ensemble = TopTrial(ENSEMBLE_ID, fixed, {"macro_f1": 0.74}, ensemble=[
        {"name": "t_00001", "kind": "model", "config": member, "weight": 0.6, "confirmed": {"macro_f1": 0.71}},
        {"name": "reference:rf", "kind": "reference", "config": {"reference": "rf"}, "weight": 0.4,
         "confirmed": {"macro_f1": 0.69}}])
    cb = search_runs(uri, [single], "ensemble")
    name = registered_model_name("baseline", "rosmap")
    refits = []
    real_refit = refitting.refit
    monkeypatch.setattr(refitting, "refit", lambda config, **kw: refits.append(config) or real_refit(config, **kw))

    def register() -> list[str]:
        return log_top_models([single, ensemble], space="baseline", data_name="rosmap", tracking_uri=uri,
                              parent_run_id=cb.parent_run_id, registered_name=name, bundle_dir=tmp_path / "bundles")

    assert register() == ["1", "2"]
    assert len(refits) == 1  # the member that is also the top-1 model is trained once
    client = MlflowClient(uri)
    v = client.get_model_version(name, "2")
    assert v.tags["fusetune.candidate"] == "ensemble" and v.tags["fusetune.trial_id"] == ENSEMBLE_ID
    assert json.loads(v.tags["fusetune.ensemble"]) == [
        {"name": "t_00001", "kind": "model", "weight": 0.6, "confirmed": {"macro_f1": 0.71}},
        {"name": "reference:rf", "kind": "reference", "weight": 0.4, "confirmed": {"macro_f1": 0.69}}]
    run = client.get_run(v.run_id)
    assert run.data.tags["fusetune.role"] == "ensemble" and run.data.tags["mlflow.parentRunId"] == cb.parent_run_id
    assert 0.0 <= run.data.metrics["test_macro_f1"] <= 1.0  # scored once on rosmap's fixed test part

    kept = load_bundle(tmp_path / "bundles" / f"2-{ENSEMBLE_ID}")
    assert isinstance(kept, EnsembleBundle) and [m.weight for m in kept.members] == [0.6, 0.4]
    assert kept.metadata["test_metrics"]["macro_f1"] == pytest.approx(run.data.metrics["test_macro_f1"])
    test = load_dataset("rosmap").split_part("test").take(np.arange(10))
    frame = pyfunc_input(kept, test)
    served = load_model(f"models:/{name}/2", tracking_uri=uri, dst=tmp_path / "download")
    np.testing.assert_allclose(served.predict(frame).to_numpy(), kept.predict(frame), rtol=1e-6, atol=1e-7)

    assert register() == ["1", "2"]  # resume: nothing refitted, no second version
    assert len(refits) == 1 and len(client.search_model_versions(f"name = '{name}'")) == 2


# --------------------------------------------------------------------------------- hand-off
def test_the_model_card_lists_members_and_says_when_the_model_is_a_reference(fitted, ensemble, tmp_path):
    from search.export import CARD, CARD_JSON, Selected, export_one
    from search.select.results import TrialResult
    from trainables.ensemble import save_ensemble_bundle

    train, *_ = fitted
    alone = save_ensemble_bundle(tmp_path / "rf-alone", [Member("reference:rf", fitted[3]["rf"], 1.0,
                                                                {"macro_f1": 0.78})], data=train,
                                 metadata={"test_metrics": None, "data_spec": "synthetic"})
    cards = {}
    for label, path in (("mixed", ensemble), ("rf", alone)):
        sel = Selected(1, TrialResult("ensemble", "TERMINATED", {"seed": 0}), None, path, "a test", None, label)
        out = export_one(sel, tmp_path / "export", rates=(0.0,), seed=0, overwrite=False)
        assert isinstance(load_bundle(out), EnsembleBundle)  # the exported copy is still a whole ensemble
        cards[label] = ((out / CARD).read_text(), json.loads((out / CARD_JSON).read_text()))
    text, facts = cards["mixed"]
    assert [(m["name"], m["model"], round(m["weight"], 6)) for m in facts["members"]] == [
        ("t_00001", "baseline network", 0.4), ("t_00002", "baseline network", 0.2),
        ("reference:rf", "random forest", 0.2), ("reference:logreg", "logistic regression", 0.2)]
    assert "| t_00001 | baseline network | 0.4000 | 0.8100 |" in text
    assert "| t_00002 | baseline network | 0.2000 | - |" in text
    assert "not a tuned network" not in text and not facts["references_only"]
    text, facts = cards["rf"]
    assert facts["references_only"]
    assert ("This model is a reference model (random forest), not a tuned network: the search's own models did not "
            "beat it on fresh folds.") in text
    assert "| reference:rf | random forest | 1.0000 | 0.7800 |" in text
