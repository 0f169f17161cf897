"""The persistent Optuna study: how Ray's trials are recorded in it, its checkpoint and restore,
the warm start, the options' one-line errors; against the tiny real search: ``optuna.load_study``
reads it. Slow: a real search with early stopping, extended by ``--resume --num-samples`` and
warm-started from; ``optuna-dashboard`` serving it on 127.0.0.1."""

from __future__ import annotations

import csv
import os
import pickle
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search import run as run_mod
from search.prepare.config import SearchConfig
from search.prepare.errors import UsageError
from search.prepare.resolve import resolve
from search.tune.optuna_storage import (
    RAY_TRIAL_ATTR,
    RETRY_ATTR,
    WARM_START_ATTR,
    PersistentOptunaSearch,
    check_url,
    default_url,
    study_attrs,
    warm_start_trials,
)
from spaces import get_space
from studies import ROOT

FP = "c" * 64


def searcher(url: str | None, name: str = "s", warm=(), fingerprint: str = FP,
             sampler: optuna.samplers.BaseSampler | None = None) -> PersistentOptunaSearch:
    cfg = SearchConfig(space="baseline", data="breast-tcga", metric=("macro_f1",), mode=("max",), name=name)
    space = get_space("baseline")
    return PersistentOptunaSearch(space, metric="macro_f1", mode="max", points_to_evaluate=[space.default_point()],
                                  sampler=sampler or optuna.samplers.RandomSampler(seed=0), study_name=name,
                                  storage_url=url,
                                  attrs=study_attrs(cfg, fingerprint), warm=warm)


def result(epoch: int, value: float, final: bool = False) -> dict:
    return {"macro_f1": value, "training_iteration": epoch, "epoch": epoch, **({"final": True} if final else {})}


def run_three(s: PersistentOptunaSearch) -> None:
    """Trial a finishes, b is stopped by the scheduler after epoch 1, c raises."""
    for tid in "abc":
        assert s.suggest(tid)
    s.on_trial_result("a", result(1, 0.5))
    s.on_trial_complete("a", result(2, 0.7, final=True))       # Tune passes the last result here only
    s.on_trial_complete("b", result(1, 0.4))                   # stopped by ASHA: no "final"
    s.on_trial_result("c", result(1, 0.3))
    s.on_trial_complete("c", error=True)


def sqlite(tmp_path: Path, name: str = "optuna.db") -> str:
    return f"sqlite:///{tmp_path / name}"


# ----------------------------------------------------------------------------- the searcher
def test_trials_are_recorded_as_ray_ended_them(tmp_path):
    url = sqlite(tmp_path)
    run_three(searcher(url))
    study = optuna.load_study(study_name="s", storage=url)
    a, b, c = study.trials
    assert (a.state, a.value, a.intermediate_values) == (TrialState.COMPLETE, 0.7, {1: 0.5, 2: 0.7})
    assert b.state == TrialState.PRUNED and b.intermediate_values == {1: 0.4}
    assert c.state == TrialState.FAIL and c.value is None
    assert [t.user_attrs[RAY_TRIAL_ATTR] for t in study.trials] == ["a", "b", "c"]
    assert a.params == {k: v for k, v in get_space("baseline").default_point().items() if k in a.params}  # default first
    assert study.user_attrs["fusetune.space"] == "baseline" and study.user_attrs["fusetune.data_fingerprint"] == FP
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE


def test_checkpoint_holds_no_study_and_restore_reopens_it(tmp_path):
    url = sqlite(tmp_path)
    s = searcher(url)
    s.suggest("a")
    s.on_trial_result("a", result(1, 0.5))
    s.save(str(tmp_path / "searcher.pkl"))
    s.suggest("lost")                              # asked after the snapshot, then the driver dies
    blob = (tmp_path / "searcher.pkl").read_bytes()
    assert b"RDBStorage" not in blob and b"sqlalchemy" not in blob
    pickle.loads(pickle.dumps(s))                  # tuner.pkl: picklable without the storage

    moved = tmp_path / "moved"
    moved.mkdir()
    (tmp_path / "optuna.db").rename(moved / "optuna.db")  # the results folder moved between sessions
    restored = pickle.loads(pickle.dumps(s))
    restored.storage_url = sqlite(moved)           # what restore_tuner sets: this session's URL
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_complete("a", result(2, 0.6, final=True))
    assert restored.suggest("b")
    study = optuna.load_study(study_name="s", storage=sqlite(moved))
    states = {t.user_attrs[RAY_TRIAL_ATTR]: t.state for t in study.trials}
    assert states == {"a": TrialState.COMPLETE, "lost": TrialState.FAIL, "b": TrialState.RUNNING}
    assert "fusetune.lost" in study.trials[1].user_attrs


