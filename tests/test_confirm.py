"""Confirmation on fresh folds, reference models, gated promotion and nested CV (issue 13)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import background
from search import nested
from search.handoff import promotion
from search.prepare.errors import UsageError
from search.select import references, verdict
from trainables.data import Modality, MultimodalDataset, load_dataset
from trainables.data.outer import outer_splits

REPO = Path(__file__).resolve().parents[1]


def command(module: str, args: list[str], timeout: int = 900, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(background.environ(), PYTHONPATH=str(REPO), **(env or {}))
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


# --------------------------------------------------------------------------------- units
def test_model_jobs_take_the_cpus_the_stage_would_leave_idle():
    from search.select.confirm import model_job_cpus

    assert model_job_cpus(1, 1, None, [2.0]) == 2.0          # one candidate on 2 CPUs: both
    assert model_job_cpus(2, 1, None, [2.0]) == 1.0          # as many jobs as CPUs: as asked
    assert model_job_cpus(6, 1, None, [2.0]) == 1.0
    assert model_job_cpus(3, 1, 1, [2.0]) == 2.0             # --max-concurrent 1: one at a time, all CPUs
    assert model_job_cpus(3, 1, None, [8.0]) == 2.0          # an even share, whole CPUs
    assert model_job_cpus(1, 1, None, [4.0, 16.0]) == 16.0   # at most one node's
    assert model_job_cpus(1, 0.5, None, [1.0]) == 1.0
    assert model_job_cpus(1, 4, None, [2.0]) == 4.0          # never fewer than asked


def test_only_model_jobs_on_cpus_are_widened(monkeypatch):
    import ray

    from search.select import confirm

    model = {"job": {"kind": "model"}}
    ref = {"job": {"kind": "reference"}}
    asked = {"cpu": 1.0, "gpu": 0.0}
    assert confirm._resources([model["job"]], asked, None) is asked          # Ray not up: as asked
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 4.0}},
                                               {"Alive": False, "Resources": {"CPU": 64.0}}])
    per_job = confirm._resources([model["job"], ref["job"], ref["job"]], asked, None)
    assert per_job(model).bundles == [{"CPU": 4.0}] and per_job(ref).bundles == [{"CPU": 1.0}]
    assert confirm._resources([model["job"]], {"cpu": 1.0, "gpu": 1.0}, None) == {"cpu": 1.0, "gpu": 1.0}
    assert confirm._resources([model["job"]] * 4, asked, None) is asked      # no idle CPU


def _toy(values, mask, labels):
    m = Modality("a", "vector", np.asarray(values, np.float32), np.asarray(mask, bool), ["x", "y"])
    return MultimodalDataset("toy", np.array([f"s{i}" for i in range(len(labels))]), np.asarray(labels), ["n", "p"], {"a": m})


def test_reference_inputs_use_the_training_folds_means_and_missing_indicators():
    train = _toy([[1, 2], [3, 4], [0, 0]], [True, True, False], [0, 1, 1])
    test = _toy([[5, 6], [0, 0]], [True, False], [0, 1])
    xtr, xte = references.design_matrices(train, test)
    # the missing rows get the training fold's mean of the available rows (2, 3); last column = missing
    assert xtr.tolist() == [[1, 2, 0], [3, 4, 0], [2, 3, 1]]
    assert xte.tolist() == [[5, 6, 0], [2, 3, 1]]


def test_reference_probabilities_cover_every_class():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 10 + [1] * 10)
    data = _toy(rng.normal(size=(20, 2)) + labels[:, None], np.ones(20, bool), labels)
    for name in references.REFERENCES:
        p = references.fit_predict(name, data.take(np.arange(0, 20, 2)), data.take(np.arange(1, 20, 2)), 0)
        assert p.shape == (10, 2) and np.allclose(p.sum(1), 1)


def _cand(name, scores, kind="model", search=None, **kw):
    c = verdict.Candidate(name, kind, {"id": name, **kw.pop("config", {})}, search, **kw)
    c.folds = {m: np.asarray(scores, float) for m in ("accuracy", "weighted_f1", "macro_f1", "balanced_accuracy", "auroc")}
    return c


def test_the_champion_is_the_best_model_on_fresh_folds_not_on_the_search():
    scheme = verdict.Scheme(3, 0.2, (1000, 2000), "macro_f1", "f" * 64)
    lucky = _cand("lucky", [0.60, 0.62, 0.58, 0.61, 0.59, 0.60], search=0.90)
    steady = _cand("steady", [0.70, 0.72, 0.69, 0.71, 0.70, 0.68], search=0.80)
    ref = _cand("reference:logreg", [0.75, 0.74, 0.73, 0.76, 0.74, 0.75], kind="reference")
    conf = verdict.verdict([lucky, steady, ref], scheme, "max")
    assert conf.champion is steady and conf.selection_gap == pytest.approx(0.80 - np.mean(steady.folds["macro_f1"]))
    assert [c.name for c in conf.candidates] == ["reference:logreg", "steady", "lucky"]
    assert conf.p_values["steady"] is None and 0 < conf.p_values["lucky"] < 0.05
    assert "does not beat the reference model reference:logreg" in verdict.summary(conf)
    rows = list(csv.DictReader(verdict.csv_text(conf).splitlines()))
    assert [r["candidate"] for r in rows] == ["reference:logreg", "steady", "lucky"]
    assert rows[1]["p_value"] == "" and float(rows[2]["search_macro_f1"]) == 0.90 and rows[0]["search_macro_f1"] == ""


def test_fresh_seeds_are_not_the_searchs():
    seeds = verdict.fresh_seeds(7, 3)
    assert seeds == [1007, 2007, 3007]
    used = set(range(7, 7 + 10))  # the search splits with 7 and initialises fold k with 7 + k
    assert not any(s + k in used for s in seeds for k in range(10))


def test_promotion_rules():
    inc = promotion.Incumbent("3", "f" * 64, "scheme", {"macro_f1": 0.8}, {"lr": 1e-3})
    d = dict(fingerprint="f" * 64, metric="macro_f1", mode="max")
    assert promotion.decide("better", None, new_value=0.1, incumbent_value=None, **d).alias == "champion"
    assert promotion.decide("better", inc, new_value=0.7, incumbent_value=0.8, **d).alias == "challenger"
    assert promotion.decide("better", inc, new_value=0.9, incumbent_value=0.8, **d).alias == "champion"
    assert promotion.decide("always", inc, new_value=0.1, incumbent_value=0.8, **d).alias == "champion"
    assert promotion.decide("never", inc, new_value=0.9, incumbent_value=0.8, **d).alias == "challenger"
    other = dict(d, fingerprint="0" * 64)
    assert promotion.decide("better", inc, new_value=0.1, incumbent_value=0.8, **other).alias == "champion"
    assert promotion.decide("better", inc, new_value=None, incumbent_value=0.8, **d).alias == "challenger"
    assert promotion.needs_retrain(inc, "better", "f" * 64, "another scheme", "macro_f1")
    assert not promotion.needs_retrain(inc, "better", "f" * 64, "scheme", "macro_f1")


def test_outer_folds_are_disjoint_and_cover_the_training_part(data_dir):
    data = load_dataset("breast-tcga")
    n = len(data.split_part("train"))
    tests = [te for _, te in outer_splits(data, 3, 0)]
    assert sorted(np.concatenate(tests).tolist()) == list(range(n))
    outer = load_dataset("breast-tcga@outer=2/3,seed=0")
    assert len(outer) == n and (outer.split == "test").sum() == len(tests[1])
    assert load_dataset("breast-tcga@outer=1/3,seed=0").fingerprint() != outer.fingerprint()


def test_nested_refuses_a_spec_that_already_is_an_outer_fold(data_dir, capsys):
    assert nested.main(["--space", "baseline", "--data", "rosmap:ratio=5@outer=1/3", "--outer-folds", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("error: --data rosmap:ratio=5@outer=1/3: already an outer fold; expected a "
                                             "spec without @outer= (search.nested makes the outer folds, --outer-folds)")


def test_nested_refuses_too_many_outer_folds_in_one_line(data_dir, capsys):
    assert nested.main(["--space", "baseline", "--data", "rosmap:ratio=5", "--outer-folds", "30"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--outer-folds 30: the smallest class" in err[0]
    assert nested.main(["--space", "baseline", "--data", "rosmap:ratio=5", "--outer-folds", "2", "--folds", "20"]) == 2
    assert "fewer than the 20 inner folds" in capsys.readouterr().err
    with pytest.raises(UsageError):
        nested.split_argv(["--outer-folds", "1"])
    assert nested.passed_on(["--name", "x", "--epochs", "2", "--data=y", "--resume", "--seed", "3"]) == \
        ["--epochs", "2", "--seed", "3"]


# --------------------------------------------------------------------------------- end to end
@background.search_fixture(seconds=180)
def searches(storage: Path):
    """A tuned search, a deliberately worse one (1 epoch), and the worse one again with --promote always."""
    common = ["--space", "baseline", "--data", "breast-tcga", "--folds", "3", "--storage", str(storage), "--seed", "3"]
    good = command("search.run", [*common, "--name", "good", "--num-samples", "3", "--epochs", "8", "--top-k", "2",
                                  "--scheduler", "fifo",
                                  "--confirm-repeats", "2", "--points", '{"lr": 0.003, "hidden": 64}'])
    worse = [*common, "--num-samples", "1", "--epochs", "1", "--top-k", "1", "--confirm-repeats", "1", "--references", "none"]
    bad = command("search.run", [*worse, "--name", "bad"])
    forced = command("search.run", [*worse, "--name", "forced", "--promote", "always"])
    return storage, good, bad, forced


def test_confirmation_table_and_champion(searches):
    from mlflow import MlflowClient

    storage, good, _, _ = searches
    assert good.returncode == 0, good.stdout[-3000:] + good.stderr[-3000:]
    rows = list(csv.DictReader((storage / "good" / "confirmation.csv").open()))
    names = [r["candidate"] for r in rows]
    assert {"paper-default", "reference:logreg", "reference:rf"} <= set(names)
    trials = [r for r in rows if r["kind"] == "model" and r["candidate"] != "paper-default"]
    assert len(trials) == 2
    for r in trials:  # fresh folds give other figures than the folds the trial was selected on
        assert r["search_macro_f1"] and float(r["confirmed_macro_f1"]) != float(r["search_macro_f1"])
        assert int(r["n_scores"]) == 6
    assert all(r["search_macro_f1"] for r in rows if r["kind"] == "reference")  # also scored on the search's folds
    best_model = next(r for r in rows if r["kind"] in ("model", "ensemble"))  # the ensemble is a model candidate
    ens = next(r for r in rows if r["kind"] == "ensemble")
    described = json.loads(ens["config"])
    assert int(ens["n_scores"]) == 6 and len(described["members"]) == len(described["weights"]) >= 1
    assert sum(described["weights"]) == pytest.approx(1.0, abs=1e-5)
    assert best_model["p_value"] == "" and all(r["p_value"] for r in rows if r is not best_model)
    client = MlflowClient(f"sqlite:///{storage.resolve()}/mlflow.db")
    versions = [v for v in client.search_model_versions("name = 'baseline-breast-tcga'")
                if client.get_run(v.run_id).data.tags.get("fusetune.search_name") == "good"]
    first = next(v for v in versions if v.tags["fusetune.rank"] == "1")  # the best confirmed model got the alias
    assert float(first.tags["confirmed_macro_f1"]) == pytest.approx(float(best_model["confirmed_macro_f1"]), abs=1e-6)
    assert f"v{first.version} -> alias champion (no champion existed)" in good.stdout
    assert "selection gap of the champion" in good.stdout and "p vs champion" in good.stdout
    results = list(csv.DictReader((storage / "good" / "results.csv").open()))
    assert sorted(r["trial_id"] for r in results if r["status"] == "REFERENCE") == ["reference:hgb", "reference:logreg",
                                                                                    "reference:rf"]
    refs = client.search_runs([client.get_experiment_by_name("fusetune").experiment_id],
                              filter_string="tags.`fusetune.role` = 'reference'")
    assert len(refs) == 3 and all("confirmed_macro_f1" in r.data.metrics for r in refs)
    parent = client.search_runs([client.get_experiment_by_name("fusetune").experiment_id],
                                filter_string="tags.`fusetune.search_name` = 'good' and tags.`fusetune.role` = 'search'")[0]
    assert {"confirmed_macro_f1", "selection_gap"} <= set(parent.data.metrics)


GOLDEN = Path(__file__).parent / "golden" / "confirm-good.json"


def test_a_fixed_seed_search_hands_over_the_recorded_outputs(searches):
    """results.csv, confirmation.csv and the registered versions of the ``good`` search are the ones
    recorded before the driver was split into stages and subpackages (tests/search_outputs.py, with
    code 45832ec): a refactor that changes a trial, a fresh-fold score or a registration fails here.
    A deliberate change of outputs re-records it: ``python tests/search_outputs.py STORAGE good OUTPUT``."""
    from search_outputs import differences, outputs

    storage, good, _, _ = searches
    assert good.returncode == 0, good.stdout[-3000:] + good.stderr[-3000:]
    got = outputs(storage, "good", good.stdout)
    diff = differences(got, json.loads(GOLDEN.read_text()))
    assert not diff, "\n".join(diff[:20])


def test_a_worse_search_leaves_the_champion_and_always_moves_it(searches):
    from mlflow import MlflowClient

    storage, good, bad, forced = searches
    assert good.returncode == 0 and bad.returncode == 0, bad.stdout[-3000:] + bad.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{storage.resolve()}/mlflow.db")
    name = "baseline-breast-tcga"
    versions = {v.version: v for v in client.search_model_versions(f"name = '{name}'")}
    by_run = lambda search: {str(v.version) for v in versions.values()  # noqa: E731
                             if client.get_run(v.run_id).data.tags.get("fusetune.search_name") == search}
    assert "champion stays v" in bad.stdout
    # the worse search retrained the incumbent on its own fresh folds (another scheme: 1 repeat)
    bad_rows = [r["candidate"] for r in csv.DictReader((storage / "bad" / "confirmation.csv").open())]
    assert any(c.startswith("champion:v") for c in bad_rows)
    assert forced.returncode == 0, forced.stdout[-3000:] + forced.stderr[-3000:]
    champion = client.get_model_version_by_alias(name, "champion")
    assert str(champion.version) in by_run("forced")  # --promote always moved it
    challenger = client.get_model_version_by_alias(name, "challenger")
    assert str(challenger.version) in by_run("bad")


@background.search_fixture(seconds=40)
def nested_search(storage: Path):
    out = command("search.nested", ["--space", "baseline", "--data", "breast-tcga", "--outer-folds", "2", "--json",
                                    "--num-samples", "2", "--epochs", "2", "--folds", "2", "--confirm-repeats", "1",
                                    "--references", "logreg", "--top-k", "1", "--storage", str(storage), "--name", "n"])
    return storage, out


def test_nested_json_estimate(nested_search):
    tmp_path, out = nested_search
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert len(report["outer"]) == 2 and set(report["estimate"]) == set(report["std"]) >= {"macro_f1", "accuracy"}
    assert sum(o["test_size"] for o in report["outer"]) == 150  # the outer test folds cover the training part
    assert {"paper-default", "reference:logreg"} == set(report["baselines"])
    assert all(0 <= o["scores"]["macro_f1"] <= 1 for o in report["outer"])
    # every outer search's best single model and its ensemble are scored on the outer fold beside the champion
    assert set(report["models"]) == {"single model", "ensemble"}
    for o in report["outer"]:
        assert o["single"] and o["ensemble"] and o["members"]
        assert o["scores"] == (o["ensemble"] if o["champion"] == "ensemble" else o["single"])
    assert set(report["p_values"]) == {"single model", "ensemble", "paper-default", "reference:logreg"}
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path.resolve()}/mlflow.db")
    exp = client.get_experiment_by_name("fusetune").experiment_id
    (parent,) = client.search_runs([exp], filter_string="tags.`fusetune.role` = 'nested'")
    inner = client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(inner) == 2 and "nested_macro_f1" in parent.data.metrics
