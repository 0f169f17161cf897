"""A search's ensemble end to end (issue 24): selected on the search's folds, confirmed on fresh
folds like any candidate, registered as one model that wins the ``champion`` alias, loaded with
``search.handoff.models.load_model`` and ``load_bundle`` and served over REST with the same probabilities;
a driver killed in the confirmation stage resumes to the same ensemble from the same out-of-fold
predictions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import background
from search.handoff.models import load_model, pyfunc_input
from search.select import ensemble
from serving import post, served
from test_confirm import command
from trainables.bundle import load_bundle
from trainables.trial_data import fixed_test_part_from_config

SEARCH = ["--space", "baseline", "--data", "breast-tcga", "--folds", "3", "--num-samples", "3", "--epochs", "6",
          "--scheduler", "fifo", "--confirm-repeats", "1", "--top-k", "1", "--seed", "1", "--max-concurrent", "1",
          "--name", "ens"]
NAME = "baseline-breast-tcga"


@background.search_fixture(seconds=50)
def ensemble_search(storage: Path):
    """The search killed once in its confirmation stage (after the ensemble's selection), then resumed."""
    argv = [*SEARCH, "--storage", str(storage)]
    killed = command("search.run", argv, env={"FUSETUNE_KILL_AT": "confirmation"})
    folder = storage / "ens"
    before = {p.name: p.read_bytes() for p in (folder / "oof").glob("*.npz")}
    selected = json.loads((folder / ensemble.RECORD).read_text()) if (folder / ensemble.RECORD).is_file() else None
    resumed = command("search.run", ["--resume", "--storage", str(storage), "--name", "ens"])
    return storage, killed, before, selected, resumed


def test_killed_in_confirmation_resumes_to_the_same_ensemble(ensemble_search):
    storage, killed, before, selected, resumed = ensemble_search
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-2000:]
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    folder = storage / "ens"
    # every trial and every reference kept its out-of-fold predictions, untouched by the resume
    assert {f"{t}.npz" for t in _trial_ids(folder)} | {f"reference-{r}.npz" for r in ("logreg", "rf", "hgb")} == set(before)
    assert {p.name: p.read_bytes() for p in (folder / "oof").glob("*.npz")} == before
    assert selected is not None and json.loads((folder / ensemble.RECORD).read_text()) == selected
    row = _ensemble_row(folder)
    assert json.loads(row["config"]) == {"members": selected["members"], "weights": selected["weights"]}
    assert float(row["search_macro_f1"]) == pytest.approx(selected["score"])
    assert sum(selected["weights"]) == pytest.approx(1.0, abs=1e-5) and 1 <= len(selected["members"]) <= 5


def test_the_confirmed_ensemble_wins_and_is_served_as_one_model(ensemble_search, tmp_path):
    storage, _, _, selected, resumed = ensemble_search
    assert resumed.returncode == 0
    folder = storage / "ens"
    rows = list(csv.DictReader((folder / "confirmation.csv").open()))
    row = _ensemble_row(folder)
    assert row["kind"] == "ensemble" and int(row["n_scores"]) == 3 and row["confirmed_macro_f1"]
    best = max((r for r in rows if r["kind"] in ("model", "ensemble")), key=lambda r: float(r["confirmed_macro_f1"]))
    assert best["candidate"] == "ensemble", "the ensemble is expected to win on this search's fresh folds"
    assert "it is the champion" in resumed.stdout and "alias champion" in resumed.stdout

    from mlflow import MlflowClient

    uri = f"sqlite:///{storage.resolve()}/mlflow.db"
    champion = MlflowClient(uri).get_model_version_by_alias(NAME, "champion")
    assert champion.tags["fusetune.candidate"] == "ensemble"
    tagged = json.loads(champion.tags["fusetune.ensemble"])
    assert [m["name"] for m in tagged] == selected["members"]
    assert [m["weight"] for m in tagged] == pytest.approx(selected["weights"], abs=1e-5)
    kept = sorted((folder / "models").glob("*-ensemble"))
    assert len(kept) == 1
    bundle = load_bundle(kept[0])
    assert [m.name for m in bundle.members] == selected["members"]
    config = json.loads((folder / "search.json").read_text())
    test = fixed_test_part_from_config({"data": config["data"], "method": "baseline"})
    frame = pyfunc_input(bundle, test)
    expected = bundle.predict(frame)
    assert expected.shape == (len(test), len(bundle.class_names)) and np.allclose(expected.sum(axis=1), 1.0)
    loaded = load_model(f"models:/{NAME}@champion", tracking_uri=uri, dst=tmp_path / "download")
    np.testing.assert_allclose(loaded.predict(frame).to_numpy(), expected, rtol=1e-5, atol=1e-6)
    with served(f"models:/{NAME}@champion", uri, tmp_path) as base:
        split = json.loads(frame.to_json(orient="split", index=False))
        predictions = post(f"{base}/invocations", {"dataframe_split": split})["predictions"]
    probs = np.array([[p[c] for c in bundle.class_names] for p in predictions])
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)


def _trial_ids(folder):
    return [r["trial_id"] for r in csv.DictReader((folder / "results.csv").open()) if r["status"] == "TERMINATED"]


def _ensemble_row(folder):
    rows = list(csv.DictReader((folder / "confirmation.csv").open()))
    (row,) = [r for r in rows if r["candidate"] == "ensemble"]
    return row