@pytest.mark.parametrize("sampler", [lambda: optuna.samplers.RandomSampler(seed=3),
                                     lambda: optuna.samplers.TPESampler(seed=3, n_startup_trials=2)])
def test_a_restored_searcher_draws_what_the_uninterrupted_one_drew(tmp_path, sampler):
    """The sampler's random state is in the searcher's snapshot: after a kill, the resumed search
    samples the trials the uninterrupted search sampled (here all of them, trials ending in the
    same order; with concurrent trials TPE's later draws also depend on which trials had ended)."""
    def fresh(url):
        return searcher(url, sampler=sampler())

    def drive(s, ids, start=0):
        out = []
        for k, tid in enumerate(ids, start):
            out.append(s.suggest(tid))
            s.on_trial_complete(tid, result(2, 0.3 + 0.05 * (k % 4), final=True))
        return out

    ids = [f"t{k}" for k in range(6)]
    whole = drive(fresh(sqlite(tmp_path, "whole.db")), ids)
    first = fresh(sqlite(tmp_path, "cut.db"))
    started = pickle.dumps(first)  # tuner.pkl: written before the first trial
    cut = drive(first, ids[:3])
    first.save(str(tmp_path / "searcher.json"))
    first.suggest("lost")  # asked after the last snapshot; the driver dies
    resumed = pickle.loads(started)
    resumed.restore(str(tmp_path / "searcher.json"))
    cut += drive(resumed, ids[3:], start=3)
    assert cut == whole


def test_in_memory_without_a_url():
    s = searcher(None)
    run_three(s)
    assert [t.state for t in s.study.trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]


# ----------------------------------------------------------------------------- warm start
def warm_cfg(tmp_path: Path, **kw) -> SearchConfig:
    return SearchConfig(**{"space": "baseline", "data": "breast-tcga", "metric": ("macro_f1",), "mode": ("max",),
                           "storage": str(tmp_path), "name": "new", "warm_start": "old", **kw})


def test_warm_start_carries_the_finished_trials(tmp_path):
    (tmp_path / "old").mkdir()
    run_three(searcher(default_url(str(tmp_path / "old")), name="old"))
    warm = warm_start_trials(warm_cfg(tmp_path), FP)
    assert len(warm) == 1 and warm[0].value == 0.7 and warm[0].user_attrs[WARM_START_ATTR] == "old#0"
    s = searcher(sqlite(tmp_path, "new.db"), name="new", warm=warm)
    study = optuna.load_study(study_name="new", storage=sqlite(tmp_path, "new.db"))
    # the carried trial first; the paper default it already evaluated is not enqueued again
    assert [(t.state, t.value, t.params) for t in study.trials] == [(TrialState.COMPLETE, 0.7, warm[0].params)]
    assert s.suggest("x") and len(study.trials) == 2 and study.trials[1].params != warm[0].params


@pytest.mark.parametrize("change, message", [
    ({"fingerprint": "d" * 64}, "--warm-start old: searched another data fingerprint"),
    ({"space": "climd"}, "--warm-start old: searched another space"),
    ({"metric": ("auroc",)}, "--warm-start old: searched another metric"),
    ({"warm_start": "nope"}, "--warm-start nope: no Optuna study file"),
    ({"sampler": "grid"}, "--warm-start old: needs a sampler that learns from finished trials"),
])
def test_warm_start_is_refused_in_one_line(tmp_path, change, message):
    (tmp_path / "old").mkdir()
    run_three(searcher(default_url(str(tmp_path / "old")), name="old"))
    fingerprint = change.pop("fingerprint", FP)
    with pytest.raises(UsageError) as err:
        warm_start_trials(warm_cfg(tmp_path, **change), fingerprint)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- options
