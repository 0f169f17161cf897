"""``python -m search.run``: options, bad input, an end-to-end search, a failing trial."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import background
from search import run as run_mod
from search.prepare.cli import parse_args
from search.prepare.config import SearchConfig
from search.prepare.errors import UsageError
from search.prepare.resolve import resolve
from spaces import SPACES, get_space

REPO = Path(__file__).resolve().parents[1]


def search(args: list[str], timeout: int = 600, pythonpath: tuple[Path, ...] = ()) -> subprocess.CompletedProcess:
    env = dict(background.environ(), PYTHONPATH=os.pathsep.join(map(str, (*pythonpath, REPO))))
    env.pop("RAY_ADDRESS", None)  # a local cluster of its own
    return subprocess.run([sys.executable, "-m", "search.run", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def read_rows(storage: Path) -> list[dict[str, str]]:
    (path,) = storage.glob("*/results.csv")
    with path.open(newline="") as f:
        return [r for r in csv.DictReader(f) if r["status"] != "REFERENCE"]  # the trials


def config_of(row: dict[str, str]) -> dict:
    return {k[len("config/"):]: json.loads(v) for k, v in row.items() if k.startswith("config/") and v != ""}


# --------------------------------------------------------------------------------- options
def test_defaults_follow_the_space():
    cfg = resolve(SearchConfig(**parse_args(["--space", "omnifuse"])))
    assert (cfg.data, cfg.metric, cfg.mode, cfg.epochs, cfg.folds, cfg.sampler, cfg.scheduler) == \
        ("breast-tcga", ("macro_f1",), ("max",), 100, 5, "tpe", "asha")
    assert cfg.name.startswith("omnifuse-breast-tcga-")
    token = resolve(SearchConfig(space="alignedfusion"))
    assert (token.data, token.image_encoder, token.text_encoder) == ("synth-clinic", "vit-tiny", "minilm")
    nsga = resolve(SearchConfig(space="climd", sampler="nsga2"))
    assert (nsga.metric, nsga.mode) == (("macro_f1", "macro_f1_std"), ("max", "min"))
    two = resolve(SearchConfig(space="climd", metric=("macro_f1", "loss")))
    assert two.mode == ("max", "min")


def test_config_file_and_flags(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({"space": "climd", "num-samples": 7, "epochs": 9, "metric": ["auroc"],
                                 "points": [{"gamma": 0.5}], "resume": False}))
    given = parse_args(["--config", str(f), "--epochs", "4"])
    cfg = resolve(SearchConfig(**given))
    assert (cfg.space, cfg.num_samples, cfg.epochs, cfg.metric, cfg.points) == ("climd", 7, 4, ("auroc",), ({"gamma": 0.5},))


BAD = [
    (["--space", "nope"], "--space nope: unknown space"),
    (["--space", "omnifuse", "--sampler", "bayes"], "--sampler: invalid choice: 'bayes'"),
    (["--space", "omnifuse", "--scheduler", "pb2"], "--scheduler: invalid choice: 'pb2'"),
    (["--space", "omnifuse", "--metric", "dice"], "--metric dice: not a metric this task computes"),
    (["--space", "omnifuse", "--metric", "macro_f1", "--mode", "up"], "--mode up: unknown"),
    (["--space", "omnifuse", "--folds", "1"], "--folds 1: must be 0"),
    (["--space", "omnifuse", "--sampler", "cmaes", "--metric", "macro_f1,auroc"], "--sampler cmaes: optimises one objective"),
    (["--space", "omnifuse", "--scheduler", "pbt", "--sampler", "grid"], "--sampler grid: PBT"),
    (["--space", "omnifuse", "--points", '{"gamma": 0.3}'],
     "--points {\"gamma\": 0.3}: 'gamma' is not a dimension of space omnifuse"),
    (["--space", "omnifuse", "--points", '{"lr": -5}'],
     "--points {\"lr\": -5}: lr=-5 is outside the space (float [1e-05, 0.01] log)"),
    (["--space", "omnifuse", "--points", '{"lr": 10}'], "--points {\"lr\": 10}: lr=10 is outside the space"),
    (["--space", "omnifuse", "--points", '{"batch_size": 48}'], "batch_size=48 is outside the space (choice {16, 32, 64, 128})"),
    (["--space", "omnifuse", "--points", '{"K": "five"}'], 'K="five" is outside the space (int [1, 8])'),
    (["--space", "omnifuse-ablation", "--points", '{"dwfuse": false, "beta": 0.5}'],
     "beta is not searched when dwfuse=True does not hold"),
    (["--space", "omnifuse", "--tracking-uri", "http://alice:s3cr3t@127.0.0.1:9"],
     "--tracking-uri http://alice:***@127.0.0.1:9: leave the credentials out of the URI (it holds a password"),
    (["--space", "omnifuse", "--folds", "40"], "--folds 40 (stratified k-fold): smallest class has"),
    (["--space", "omnifuse", "--points", "lr=1"], "not JSON"),
    (["--space", "omnifuse", "--epochs", "ten"], "--epochs ten: expected an integer >= 1"),
    (["--epochs", "3"], "--space is required"),
    (["--space", "omnifuse", "--tracking-uri", "http://127.0.0.1:9"], "--tracking-uri http://127.0.0.1:9"),
    (["--space", "omnifuse", "--address", "127.0.0.1:9"], "--address 127.0.0.1:9: cannot reach"),
    (["--space", "alignedfusion", "--data", "breast-tcga"], "needs text and image modalities"),
    (["--space", "omnifuse", "--data", "no-such-data"], "--data no-such-data"),
    (["--resume"], "--resume: no search to resume"),
    (["--space", "omnifuse", "--confirm-repeats", "1000000000"],
     "--confirm-repeats 1000000000: expected an integer from 0 to 100"),
    (["--space", "omnifuse", "--references", ""], "--references: empty value ''; give logreg, rf, hgb"),
    (["--space", "omnifuse", "--references", ","], "--references: empty value ','"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys, data_dir):
    rc = run_mod.main([*argv, "--storage", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1, err
    assert message in err


def test_the_confirm_repeats_maximum_is_the_documented_one():
    from search.prepare.cli import build_parser
    from search.prepare.config import MAX_CONFIRM_REPEATS

    (action,) = [a for a in build_parser()._actions if a.dest == "confirm_repeats"]
    assert f"at most {MAX_CONFIRM_REPEATS} (default 3)" in action.help
    assert resolve(SearchConfig(space="omnifuse", confirm_repeats=MAX_CONFIRM_REPEATS)).confirm_repeats == 100
    with pytest.raises(UsageError, match=f"--confirm-repeats {MAX_CONFIRM_REPEATS + 1}: expected an integer from 0 to "
                                         f"{MAX_CONFIRM_REPEATS}"):
        resolve(SearchConfig(space="omnifuse", confirm_repeats=MAX_CONFIRM_REPEATS + 1))


def test_bad_config_file(tmp_path, capsys):
    f = tmp_path / "s.yaml"
    f.write_text("space: omnifuse\nnum_trials: 3\n")
    assert run_mod.main(["--config", str(f)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"--config {f}: unknown key 'num_trials'")
    with pytest.raises(UsageError, match="cannot read"):
        parse_args(["--config", str(tmp_path / "missing.yaml")])


def test_more_gpus_than_the_cluster_has(tmp_path):
    out = search(["--space", "baseline", "--gpus-per-trial", "64", "--storage", str(tmp_path)], timeout=180)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("python -m search.run: error: --gpus-per-trial 64: the cluster has")
    assert not list(tmp_path.glob("*/results.csv"))  # no trial started
    assert not list(tmp_path.iterdir())  # refused after Ray started: no search folder, optuna.db nor mlflow.db


# --------------------------------------------------------------------------------- end to end
@background.search_fixture(seconds=55)
def omnifuse_search(storage: Path):
    out = search(["--space", "omnifuse", "--num-samples", "4", "--epochs", "3", "--storage", str(storage),
                  "--name", "e2e", "--top-k", "1", "--seed", "1", "--confirm-repeats", "1"])
    return storage, out


def test_end_to_end_results(omnifuse_search):
    storage, out = omnifuse_search
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = read_rows(storage)
    assert len(rows) == 4
    space = get_space("omnifuse")
    default = space.default_config()
    assert {k: config_of(rows[0]).get(k) for k in default} == default  # trial 1 = paper default
    for row in rows:
        config = config_of(row)
        assert space.validate({k: v for k, v in config.items() if k in space.names or k in space.fixed}) == []
        assert config["method"] == "omnifuse" and config["epochs"] == 3 and config["seed"] == 1
        assert row["status"] == "TERMINATED" and float(row["duration_s"]) > 0
        assert 0.0 <= float(row["macro_f1"]) <= 1.0
    finished = [r for r in rows if r["final"] == "True"]
    assert finished and all(r["fold4_macro_f1"] != "" for r in finished)
    # the progress line, the table and the commands a user needs
    assert "trials 4/4 done" in out.stdout
    assert "top " in out.stdout and "±" in out.stdout
    assert f"MLflow: fusetune ui --storage {storage}" in out.stdout
    assert json.loads((storage / "e2e" / "search.json").read_text())["space"] == "omnifuse"


def test_end_to_end_mlflow(omnifuse_search):
    from mlflow import MlflowClient

    from search.tracking.store import PARENT_RUN_TAG, ROLE_TAG, SEARCH_NAME_TAG

    storage, out = omnifuse_search
    assert out.returncode == 0
    client = MlflowClient(f"sqlite:///{storage.resolve()}/mlflow.db")
    exp = client.get_experiment_by_name("fusetune")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get(SEARCH_NAME_TAG) == "e2e" and r.data.tags.get(ROLE_TAG) == "search"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get(PARENT_RUN_TAG) == parents[0].info.run_id]
    # the trials, the references (logreg, rf, hgb) and the ensemble the confirmation stage selected
    assert sorted(c.data.tags.get(ROLE_TAG) for c in children) == ["ensemble"] + ["reference"] * 3 + ["trial"] * 4
    models = [c for c in children if c.data.tags.get(ROLE_TAG) in ("trial", "ensemble")]
    for child in models:
        if child.data.tags.get(ROLE_TAG) == "trial":
            assert {"beta", "lambda1", "lambda2", "lambda3", "K", "lr"} <= set(child.data.params)
    champion = client.get_model_version_by_alias("omnifuse-breast-tcga", "champion")
    assert champion.run_id in {c.info.run_id for c in models}


def test_every_epoch_in_mlflow_only_top_checkpoints_kept_and_a_resume_reruns_nothing(omnifuse_search):
    """Trials report to Tune only at ASHA's rung (epoch 1) and the last epoch; epoch 2 comes in
    the last report's curve. The ended search kept the top-1 trial's checkpoint only, and
    resuming it (as after a kill) reruns no trial."""
    from mlflow import MlflowClient

    storage, out = omnifuse_search
    assert out.returncode == 0
    assert "steps: startup" in out.stdout and "search " in out.stdout.split("steps: ")[-1]
    rows = read_rows(storage)
    client = MlflowClient(f"sqlite:///{storage.resolve()}/mlflow.db")
    exp = client.get_experiment_by_name("fusetune")
    children = {r.data.tags["fusetune.trial_id"]: r for r in client.search_runs(
        [exp.experiment_id], filter_string="tags.`fusetune.role` = 'trial' and tags.`fusetune.search_name` = 'e2e'")}
    for row in rows:
        steps = sorted(m.step for m in client.get_metric_history(children[row["trial_id"]].info.run_id, "macro_f1"))
        assert steps == list(range(1, int(row["epochs_done"]) + 1))
    kept = {p.parent.name.rsplit("_", 1)[-1] for p in (storage / "e2e").glob("fusetune_*/checkpoint_*")}
    ranked = sorted((r for r in rows if r["final"] == "True"), key=lambda r: -float(r["macro_f1"]))
    assert kept == {ranked[0]["trial_id"]}
    again = search(["--resume", "--storage", str(storage), "--name", "e2e"])
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert [(r["trial_id"], r["status"], r["epochs_done"]) for r in read_rows(storage)] == \
        [(r["trial_id"], r["status"], r["epochs_done"]) for r in rows]


def test_same_name_again_is_refused(omnifuse_search, capsys):
    storage, _ = omnifuse_search
    assert run_mod.main(["--space", "omnifuse", "--storage", str(storage), "--name", "e2e"]) == 2
    assert "add --resume" in capsys.readouterr().err


POISON_LR = 0.0098765
"""An lr inside the baseline space whose trials the test's sitecustomize makes diverge (a point
outside the space, such as lr=1e30, is refused before the search starts)."""

POISON_SITE = f"""
import trainables.trainable as _trainable
_step = _trainable.Trial.step
def _diverging(self):
    if self.config.get("lr") == {POISON_LR!r}:  # the first epoch's loss of fold 0 comes out NaN
        _trainable.check_finite({{"loss": float("nan")}}, self.epoch + 1, 0)
    return _step(self)
