"""What a resume reads before Tune does: the settled snapshot (search.tune.settle) and a moved results
folder's paths (search.trust.relocate). Small hand-made files; the end-to-end kills are in
tests/test_distributed.py."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from search.prepare.config import SearchConfig
from search.trust.relocate import rebase_mlflow_store, rebased
from search.tune.settle import settle


def _state(exp: Path, trials: dict[str, str]) -> Path:
    data = [[json.dumps({"trial_id": tid, "status": status, "relative_logdir": f"fusetune_baseline_{tid}",
                         "results": "80049500"}),
             json.dumps({"last_result": {"epoch": 2}, "last_result_time": 1.5, "checkpoint_manager": {"_type": "X"}})]
            for tid, status in trials.items()]
    path = exp / "experiment_state-2026-01-01_00-00-00.json"
    path.write_text(json.dumps({"trial_data": data, "runner_data": {"_iteration": 7}}))
    return path


def _final(exp: Path, tid: str, result: dict | str) -> None:
    """What search.tune.settle.RecordFinal writes when Tune hands over a trial's final result."""
    folder = exp / f"fusetune_baseline_{tid}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "final_result.json").write_text(result if isinstance(result, str) else json.dumps(result))


def test_a_trial_whose_final_result_was_recorded_is_settled_terminated(tmp_path):
    path = _state(tmp_path, {"done": "RUNNING", "going": "RUNNING", "ended": "TERMINATED"})
    final = {"epoch": 4, "final": True, "macro_f1": 0.9, "trial_id": "done", "timestamp": 100}
    _final(tmp_path, "done", final)
    (tmp_path / "fusetune_baseline_going").mkdir()
    _final(tmp_path, "ended", {"epoch": 4, "final": True, "trial_id": "ended"})
    assert settle(str(tmp_path)) == {"done": final}
    state = json.loads(path.read_text())
    trials = {json.loads(t)["trial_id"]: (json.loads(t), json.loads(m)) for t, m in state["trial_data"]}
    assert trials["done"][0]["status"] == "TERMINATED" and trials["done"][1]["last_result"] == final
    assert trials["done"][1]["last_result_time"] == 100.0
    assert trials["going"][0]["status"] == "RUNNING" and trials["going"][1]["last_result"] == {"epoch": 2}
    # the rest is copied as it was (pickled fields are never decoded)
    assert trials["done"][0]["results"] == "80049500" and trials["done"][1]["checkpoint_manager"] == {"_type": "X"}
    assert state["runner_data"] == {"_iteration": 7}
    assert settle(str(tmp_path)) == {}  # once is enough


def test_only_a_whole_final_result_of_the_same_trial_settles_it(tmp_path):
    _state(tmp_path, {"a": "RUNNING", "b": "RUNNING", "c": "PENDING"})
    _final(tmp_path, "a", '{"epoch": 4, "final": tr')
    _final(tmp_path, "b", {"epoch": 4, "final": True, "trial_id": "someone-else"})
    _final(tmp_path, "c", {"epoch": 2, "trial_id": "c"})
    assert settle(str(tmp_path)) == {}