@pytest.mark.parametrize("url, message", [
    ("postgresql://me:secret@db.example.org/optuna", "leave the password out"),
    ("not a url", "not a database URL"),
    ("sqlite://", "expected sqlite:///PATH/TO/optuna.db"),
])
def test_bad_storage_url(url, message):
    with pytest.raises(UsageError, match=message) as err:
        check_url(url)
    assert "secret" not in str(err.value)


@pytest.mark.parametrize("argv, message", [
    (["--optuna-storage", "postgresql://me:secret@db/optuna"], "--optuna-storage postgresql://me:***@db/optuna: leave"),
    (["--optuna-storage", "sqlite:////tmp/x.db", "--scheduler", "pbt", "--sampler", "random"],
     "--optuna-storage: --scheduler pbt draws its population without Optuna"),
    (["--warm-start", "s", "--name", "s"], "--warm-start s: must name another, earlier search"),
    (["--optuna-storage", "sqlite:///{tmp}/a-file/optuna.db"], "--optuna-storage sqlite:///{tmp}/a-file/optuna.db: unusable"),
])
def test_options_one_line_exit_2(argv, message, tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a folder")
    argv, message = [a.replace("{tmp}", str(tmp_path)) for a in argv], message.replace("{tmp}", str(tmp_path))
    assert run_mod.main(["--space", "baseline", "--storage", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"python -m search.run: error: {message}") and "\n" not in err and "secret" not in err
    assert not list(tmp_path.glob("*/results.csv"))


def test_new_search_refuses_an_existing_study_in_a_shared_storage(tmp_path, capsys):
    url = sqlite(tmp_path, "shared.db")
    optuna.create_study(study_name="taken", storage=url)
    assert run_mod.main(["--space", "baseline", "--storage", str(tmp_path), "--name", "taken",
                         "--optuna-storage", url]) == 2
    assert "already has a study of that name" in capsys.readouterr().err
    assert resolve(SearchConfig(space="baseline", optuna_storage=url)).optuna_storage == url


# ----------------------------------------------------------------------------- a real search
@pytest.fixture(scope="module")
def tiny(tiny_search):
    return tiny_search


def test_load_study_of_a_real_search(tiny):
    url = f"sqlite:///{tiny['folder'] / 'optuna.db'}"
    assert f"optuna-dashboard {url}" in tiny["output"]
    study = optuna.load_study(study_name=tiny["name"], storage=url)
    with (tiny["folder"] / "results.csv").open(newline="") as f:
        rows = {r["trial_id"]: r for r in csv.DictReader(f) if r["status"] != "REFERENCE"}
    assert {t.user_attrs[RAY_TRIAL_ATTR] for t in study.trials} == set(rows)
    for t in study.trials:  # fifo, all epochs: every trial COMPLETE with its final mean over folds
        row = rows[t.user_attrs[RAY_TRIAL_ATTR]]
        assert t.state == TrialState.COMPLETE and row["final"] == "True"
        assert t.value == pytest.approx(float(row["macro_f1"]))
        assert sorted(t.intermediate_values) == [1, 2]
    assert study.user_attrs["fusetune.space"] == "baseline"


def test_mlflow_parent_run_of_a_real_search(tiny):
    from mlflow import MlflowClient

    from search.tracking.store import ROLE_TAG, SEARCH_NAME_TAG

    client = MlflowClient(tiny["tracking_uri"])
    exp = client.get_experiment_by_name("fusetune")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    (parent,) = client.search_runs([exp.experiment_id], f"tags.`{SEARCH_NAME_TAG}` = 'tiny' and tags.`{ROLE_TAG}` = 'search'")
    with (tiny["folder"] / "results.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] != "REFERENCE"]
    m = parent.data.metrics
    assert (m["trials_completed"], m["trials_pruned"], m["trials_failed"]) == (2, 0, 0)
    assert m["best_macro_f1"] == pytest.approx(max(float(r["macro_f1"]) for r in rows))
    (inp,) = parent.inputs.dataset_inputs
    fingerprint = parent.data.tags["fusetune.data_fingerprint"]
    assert inp.dataset.name == "breast-tcga" and inp.dataset.digest == fingerprint[:36]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.csv", "reports"} <= artifacts


def search(args: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "search.run", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_warm_start_from_other_data_is_refused_before_any_trial(tiny, capsys):
    assert run_mod.main(["--space", "baseline", "--data", "rosmap", "--storage", str(tiny["storage"]),
                         "--name", "other-data", "--warm-start", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m search.run: error: --warm-start tiny: searched another data fingerprint")
    assert not (tiny["storage"] / "other-data" / "results.csv").exists()


@pytest.mark.slow
def test_extend_a_finished_search_and_warm_start_from_it(tmp_path, data_dir):
    """ASHA stops some trials (PRUNED); ``--resume --num-samples`` adds trials to the finished search
    without rerunning or re-logging the first ones; ``--warm-start`` seeds a new search with them."""
    from mlflow import MlflowClient

    common = ["--space", "baseline", "--epochs", "4", "--folds", "2", "--top-k", "0", "--storage", str(tmp_path)]
    first = search([*common, "--num-samples", "5", "--name", "s1"], tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    url = f"sqlite:///{tmp_path / 's1' / 'optuna.db'}"
    before = {t.user_attrs[RAY_TRIAL_ATTR]: t for t in optuna.load_study(study_name="s1", storage=url).trials}
    with (tmp_path / "s1" / "results.csv").open(newline="") as f:
        rows = {r["trial_id"]: r for r in csv.DictReader(f) if r["status"] != "REFERENCE"}
    for tid, t in before.items():
        assert t.state == (TrialState.COMPLETE if rows[tid]["final"] == "True" else TrialState.PRUNED)
    assert len(before) == 5

    assert run_mod.main(["--resume", "--storage", str(tmp_path), "--name", "s1", "--num-samples", "3"]) == 2
    more = search(["--resume", "--storage", str(tmp_path), "--name", "s1", "--num-samples", "7"], tmp_path)
    assert more.returncode == 0, more.stdout[-3000:] + more.stderr[-3000:]
    after = {t.user_attrs[RAY_TRIAL_ATTR]: t for t in optuna.load_study(study_name="s1", storage=url).trials}
    assert len(after) == 7 and set(before) < set(after)
    for tid, t in before.items():  # the finished trials stay as they were
        assert (after[tid].state, after[tid].value, after[tid].datetime_complete) == (t.state, t.value, t.datetime_complete)
    with (tmp_path / "s1" / "results.csv").open(newline="") as f:
        rows_after = {r["trial_id"]: r for r in csv.DictReader(f) if r["status"] != "REFERENCE"}
    assert len(rows_after) == 7 and all(rows_after[t]["duration_s"] == rows[t]["duration_s"] for t in rows)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("fusetune").experiment_id], "tags.`fusetune.search_name` = 's1'")
    roles = sorted(r.data.tags["fusetune.role"] for r in runs)
    assert roles == ["reference"] * 2 + ["search"] + ["trial"] * 7  # one run per trial and reference, none twice
    (parent,) = [r for r in runs if r.data.tags["fusetune.role"] == "search"]
    assert parent.data.metrics["trials_completed"] + parent.data.metrics["trials_pruned"] == 7

    warm = search([*common, "--num-samples", "2", "--name", "s2", "--warm-start", "s1"], tmp_path)
    assert warm.returncode == 0, warm.stdout[-3000:] + warm.stderr[-3000:]
    done = sum(t.state == TrialState.COMPLETE for t in after.values())
    assert f"warm start: {done} finished trials of s1" in warm.stdout
    s2 = optuna.load_study(study_name="s2", storage=f"sqlite:///{tmp_path / 's2' / 'optuna.db'}")
    carried = [t for t in s2.trials if WARM_START_ATTR in t.user_attrs]
    assert len(carried) == done and len(s2.trials) == done + 2
    assert all(t.number < min(u.number for u in s2.trials if u not in carried) for t in carried)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_optuna_dashboard_shows_the_study(tiny):
    """``optuna-dashboard sqlite:///<search>/optuna.db`` on 127.0.0.1 lists the search's study."""
    import json
    import shutil

    exe = shutil.which("optuna-dashboard")
    if exe is None:
        pytest.skip("optuna-dashboard is not installed (pip install -e '.[dashboard]')")
    port = free_port()
    url = f"sqlite:///{tiny['folder'] / 'optuna.db'}"
    proc = subprocess.Popen([exe, url, "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        body = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    body = json.loads(r.read())
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.5)
        assert body is not None, "optuna-dashboard did not answer within 60 s"
        (study,) = [s for s in body["study_summaries"] if s["study_name"] == tiny["name"]]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}", timeout=10) as r:
            detail = json.loads(r.read())
        assert len(detail["trials"]) == 2 and {t["state"] for t in detail["trials"]} == {"Complete"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def listing(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for a folder)."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("argv, message", [
    (["--space", "climd", "--warm-start", "old"], "--warm-start old: searched another space"),
    (["--space", "baseline", "--warm-start", "old"], "--warm-start old: searched another data fingerprint"),
    (["--space", "baseline", "--warm-start", "nope"], "--warm-start nope: no Optuna study file"),
])
def test_a_refused_warm_start_leaves_nothing_behind(tmp_path, capsys, argv, message):
    """Nothing new in the results folder (no search folder, optuna.db or mlflow.db) and the other
    search's folder byte for byte as it was."""
    (tmp_path / "old").mkdir()
    run_three(searcher(default_url(str(tmp_path / "old")), name="old"))
    (tmp_path / "keep.txt").write_text("the user's")
    before = listing(tmp_path)
    assert run_mod.main([*argv, "--data", "breast-tcga", "--storage", str(tmp_path), "--name", "new"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"python -m search.run: error: {message}") and "\n" not in err, err
    assert listing(tmp_path) == before


def test_a_searcher_back_from_tuner_pkl_alone_opens_its_study_again(tmp_path):
    # a driver killed after writing tuner.pkl and before Tune's first snapshot: Tune unpickles the
    # searcher and never calls restore(); its first suggest failed with "'NoneType' object has no
    # attribute 'enqueue_trial'"
    url = sqlite(tmp_path)
    s = searcher(url)
    assert s.suggest("a")
    back = pickle.loads(pickle.dumps(s))
    assert back.suggest("b")
    back.on_trial_complete("a", result(2, 0.6, final=True))
    study = optuna.load_study(study_name="s", storage=url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.RUNNING]
    assert [t.user_attrs[RAY_TRIAL_ATTR] for t in study.trials] == ["a", "b"]


def test_a_trial_told_before_a_restart_is_never_reported_into_again(tmp_path):
    # the searcher's snapshot predates the verdicts (a lost node failed "a"; ASHA stopped "b"; "c"
    # finished): Tune runs "a" again and still reports "b" and "c", which raised
    # UpdateFinishedTrialError ("Trial#0 has already finished and can not be updated")
    url = sqlite(tmp_path)
    s = searcher(url)
    for tid in "abc":
        assert s.suggest(tid)
    snapshot = str(tmp_path / "searcher.json")
    s.save(snapshot)
    s.on_trial_result("a", result(1, 0.5))
    s.on_trial_complete("a", error=True)
    s.on_trial_complete("b", result(1, 0.4))
    s.on_trial_complete("c", result(2, 0.8, final=True))

    resumed = searcher(url)
    resumed.restore(snapshot)
    resumed.on_trial_result("a", result(1, 0.55))  # Tune's retry of "a"
    resumed.on_trial_result("b", result(2, 0.45))
    resumed.on_trial_result("c", result(2, 0.8))
    resumed.on_trial_complete("a", result(2, 0.75, final=True))
    resumed.on_trial_complete("b", result(2, 0.45, final=True))
    resumed.on_trial_complete("c", result(2, 0.8, final=True))
    a, b, c, retry = optuna.load_study(study_name="s", storage=url).trials
    assert (a.state, b.state, c.state) == (TrialState.FAIL, TrialState.PRUNED, TrialState.COMPLETE)
    assert (b.intermediate_values, c.value) == ({1: 0.4}, 0.8)  # the verdicts given before the restart stand
    assert retry.state == TrialState.COMPLETE and retry.value == 0.75 and retry.intermediate_values == {1: 0.55, 2: 0.75}
    assert retry.params == a.params and retry.user_attrs[RETRY_ATTR] == a.number
    assert retry.user_attrs[RAY_TRIAL_ATTR] == "a"