_trainable.Trial.step = _diverging
"""


def test_a_step_reported_again_after_a_resume_is_not_warned_about():
    """A trial resumed from a checkpoint reports the epochs after it again; Optuna keeps the first
    value and warns, once per epoch, in the driver's output: quiet_libraries silences exactly that."""
    import warnings

    import optuna

    trial = optuna.create_study(storage=optuna.storages.InMemoryStorage()).ask()
    trial.report(0.5, step=13)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trial.report(0.6, step=13)
        assert [str(w.message) for w in caught] == ["The reported value is ignored because this `step=13` is already reported."]
        run_mod.quiet_libraries()
        trial.report(0.7, step=13)
        warnings.warn("another warning", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught][1:] == ["another warning"]


@background.search_fixture(seconds=35)
def failing_search(folder: Path):
    """A search whose first drawn point (``--points``) gives a NaN loss (a sitecustomize that every
    Ray worker imports poisons that learning rate)."""
    site = folder / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(POISON_SITE)  # imported by the driver and every Ray worker
    storage = folder / "results"
    out = search(["--space", "baseline", "--num-samples", "3", "--epochs", "2", "--folds", "2", "--top-k", "0",
                  "--confirm-repeats", "0", "--references", "none", "--max-concurrent", "1",
                  "--scheduler", "fifo", "--storage", str(storage), "--points", json.dumps({"lr": POISON_LR})],
                 pythonpath=(site,))
    return storage, out


