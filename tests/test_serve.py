"""``mlflow models serve`` of the registered champion answers REST ``/invocations`` with class
probabilities, on 127.0.0.1, in a process where fusetune is not installed (the model's own code
and requirements are all it has)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlflow_server import sqlite_store
from search.handoff.models import pyfunc_input
from search.handoff.registration import TopTrial, log_top_models, registered_model_name
from serving import post, served
from test_models import BASE, search_runs, with_missing
from trainables.bundle import load_bundle
from trainables.data import load_dataset

pytestmark = pytest.mark.slow


def test_served_champion_answers_invocations_with_probabilities(tmp_path):
    uri = sqlite_store(tmp_path / "store")
    top = [TopTrial("t_00000", {**BASE, "epochs": 1}, {"macro_f1": 0.6})]
    cb = search_runs(uri, top, "serve")
    name = registered_model_name("baseline", "rosmap")
    log_top_models(top, space="baseline", data_name="rosmap", tracking_uri=uri, parent_run_id=cb.parent_run_id,
                   registered_name=name, bundle_dir=tmp_path / "bundles")
    bundle = load_bundle(tmp_path / "bundles" / "1-t_00000")
    test = with_missing(load_dataset("rosmap").split_part("test").take(np.arange(8)), "meth", np.array([1, 4]))
    frame = pyfunc_input(bundle, test)
    expected = bundle.predict(frame)

    with served(f"models:/{name}@champion", uri, tmp_path) as base:
        split = json.loads(frame.to_json(orient="split", index=False))  # NaN -> null: 'meth' missing for 2 rows
        by_split = post(f"{base}/invocations", {"dataframe_split": split})["predictions"]
        inputs = {c: [None if np.isnan(v) else float(v) for v in frame[c]] for c in frame.columns}
        by_inputs = post(f"{base}/invocations", {"inputs": inputs})["predictions"]
    for predictions in (by_split, by_inputs):
        probs = np.array([[row[c] for c in bundle.class_names] for row in predictions])
        assert probs.shape == (8, 2)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
        np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)


def test_a_served_ensemble_answers_what_its_bundle_predicts(tmp_path):
    from search.handoff.registration import ENSEMBLE_ID
    from trainables.ensemble import EnsembleBundle

    uri = sqlite_store(tmp_path / "store")
    member = {**BASE, "epochs": 1}
    ensemble = TopTrial(ENSEMBLE_ID, {k: v for k, v in member.items() if k not in ("lr", "hidden")}, {}, ensemble=[
        {"name": "t_00000", "kind": "model", "config": member, "weight": 0.5, "confirmed": {}},
        {"name": "reference:rf", "kind": "reference", "config": {"reference": "rf"}, "weight": 0.3, "confirmed": {}},
        {"name": "reference:logreg", "kind": "reference", "config": {"reference": "logreg"}, "weight": 0.2,
         "confirmed": {}}])
    cb = search_runs(uri, [], "serve-ensemble")
    name = registered_model_name("baseline", "rosmap")
    log_top_models([ensemble], space="baseline", data_name="rosmap", tracking_uri=uri, parent_run_id=cb.parent_run_id,
                   registered_name=name, bundle_dir=tmp_path / "bundles")
    bundle = load_bundle(tmp_path / "bundles" / f"1-{ENSEMBLE_ID}")
    assert isinstance(bundle, EnsembleBundle)
    test = with_missing(load_dataset("rosmap").split_part("test").take(np.arange(8)), "meth", np.array([1, 4]))
    frame = pyfunc_input(bundle, test)
    expected = bundle.predict(frame)

    with served(f"models:/{name}@champion", uri, tmp_path) as base:
        split = json.loads(frame.to_json(orient="split", index=False))
        predictions = post(f"{base}/invocations", {"dataframe_split": split})["predictions"]
    probs = np.array([[row[c] for c in bundle.class_names] for row in predictions])
    np.testing.assert_allclose(probs, expected, rtol=1e-6, atol=1e-7)