def test_a_trial_whose_worker_was_lost_is_unfinished_again_one_whose_model_raised_stays_failed(tmp_path):
    path = _state(tmp_path, {"lost": "ERROR", "raised": "ERROR", "unread": "ERROR"})
    state = json.loads(path.read_text())
    for entry in state["trial_data"]:
        meta = json.loads(entry[1])
        meta.update(error_filename="error.txt", pickled_error_filename="error.pkl")
        entry[1] = json.dumps(meta)
    path.write_text(json.dumps(state))
    errors = {"lost": "ray.exceptions.ActorUnavailableError: The actor 86 is unavailable: The actor is temporarily "
                      "unavailable: RpcError: RPC error: Socket closed",
              "raised": "ray.exceptions.RayTaskError(ValueError): ValueError: the loss is nan at epoch 3"}
    for tid, text in errors.items():
        folder = tmp_path / f"fusetune_baseline_{tid}"
        folder.mkdir()
        (folder / "error.txt").write_text(f"Failure # 1 (occurred at 2026-12-04_03-00-31)\n{text}\n")
    assert settle(str(tmp_path)) == {}
    trials = {json.loads(t)["trial_id"]: (json.loads(t), json.loads(m)) for t, m in json.loads(path.read_text())["trial_data"]}
    assert trials["lost"][0]["status"] == "RUNNING"
    assert trials["lost"][1]["error_filename"] is None and trials["lost"][1]["pickled_error_filename"] is None
    assert trials["raised"][0]["status"] == "ERROR" and trials["raised"][1]["error_filename"] == "error.txt"
    assert trials["unread"][0]["status"] == "ERROR"  # no error.txt to read: left as it is


def test_record_final_writes_the_final_result_at_once(tmp_path):
    import pyarrow.fs

    from search.tune.settle import RecordFinal

    class _Trial:
        path = str(tmp_path / "fusetune_baseline_x")
        storage = type("S", (), {"storage_filesystem": pyarrow.fs.LocalFileSystem()})()

    cb = RecordFinal()
    cb.on_trial_result(0, [], _Trial(), {"epoch": 1, "trial_id": "x"})
    assert not (tmp_path / "fusetune_baseline_x" / "final_result.json").exists()
    cb.on_trial_result(1, [], _Trial(), {"epoch": 2, "final": True, "trial_id": "x", "macro_f1": 0.5})
    assert json.loads((tmp_path / "fusetune_baseline_x" / "final_result.json").read_text())["macro_f1"] == 0.5


def test_saved_options_follow_a_moved_results_folder(tmp_path):
    old, new = tmp_path / "orig", tmp_path / "copy"
    saved = SearchConfig(space="baseline", storage=str(old), name="s", tracking_uri=f"sqlite:///{old}/mlflow.db",
                         optuna_storage=f"sqlite:///{old}/s/optuna.db", cache_dir=str(old / "cache"))
    moved = rebased(saved, str(new))
    assert moved.storage == str(new.resolve()) and moved.experiment_path == f"{new.resolve()}/s"
    assert moved.tracking_uri == f"sqlite:///{new.resolve()}/mlflow.db"
    assert moved.optuna_storage == f"sqlite:///{new.resolve()}/s/optuna.db"
    assert moved.cache_dir == str(new.resolve() / "cache")
    # paths outside the folder (a shared store, a server) are kept
    elsewhere = SearchConfig(space="baseline", storage=str(old), tracking_uri="http://127.0.0.1:5000",
                             cache_dir=str(tmp_path / "shared-cache"))
    assert rebased(elsewhere, str(new)).tracking_uri == "http://127.0.0.1:5000"
    assert rebased(elsewhere, str(new)).cache_dir == str(tmp_path / "shared-cache")
    assert rebased(saved, str(old)) is saved


def test_a_copied_mlflow_store_points_at_its_own_artifacts(tmp_path):
    old, new = str(tmp_path / "orig"), str(tmp_path / "copy")
    Path(new).mkdir()
    db = Path(new) / "mlflow.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table experiments (artifact_location text)")
        conn.execute("create table runs (artifact_uri text)")
        conn.execute("create table model_versions (source text, storage_location text)")
        conn.execute("insert into experiments values (?), (?)", (f"file://{old}/mlartifacts/fusetune", "s3://b/x"))
        conn.execute("insert into runs values (?)", (f"file://{old}/mlartifacts/fusetune/r1/artifacts",))
        conn.execute("insert into model_versions values (?, ?)",
                     ("models:/m-1", f"file://{old}/mlartifacts/fusetune/models/m-1/artifacts"))
    assert rebase_mlflow_store(f"sqlite:///{db}", old, new) == 3
    with sqlite3.connect(db) as conn:
        assert [r[0] for r in conn.execute("select artifact_location from experiments")] == [
            f"file://{new}/mlartifacts/fusetune", "s3://b/x"]
        assert conn.execute("select artifact_uri from runs").fetchone()[0] == f"file://{new}/mlartifacts/fusetune/r1/artifacts"
        assert conn.execute("select * from model_versions").fetchone() == (
            "models:/m-1", f"file://{new}/mlartifacts/fusetune/models/m-1/artifacts")
    assert rebase_mlflow_store(f"sqlite:///{db}", old, new) == 0
    # a store outside the copied folder is not touched
    assert rebase_mlflow_store(f"sqlite:///{db}", old, str(tmp_path / "third")) == 0