def test_failing_trial_is_recorded_and_the_search_goes_on(failing_search):
    storage, out = failing_search
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = read_rows(storage)
    assert [r["status"] for r in rows] == ["TERMINATED", "ERROR", "TERMINATED"]  # default, the NaN point, a TPE draw
    assert config_of(rows[1])["lr"] == POISON_LR
    assert rows[1]["error"].startswith("non-finite training loss at epoch 1, fold 0: loss=nan")
    assert rows[2]["final"] == "True"                        # the trial after the failure still ran to the end
    assert "failed: non-finite training loss" in out.stdout  # one line in the progress output
    assert "Traceback" not in out.stdout + out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SPACES))
def test_every_space_completes(name, tmp_path, data_dir):
    """The issue's acceptance run: 4 trials x 3 epochs per space on its default data."""
    out = search(["--space", name, "--num-samples", "4", "--epochs", "3", "--storage", str(tmp_path), "--name", "s"],
                 timeout=3000)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = read_rows(tmp_path)
    assert len(rows) == 4 and all(r["status"] == "TERMINATED" for r in rows)
    default = get_space(name).default_config()
    assert {k: config_of(rows[0]).get(k) for k in default} == default
    assert "(best = alias champion)" in out.stdout


@pytest.mark.slow
def test_search_against_a_real_mlflow_server(mlflow_server, tmp_path, data_dir):
    from mlflow import MlflowClient

    from search.tracking.store import PARENT_RUN_TAG, ROLE_TAG, SEARCH_NAME_TAG

    out = search(["--space", "baseline", "--num-samples", "3", "--epochs", "2", "--folds", "2", "--top-k", "1",
                  "--storage", str(tmp_path), "--name", "served", "--tracking-uri", mlflow_server.uri])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"MLflow: open {mlflow_server.uri}" in out.stdout
    client = MlflowClient(mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name("fusetune").experiment_id], max_results=200)
    (parent,) = [r for r in runs if r.data.tags.get(SEARCH_NAME_TAG) == "served" and r.data.tags.get(ROLE_TAG) == "search"]
    assert len([r for r in runs if r.data.tags.get(PARENT_RUN_TAG) == parent.info.run_id]) == 3
    assert client.get_model_version_by_alias("baseline-breast-tcga", "champion").run_id != parent.info.run_id


@pytest.mark.parametrize("storage_exists", [True, False])
def test_a_refused_data_folder_leaves_nothing_behind(tmp_path, capsys, storage_exists):
    data = tmp_path / "data"
    data.mkdir()
    (data / "labels.csv").write_text("sample_id,label\np0,a\np1,a\n")  # one class
    (data / "ehr.csv").write_text("sample_id,x\np0,1\np1,2\n")
    storage = tmp_path / "results"
    if storage_exists:
        storage.mkdir()
        (storage / "keep.txt").write_text("the user's")
    before = sorted(map(str, tmp_path.rglob("*")))
    assert run_mod.main(["--space", "baseline", "--data", str(data), "--storage", str(storage), "--name", "s"]) == 2
    err = capsys.readouterr().err.strip()
    assert "labels.csv" in err and "only one class" in err and "\n" not in err, err
    assert sorted(map(str, tmp_path.rglob("*"))) == before  # no search folder, optuna.db nor mlflow.db
