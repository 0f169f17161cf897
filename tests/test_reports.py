"""search.report (reports, plots, optuna_study): the Optuna study rebuilt from a search's results, the
plots as real images with the expected axes, graceful skips, and the artifacts on the parent MLflow run."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
from PIL import Image

from search.report.optuna_study import rebuild_optuna_study
from search.report.plots import PLOTS
from search.report.reports import write_search_reports
from search.select.results import load_study
from studies import fake_study

BASE = {"lr": 1e-3, "weight_decay": 1e-4, "batch_size": 32, "hidden": 128, "dropout": 0.1, "imbalance": "none"}


def _trials(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        lr = float(10 ** rng.uniform(-4, -2))
        f = float(np.clip(0.5 + 0.1 * np.log10(lr * 1e4) + rng.normal(0, 0.02), 0, 1))
        p = {**BASE, "lr": lr, "dropout": float(rng.uniform(0, 0.5)), "hidden": int(rng.choice([32, 64, 128, 256]))}
        if i == 2:
            p.update(imbalance="focal", gamma_focal=2.5)  # a conditional parameter in one trial only
        out.append({"params": p, "curve": [f - 0.1, f - 0.05, f], "folds": [f - 0.01, f + 0.01]})
    return out


def _assert_image(path, min_side=200):
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG" and min(im.size) >= min_side
        px = np.asarray(im.convert("L"), dtype=float)
    assert px.std() > 5  # not a blank canvas


def test_rebuilt_study_states_values_and_distributions(tmp_path):
    trials = _trials(3)
    trials.append({"params": {**BASE, "lr": 2e-3}, "curve": [0.3, 0.35], "folds": None})   # stopped early
    trials.append({"params": {**BASE, "lr": 3e-3}, "curve": [], "status": "ERROR"})        # failed at once
    fake_study(tmp_path, "s", trials)
    ot = rebuild_optuna_study(load_study("s", tmp_path))
    states = [t.state for t in ot.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3
    assert states.count(optuna.trial.TrialState.PRUNED) == 1 and states.count(optuna.trial.TrialState.FAIL) == 1
    best = max(trials[:3], key=lambda t: t["curve"][-1])
    assert ot.best_value == pytest.approx(np.mean(best["folds"]))
    assert ot.direction == optuna.study.StudyDirection.MAXIMIZE
    lr = ot.trials[0].distributions["lr"]
    assert lr.log and lr.low == 1e-5 and lr.high == 1e-2            # the space's own distribution
    assert "gamma_focal" in ot.trials[2].params and "gamma_focal" not in ot.trials[0].params
    pruned = next(t for t in ot.trials if t.state == optuna.trial.TrialState.PRUNED)
    assert pruned.intermediate_values == {1: 0.3, 2: 0.35}


def test_every_plot_as_png_and_html_with_axes(tmp_path):
    folder = fake_study(tmp_path, "s", _trials(8))
    rep = write_search_reports(folder)
    assert set(rep.plots) == set(PLOTS) and not rep.skipped
    for p in rep.plots.values():
        _assert_image(rep.folder / p["png"])
        html = (rep.folder / p["html"]).read_text()
        assert "plotly.min.js" in html and len(html) > 1000
    assert (rep.folder / "plotly.min.js").stat().st_size > 1_000_000  # shared, so the pages open offline
    axes = {n: p["axes"] for n, p in rep.plots.items()}
    assert axes["learning_curves"][0]["xlabel"] == "epoch"
    assert axes["learning_curves"][0]["ylabel"] == "macro_f1 (validation, mean over folds)"
    assert axes["optimization_history"][0]["ylabel"] == "macro_f1 (mean over folds)"
    assert {a["xlabel"] for a in axes["slice"]} >= {"lr", "dropout", "hidden"}
    index = json.loads((rep.folder / "index.json").read_text())
    assert index["plots"] == rep.plots and index["trials"] == {"COMPLETE": 8}
    # fANOVA: importances over the parameters every finished trial has, summing to 1; lr drives the metric
    assert set(rep.importances) == {"lr", "weight_decay", "batch_size", "hidden", "dropout", "imbalance"}
    assert sum(rep.importances.values()) == pytest.approx(1.0)
    assert max(rep.importances, key=rep.importances.get) == "lr"
    assert (rep.folder / "importances.csv").read_text().startswith("parameter,fanova_importance")


def test_one_finished_trial_skips_with_notes(tmp_path):
    folder = fake_study(tmp_path, "s", [_trials(1)[0], {"params": BASE, "curve": [], "status": "ERROR"}])
    rep = write_search_reports(folder)
    assert set(rep.plots) == {"optimization_history", "slice", "learning_curves"}
    assert "at least 2 finished trials, the study has 1" in rep.skipped["param_importances"]
    assert "at least 2 finished trials" in rep.skipped["parallel_coordinate"]
    readme = (rep.folder / "README.md").read_text()
    assert "**param_importances**: skipped (needs at least 2 finished trials" in readme


def test_single_parameter_and_no_finished_trial(tmp_path):
    trials = [{"params": {"lr": lr}, "curve": [v], "folds": [v, v]} for lr, v in ((1e-3, 0.5), (1e-4, 0.4), (5e-4, 0.45))]
    rep = write_search_reports(fake_study(tmp_path, "one", trials, space="my-space"))  # unregistered: inferred
    assert "needs at least 2 parameters" in rep.skipped["param_importances"]
    assert "needs at least 2 parameters" in rep.skipped["parallel_coordinate"]
    assert {"optimization_history", "slice", "learning_curves"} <= set(rep.plots)
    none = write_search_reports(fake_study(tmp_path, "none", [{"params": BASE, "curve": [0.2], "folds": None}]))
    assert set(none.plots) == {"learning_curves"} and "has 0" in none.skipped["optimization_history"]


def test_remote_results_folder_by_uri(tmp_path):
    folder = fake_study(tmp_path, "s", _trials(3))
    rep = write_search_reports(folder.as_uri())  # any pyarrow filesystem URI (s3://, gs://, file://)
    assert rep.location == f"{folder.as_uri()}/reports" and not rep.skipped
    assert {f"{n}.png" for n in PLOTS} <= {p.name for p in (folder / "reports").iterdir()}


def test_reports_logged_to_the_parent_run(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp)
    rep = write_search_reports(fake_study(tmp_path, "s", _trials(3)), tracking_uri=uri, parent_run_id=run.info.run_id)
    assert rep.logged_to == f"runs:/{run.info.run_id}/reports"
    logged = {f.path for f in client.list_artifacts(run.info.run_id, "reports")}
    assert {"reports/learning_curves.png", "reports/index.json", "reports/param_importances.html"} <= logged
    # an unreachable store is a warning, never an error
    bad = write_search_reports(tmp_path / "s", tracking_uri="http://127.0.0.1:9", parent_run_id="0" * 32)
    assert bad.logged_to is None and bad.plots


# ----------------------------------------------------------------------------- a real search
@pytest.fixture(scope="session")
def search(tiny_search):
    return tiny_search


def test_reports_of_a_real_search_logged_to_its_parent_run(search):
    from mlflow.tracking import MlflowClient

    from search.report.reports import parent_run_id_of

    parent = parent_run_id_of(search["tracking_uri"], search["name"])
    assert parent is not None
    rep = write_search_reports(search["folder"], tracking_uri=search["tracking_uri"], parent_run_id=parent)
    assert {"optimization_history", "slice", "learning_curves"} <= set(rep.plots)
    for p in rep.plots.values():
        _assert_image(rep.folder / p["png"])
    curves = json.loads((rep.folder / "index.json").read_text())["plots"]["learning_curves"]["axes"][0]
    assert (curves["xlabel"], curves["ylabel"]) == ("epoch", "macro_f1 (validation, mean over folds)")
    logged = {f.path for f in MlflowClient(search["tracking_uri"]).list_artifacts(parent, "reports")}
    assert "reports/learning_curves.png" in logged and "reports/README.md" in logged


def test_robustness_of_the_champion(search, capsys):
    from search.robustness import main

    assert main(["--name", search["name"], "--storage", str(search["storage"]), "--rates", "0,0.5"]) == 0
    out = capsys.readouterr().out
    assert "fold models: checkpoint" in out and "rate 0 reproduces the search's fold macro_f1: yes" in out
    table = (search["folder"] / "robustness" / "robustness.csv").read_text().splitlines()
    assert table[0].startswith("kind,target,rate,achieved_rate,macro_f1_mean,macro_f1_std")
    assert len(table) == 1 + 4 * 2  # mrna, mirna, protein, all x 2 rates
    _assert_image(search["folder"] / "robustness" / "robustness.png")
    assert main(["--name", search["name"], "--storage", str(search["storage"]), "--rates", "0,1.5"]) == 2
    assert "--rates 0,1.5: every rate must be in [0, 1]" in capsys.readouterr().err


# ----------------------------------------------------------------------------- masking protocol
def _dataset(n: int = 40):
    from trainables.data import Modality, MultimodalDataset

    rng = np.random.default_rng(0)
    masks = {"a": np.ones(n, bool), "b": rng.random(n) > 0.3, "c": rng.random(n) > 0.5}
    masks["a"][~(masks["b"] | masks["c"])] = True
    mods = {"a": Modality("a", "vector", rng.normal(size=(n, 3)).astype(np.float32), masks["a"]),
            "b.tokens": Modality("b.tokens", "tokens", rng.normal(size=(n, 4, 2)).astype(np.float32), masks["b"],
                                 token_mask=np.repeat(masks["b"][:, None], 4, axis=1)),
            "c": Modality("c", "vector", rng.normal(size=(n, 2)).astype(np.float32), masks["c"])}
    return MultimodalDataset("t", np.arange(n), np.arange(n) % 2, ["x", "y"], mods)


def test_masking_keeps_one_modality_and_drops_exact_counts():
    from search.robustness import availability, mask_modality

    data = _dataset()
    names = ["a", "b", "c"]
    avail = availability(data, names)
    out, achieved = mask_modality(data, names, "b", 0.5, np.random.default_rng(1))
    after = availability(out, names)
    candidates = avail[:, 1] & (avail.sum(axis=1) > 1)
    assert (avail[:, 1] & ~after[:, 1]).sum() == round(0.5 * candidates.sum())
    assert achieved == pytest.approx(round(0.5 * candidates.sum()) / avail[:, 1].sum())
    assert (after.sum(axis=1) >= 1).all() and (after[:, [0, 2]] == avail[:, [0, 2]]).all()
    gone = avail[:, 1] & ~after[:, 1]
    b = out.modalities["b.tokens"]
    assert not b.token_mask[gone].any() and not b.values[gone].any()  # missing = zeros and no real token

    out, achieved = mask_modality(data, names, "all", 0.9, np.random.default_rng(1))
    after = availability(out, names)
    cells, n = avail.sum(), len(avail)
    assert (after.sum(axis=1) == 1).all()  # 90 % is more than can go: every sample keeps exactly one
    assert achieved == pytest.approx((cells - n) / cells)
    again, _ = mask_modality(data, names, "all", 0.9, np.random.default_rng(1))
    assert (availability(again, names) == after).all()  # seeded


def test_attribute_missing_rows_for_attribute_models():
    from search.robustness import FoldModels, evaluate
    from search.select.results import TrialResult
    from trainables.data import Modality, MultimodalDataset

    n, a = 30, 6
    rng = np.random.default_rng(0)
    labels = np.arange(n) % 2
    mentioned = np.ones((n, a), bool)
    val = MultimodalDataset("t", np.arange(n), labels, ["x", "y"], {
        "ehr": Modality("ehr", "vector", rng.normal(size=(n, 2)).astype(np.float32), np.ones(n, bool)),
        "report.attributes": Modality("report.attributes", "tokens", rng.normal(size=(n, a, 4)).astype(np.float32),
                                      np.ones(n, bool), token_mask=mentioned)})

    class Trainer:  # right when most attributes are mentioned, wrong otherwise
        modality_names, class_names = ["ehr", "report.attributes"], ["x", "y"]

        def __init__(self):
            self.val = val

        def predict_proba(self, data):
            ok = data.modalities["report.attributes"].token_mask.mean(axis=1) > 0.5
            right = np.eye(2)[data.labels]
            return np.where(ok[:, None], right, 1 - right)

    rows = evaluate(FoldModels(TrialResult("t", "TERMINATED", {}), [Trainer(), Trainer()], "test"), "accuracy",
                    (0.0, 0.5, 1.0), targets=[])
    assert [(r.kind, r.rate) for r in rows] == [("attribute", 0.0), ("attribute", 0.5), ("attribute", 1.0)]
    assert rows[0].mean == 1.0 and rows[2].mean == 0.0 and 0.0 < rows[1].mean < 1.0


class _Payload:
    """A pickle that touches a file when unpickled (what a tampered checkpoint could carry)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.mark.parametrize("tamper", ["garbage", "pickle", "zip"])
def test_robustness_of_a_tampered_checkpoint_is_one_line(tmp_path, capsys, tamper):
    import pickle

    import torch

    from search.robustness import main

    folder = fake_study(tmp_path, "s", [{"params": BASE, "curve": [0.5, 0.6], "folds": [0.6, 0.6, 0.6]}])
    (trial_dir,) = [d for d in folder.iterdir() if d.is_dir()]
    state = trial_dir / "checkpoint_000001" / "state.pt"
    state.parent.mkdir()
    marker = tmp_path / "payload-ran"
    if tamper == "garbage":
        state.write_bytes(b"not a checkpoint")
    elif tamper == "pickle":
        state.write_bytes(pickle.dumps({"epoch": 2, "folds": [_Payload(marker)]}, protocol=2))
    else:  # torch's own zip format around the payload
        torch.save({"epoch": 2, "folds": [_Payload(marker)]}, state)
    assert main(["--name", "s", "--storage", str(tmp_path), "--rates", "0,0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"python -m search.robustness: error: checkpoint {state} of trial aaaaa_00000: cannot be "
                          "restored (") and "\n" not in err, err
    assert not marker.exists()  # weights_only=True: the payload never ran