def test_the_options_check_and_the_registries_agree():
    # search.prepare.config checks --sampler/--scheduler without importing Ray or Optuna: it reads the names and
    # capabilities search.prepare.registry_names declares, which the registries (whose entries carry the
    # behaviour) take and check at import
    from search.prepare import parse, registry_names
    from search.tune import samplers, schedulers

    assert parse.choices("sampler") == tuple(samplers.SAMPLERS) == tuple(registry_names.SAMPLERS)
    assert parse.choices("scheduler") == tuple(schedulers.SCHEDULERS) == tuple(registry_names.SCHEDULERS)
    assert {n for n, s in samplers.SAMPLERS.items() if s.multi_objective} == {"nsga2", "tpe", "random"}
    assert [n for n, s in schedulers.SCHEDULERS.items() if not schedulers.has_study(
        SearchConfig(space="baseline", scheduler=n))] == ["pbt"]


class _Result:
    """What ``stop_if_lost`` and ``confirm.fill`` read of a Ray ``Result``."""

    def __init__(self, error: BaseException | None = None, config: dict | None = None, metrics: dict | None = None):
        self.error, self.config, self.metrics, self.checkpoint = error, config, metrics or {}, None


def test_a_stage_whose_trial_lost_its_worker_stops_one_whose_model_raised_goes_on():
    from search.tune.settle import TrialsLost, stop_if_lost

    raised = _Result(RuntimeError("TrialFailure: the loss is nan at epoch 3"))
    stop_if_lost([raised, _Result()], "confirmation stage")  # a model's error is its candidate's
    died = type("ActorDiedError", (Exception,), {})(
        "The actor died unexpectedly before finishing this task.\n\tclass_name: ImplicitFunc\nThe actor is dead "
        "because its owner has died. Owner worker exit type: SYSTEM_ERROR Worker exit detail: Owner's node has crashed.")
    with pytest.raises(TrialsLost, match=r"^1 trial\(s\) of the confirmation stage lost their Ray worker "
                                         r"\(ActorDiedError: The actor is dead because its owner has died") as caught:
        stop_if_lost([raised, _Result(died)], "confirmation stage")
    assert caught.value.own_node and "\n" not in str(caught.value)
    with pytest.raises(TrialsLost, match=r"^1 trial\(s\) of the search lost"):  # the driver's own node: the search too
        stop_if_lost([raised, _Result(died)], "search", own_node_only=True)
    worker = type("ActorUnavailableError", (Exception,), {})("The actor is temporarily unavailable: Socket closed")
    with pytest.raises(TrialsLost) as caught:
        stop_if_lost([_Result(worker)], "confirmation stage")
    assert not caught.value.own_node
    stop_if_lost([_Result(worker)], "search", own_node_only=True)  # another node's worker: the search goes on


def test_a_confirmation_trial_that_never_reported_leaves_its_candidate_unfinished():
    from search.select import confirm, verdict

    scheme = verdict.Scheme(2, 0.2, (11,), "macro_f1", "f")
    cand = verdict.Candidate("default", "model", {"lr": 0.01})
    # a lost worker's trial: Ray's Result has no metrics, so no config either
    assert confirm.fill([cand], scheme, [_Result(RuntimeError("lost"))])[0].error == "a confirmation trial did not finish"
