"""search.tracking (callback, store, results): the MLflow callback against the default SQLite store and a real ``mlflow server``.

The hooks are driven with small fake trials (what Ray Tune passes: ``trial_id``, ``config``,
``status``, ``str(trial)``, ``get_pickled_error``), plus one real Tuner run with a trivial trainable.
"""

from __future__ import annotations

import json
import os
import pickle
import time

import pytest
from mlflow.tracking import MlflowClient

from mlflow_server import free_port, sqlite_store
from search.prepare.errors import UsageError
from search.tracking.callback import MLflowTracking
from search.tracking.results import result_metrics, trial_error_reason
from search.tracking.store import check_tracking_uri, default_tracking_uri


class TrialFailure(RuntimeError):
    """Stands in for the trainable's one-line failure."""


class FakeRayTaskError(Exception):
    """What Ray pickles for a failed trial: a wrapper whose ``cause`` is the trainable's exception."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__("Traceback (most recent call last):\n  ...many lines...")
        self.cause = cause


class FakeTrial:
    def __init__(self, trial_id: str, config: dict, error: BaseException | None = None) -> None:
        self.trial_id = trial_id
        self.config = config
        self.status = "RUNNING"
        self.error = error
        self.error_file = None
        self.num_failures = 0
        self.last_result: dict = {}

    def __str__(self) -> str:
        return f"trainable_{self.trial_id}"

    def get_pickled_error(self):
        return None if self.error is None else FakeRayTaskError(self.error)


def result(epoch: int, loss: float, f1: float, *, final: bool = False, folds: int = 2) -> dict:
    r = {"epoch": epoch, "loss": loss, "macro_f1": f1, "macro_f1_std": 0.01, "accuracy": f1 + 0.1,
         "data_fingerprint": "fp123", "code_version": "v0.1", "training_iteration": epoch,
         "time_this_iter_s": 0.1, "time_total_s": 0.1 * epoch, "config": {"lr": 0.1}, "done": False, "pid": 1}
    if final:
        r["final"] = True
        for k in range(folds):
            r[f"fold{k}_macro_f1"] = f1 + 0.01 * k
    return r


def children(client: MlflowClient, exp_id: str, name: str) -> dict[str, object]:
    runs = client.search_runs([exp_id], filter_string="tags.`fusetune.role` = 'trial' and "
                                                      f"tags.`fusetune.search_name` = '{name}'")
    return {r.data.tags["fusetune.trial_id"]: r for r in runs}


def parents(client: MlflowClient, exp_id: str, name: str) -> list:
    return client.search_runs([exp_id], filter_string="tags.`fusetune.role` = 'search' and "
                                                      f"tags.`fusetune.search_name` = '{name}'")


def new_callback(uri: str, name: str = "s1", **kw) -> MLflowTracking:
    return MLflowTracking(uri, "fusetune-test", name,
                          {"space": "omnifuse", "dataset": "rosmap", "data_fingerprint": "fp123",
                           "code_version": "v0.1", "sampler": "tpe", "scheduler": "asha"},
                          {"num_samples": 2, "epochs": 3, "metric": "macro_f1", "folds": 2}, **kw)


def run_search(cb: MLflowTracking, ok: FakeTrial, bad: FakeTrial) -> None:
    cb.setup(num_samples=2)
    cb.on_trial_start(0, [ok, bad], ok)
    cb.on_trial_start(0, [ok, bad], bad)
    for e in (1, 2, 3):
        cb.on_trial_result(e, [ok, bad], ok, result(e, 1.0 / e, 0.5 + 0.1 * e, final=e == 3))
    cb.on_trial_result(1, [ok, bad], bad, result(1, 0.9, 0.4))
    ok.status, ok.last_result = "TERMINATED", result(3, 1 / 3, 0.8, final=True)
    early = FakeTrial("t_00002", {"epochs": 3, "lr": 0.5})
    cb.on_trial_start(0, [ok, bad, early], early)
    cb.on_trial_result(1, [ok, bad, early], early, result(1, 0.9, 0.3))
    early.status, early.last_result = "TERMINATED", result(1, 0.9, 0.3)
    cb.on_trial_complete(4, [ok, bad, early], early)
    cb.on_trial_complete(4, [ok, bad], ok)
    bad.status = "ERROR"
    cb.on_trial_error(4, [ok, bad], bad)
    cb.on_experiment_end([ok, bad])


def check_search(uri: str, cb: MLflowTracking) -> None:
    client = MlflowClient(uri)
    (parent,) = parents(client, cb.experiment_id, cb.search_name)
    assert parent.info.run_id == cb.parent_run_id and parent.info.status == "FINISHED"
    assert parent.data.tags["space"] == "omnifuse" and parent.data.tags["data_fingerprint"] == "fp123"
    assert parent.data.tags["sampler"] == "tpe" and parent.data.tags["scheduler"] == "asha"
    assert parent.data.params == {"num_samples": "2", "epochs": "3", "metric": "macro_f1", "folds": "2"}
    runs = children(client, cb.experiment_id, cb.search_name)
    assert set(runs) >= {"t_00000", "t_00001"}
    ok, bad = runs["t_00000"], runs["t_00001"]
    if "t_00002" in runs:  # stopped by the scheduler after 1 of its 3 epochs
        early = runs.pop("t_00002")
        assert early.info.status == "FINISHED" and early.data.tags["fusetune.stopped_early"] == "true"
        assert early.data.tags["fusetune.epochs_done"] == "1"
    assert set(runs) == {"t_00000", "t_00001"}
    for r in (ok, bad):
        assert r.data.tags["mlflow.parentRunId"] == cb.parent_run_id
        assert r.data.tags["data_fingerprint"] == "fp123" and r.data.tags["code_version"] == "v0.1"
    assert "fusetune.stopped_early" not in ok.data.tags
    assert ok.data.params == {"lr": "0.01", "beta": "0.5", "text_encoder": "None", "method": "omnifuse"}
    assert ok.info.status == "FINISHED" and "error" not in ok.data.tags
    hist = client.get_metric_history(ok.info.run_id, "macro_f1")
    assert [(m.step, round(m.value, 6)) for m in sorted(hist, key=lambda m: m.step)] == [(1, 0.6), (2, 0.7), (3, 0.8)]
    assert ok.data.metrics["fold0_macro_f1"] == pytest.approx(0.8) and ok.data.metrics["fold1_macro_f1"] == pytest.approx(0.81)
    assert not {"training_iteration", "time_this_iter_s", "pid", "config/lr"} & set(ok.data.metrics)
    assert bad.info.status == "FAILED"
    assert bad.data.tags["error"] == "TrialFailure: NaN loss at epoch 2"


def trials() -> tuple[FakeTrial, FakeTrial]:
    ok = FakeTrial("t_00000", {"lr": 0.01, "beta": 0.5, "text_encoder": None, "method": "omnifuse"})
    bad = FakeTrial("t_00001", {"lr": 10.0, "beta": 0.1, "text_encoder": None, "method": "omnifuse"},
                    error=TrialFailure("NaN loss at epoch 2"))
    return ok, bad


# ----------------------------------------------------------------------------- URIs
def test_default_tracking_uri_is_sqlite_in_results_folder(tmp_path):
    uri = default_tracking_uri(tmp_path / "results")
    assert uri == f"sqlite:///{(tmp_path / 'results' / 'mlflow.db').resolve().as_posix()}"
    check_tracking_uri(uri)  # creates the folder and the store
    assert (tmp_path / "results" / "mlflow.db").is_file()
    cb = new_callback(uri)
    cb.setup()
    cb.close()
    location = MlflowClient(uri).get_experiment(cb.experiment_id).artifact_location
    assert location == (tmp_path / "results" / "mlartifacts" / "fusetune-test").resolve().as_uri()


@pytest.mark.parametrize("uri, expected", [
    ("/some/folder", "plain folder stores are not supported"),
    ("file:///some/folder", "plain folder stores are not supported"),
    ("sqlite://", "expected sqlite:///PATH"),
    ("sqlite:///:memory:", "expected sqlite:///PATH"),
    ("nosuchscheme://host/x", "unusable tracking store"),
])
def test_check_tracking_uri_rejects_bad_uris(uri, expected):
    with pytest.raises(UsageError) as e:
        check_tracking_uri(uri)
    assert expected in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith(f"--tracking-uri {uri}")


def test_check_tracking_uri_unreachable_server_fails_fast():
    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(UsageError, match="tracking server unreachable") as e:
        check_tracking_uri(uri, timeout=2)
    assert "\n" not in str(e.value)
    print(f"unreachable tracking URI refused in {time.monotonic() - t0:.2f} s")


# ----------------------------------------------------------------------------- helpers
def test_result_metrics_keeps_metrics_drops_bookkeeping():
    m = result_metrics(result(3, 0.2, 0.7, final=True))
    assert m["loss"] == 0.2 and m["fold1_macro_f1"] == pytest.approx(0.71) and m["time_total_s"] == pytest.approx(0.3)
    assert "final" not in m and "config/lr" not in m and "training_iteration" not in m and "pid" not in m


def test_trial_error_reason_is_the_original_exception_in_one_line(tmp_path):
    assert trial_error_reason(FakeTrial("x", {}, TrialFailure("NaN loss"))) == "TrialFailure: NaN loss"
    t = FakeTrial("y", {})  # only the text trace survives (unpicklable error)
    t.error_file = tmp_path / "error.txt"
    t.error_file.write_text("Failure # 1\nTraceback (most recent call last):\n  File x\nmypkg.errors.TrialFailure: bad shape\n\n")
    assert trial_error_reason(t) == "TrialFailure: bad shape"


# ----------------------------------------------------------------------------- SQLite store
def test_parent_and_child_runs_sqlite(tmp_path):
    uri = sqlite_store(tmp_path)
    cb = new_callback(uri)
    run_search(cb, *trials())
    assert cb.pending() == 0 and cb.dropped == 0
    check_search(uri, cb)


def test_resume_reuses_runs_and_never_duplicates(tmp_path):
    uri = sqlite_store(tmp_path)
    ok, bad = trials()
    bad.error = None
    cb = new_callback(uri)
    cb.setup()
    cb.on_trial_start(0, [], ok)
    cb.on_trial_start(0, [], bad)
    for e in (1, 2, 3):
        cb.on_trial_result(e, [], ok, result(e, 1.0 / e, 0.5 + 0.1 * e, final=e == 3))
    cb.on_trial_complete(4, [], ok)
    cb.on_trial_result(5, [], bad, result(1, 0.9, 0.4))
    cb.on_trial_result(6, [], bad, result(2, 0.8, 0.45))
    assert cb.flush(30)
    state = cb.get_state()
    cb.close()  # the driver dies here: no on_experiment_end

    # a new driver (Tune restores the pickled callback and its state), the unfinished trial resumes
    # from a checkpoint taken at epoch 1, so epoch 2 is reported a second time
    for restored_state in (state, None):  # with the saved state, and with nothing but the tags
        cb2 = pickle.loads(pickle.dumps(new_callback(uri)))
        if restored_state is not None:
            cb2.set_state(restored_state)
        cb2.setup()
        cb2.on_trial_start(0, [], bad)
        cb2.on_trial_result(1, [], bad, result(2, 0.8, 0.45))
        cb2.on_trial_result(2, [], bad, result(3, 0.7, 0.5, final=True))
        cb2.on_trial_result(2, [], ok, result(3, 0.0, 0.0, final=True))  # finished trial: ignored
        cb2.on_trial_complete(3, [], bad)
        ok.status = bad.status = "TERMINATED"
        cb2.on_experiment_end([ok, bad])
        assert cb2.parent_run_id == cb.parent_run_id

        client = MlflowClient(uri)
        assert len(parents(client, cb.experiment_id, cb.search_name)) == 1
        runs = children(client, cb.experiment_id, cb.search_name)
        assert len(runs) == 2
        steps = sorted(m.step for m in client.get_metric_history(runs["t_00001"].info.run_id, "loss"))
        assert steps == [1, 2, 3]
        history = client.get_metric_history(runs["t_00000"].info.run_id, "loss")
        assert [m.value for m in history if m.step == 3] == [pytest.approx(1 / 3)]
        assert runs["t_00000"].info.status == runs["t_00001"].info.status == "FINISHED"


def test_trial_lost_with_a_killed_driver_is_superseded_on_resume(tmp_path):
    # a trial started after Tune's last snapshot dies with the driver; the resumed search never
    # sees it again (it samples a new trial instead), so its RUNNING run must not stay RUNNING
    uri = sqlite_store(tmp_path)
    kept, lost, fresh = FakeTrial("t_keep", {"lr": 0.1}), FakeTrial("t_lost", {"lr": 0.2}), FakeTrial("t_new", {"lr": 0.3})
    cb = new_callback(uri)
    cb.setup()
    cb.on_trial_start(0, [], kept)
    cb.on_trial_start(0, [], lost)
    cb.on_trial_result(1, [], lost, result(1, 0.9, 0.4))
    assert cb.flush(30)
    cb.close()  # SIGKILL: no on_experiment_end

    cb2 = new_callback(uri)
    cb2.setup()
    cb2.on_step_begin(0, [kept])  # the restored search holds the trial of the last snapshot only
    for t in (kept, fresh):
        cb2.on_trial_start(0, [], t)
        cb2.on_trial_result(1, [], t, result(1, 0.5, 0.6, final=True))
        cb2.on_trial_complete(2, [], t)
        t.status = "TERMINATED"
    cb2.on_experiment_end([kept, fresh])
    client = MlflowClient(uri)
    runs = children(client, cb2.experiment_id, cb2.search_name)
    # the lost trial's run is out of the search's trial runs, superseded by the trial sampled in its place
    assert sorted(runs) == ["t_keep", "t_new"]
    assert runs["t_keep"].info.status == runs["t_new"].info.status == "FINISHED"
    (old,) = client.search_runs([cb2.experiment_id], filter_string="tags.`fusetune.trial_id` = 't_lost'")
    assert old.info.status == "KILLED" and "killed driver" in old.data.tags["error"]
    assert old.data.tags["fusetune.superseded_by"] == "t_new" and old.data.tags["fusetune.role"] == "superseded"
    # a later session leaves it as it is
    cb3 = new_callback(uri)
    cb3.setup()
    cb3.on_step_begin(0, [kept, fresh])
    cb3.on_experiment_end([kept, fresh])
    assert client.get_run(old.info.run_id).data.tags["fusetune.superseded_by"] == "t_new"
    assert sorted(children(client, cb2.experiment_id, cb2.search_name)) == ["t_keep", "t_new"]


def test_state_from_another_tracking_store_is_not_reused(tmp_path):
    old_uri = sqlite_store(tmp_path / "old")
    cb = new_callback(old_uri)
    ok, _ = trials()
    cb.setup()
    cb.on_trial_start(0, [], ok)
    cb.on_trial_result(1, [], ok, result(1, 1.0, 0.6))
    assert cb.flush(30)
    state = cb.get_state()
    cb.close()

    new_uri = sqlite_store(tmp_path / "new")
    cb2 = new_callback(new_uri)
    cb2.set_state(state)
    cb2.setup()
    cb2.on_trial_result(2, [], ok, result(2, 0.5, 0.7))
    cb2.on_trial_complete(3, [], ok)
    cb2.on_experiment_end([ok])
    assert cb2.parent_run_id != cb.parent_run_id and cb2.pending() == 0
    (run,) = children(MlflowClient(new_uri), cb2.experiment_id, cb2.search_name).values()
    assert run.data.params["lr"] == "0.01" and run.info.status == "FINISHED"  # trial info came with the state
    assert [m.step for m in MlflowClient(new_uri).get_metric_history(run.info.run_id, "loss")] == [2]


def test_unreachable_store_never_blocks_and_buffer_is_bounded(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cb = new_callback(uri, max_pending=10, setup_timeout=1, flush_timeout=1, request_timeout=1)
    ok, _ = trials()
    t0 = time.monotonic()
    cb.setup()
    cb.on_trial_start(0, [], ok)
    for e in range(1, 31):
        cb.on_trial_result(e, [], ok, result(e, 1.0 / e, 0.5))
    cb.on_trial_complete(0, [], ok)
    hooks_s = time.monotonic() - t0
    assert cb.parent_run_id is None
    cb.on_experiment_end([ok])
    state = cb.get_state()
    ops = [r["op"] for r in state["pending"]]
    # structural records survive; the oldest per-epoch metrics were dropped
    assert ops[0] == "parent" and "trial" in ops and "end" in ops and ops[-2:] == ["summary", "end_parent"]
    assert len(ops) == 10 and cb.dropped == 30 + 5 - 10
    kept = [r["step"] for r in state["pending"] if r["op"] == "metrics"]
    assert kept == sorted(kept) and kept[-1] == 30
    print(f"hooks with the server down: {hooks_s:.2f} s for 33 hooks (incl. 1 s setup wait)")


# ----------------------------------------------------------------------------- real mlflow server
@pytest.fixture
def server(mlflow_server):
    yield mlflow_server
    if mlflow_server.proc is None:  # a test stopped it: leave it running for the next one
        mlflow_server.start()


def test_parent_and_child_runs_on_a_real_server(server):
    check_tracking_uri(server.uri)
    cb = new_callback(server.uri, name="on-server")
    run_search(cb, *trials())
    assert cb.pending() == 0
    check_search(server.uri, cb)


def test_server_outage_mid_search_is_buffered_and_flushed(server):
    cb = new_callback(server.uri, name="outage", request_timeout=2, max_backoff=1, flush_timeout=120)
    ok, bad = trials()
    cb.setup()
    cb.on_trial_start(0, [], ok)
    cb.on_trial_result(1, [], ok, result(1, 1.0, 0.6))
    assert cb.flush(30)

    server.stop()
    t0 = time.monotonic()
    cb.on_trial_start(0, [], bad)
    cb.on_trial_result(2, [], ok, result(2, 0.5, 0.7))
    cb.on_trial_result(2, [], bad, result(1, 0.9, 0.4))
    cb.on_trial_result(3, [], ok, result(3, 1 / 3, 0.8, final=True))
    cb.on_trial_complete(4, [], ok)
    bad.status, ok.status = "ERROR", "TERMINATED"
    cb.on_trial_error(4, [], bad)
    hooks_s = time.monotonic() - t0
    assert not cb.flush(2) and cb.pending() >= 5  # nothing can be sent, nothing is lost
    state = cb.get_state()
    assert {"trial", "metrics", "end"} <= {r["op"] for r in state["pending"]}

    server.start()
    t1 = time.monotonic()
    cb.on_experiment_end([ok, bad])
    print(f"hooks during the outage: {hooks_s:.3f} s; buffered records sent {time.monotonic() - t1:.1f} s after restart")
    assert cb.pending() == 0 and cb.dropped == 0
    check_search(server.uri, cb)


# ----------------------------------------------------------------------------- inside Ray Tune
def test_inside_a_real_tuner(tmp_path):
    ray = pytest.importorskip("ray")
    from ray import tune

    class TrialFailure(RuntimeError):  # local: Ray workers pickle it by value (tests/ is not importable there)
        pass

    def trainable(config):
        for epoch in range(1, 4):
            if config["x"] > 2 and epoch == 2:
                raise TrialFailure(f"NaN loss at epoch {epoch}")
            report = {"epoch": epoch, "loss": config["x"] / epoch, "macro_f1": 0.1 * config["x"] + 0.01 * epoch,
                      "data_fingerprint": "fp", "code_version": "test"}
            if epoch == 3:
                report.update(final=True, fold0_macro_f1=0.1, fold1_macro_f1=0.2)
            tune.report(report)

    uri = sqlite_store(tmp_path)
    check_tracking_uri(uri)
    cb = MLflowTracking(uri, "fusetune-tune", "tuner-search", {"space": "toy"}, {"num_samples": 3})
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(
            trainable,
            param_space={"x": tune.grid_search([1, 2, 3]), "method": "toy"},
            tune_config=tune.TuneConfig(metric="macro_f1", mode="max", max_concurrent_trials=2),
            run_config=tune.RunConfig(name="tuner-search", storage_path=str(tmp_path / "ray"), callbacks=[cb], verbose=0),
        )
        grid = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    assert len(grid) == 3
    client = MlflowClient(uri)
    (parent,) = parents(client, cb.experiment_id, cb.search_name)
    runs = children(client, cb.experiment_id, cb.search_name)
    assert len(runs) == 3 and parent.info.status == "FINISHED"
    by_x = {r.data.params["x"]: r for r in runs.values()}
    assert by_x["1"].info.status == by_x["2"].info.status == "FINISHED"
    assert by_x["3"].info.status == "FAILED" and by_x["3"].data.tags["error"] == "TrialFailure: NaN loss at epoch 2"
    assert sorted(m.step for m in client.get_metric_history(by_x["2"].info.run_id, "macro_f1")) == [1, 2, 3]
    assert by_x["2"].data.metrics["fold1_macro_f1"] == pytest.approx(0.2)
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs.values())


def test_fast_http_is_scoped_and_respects_user_settings(monkeypatch):
    from search.tracking.queue import fast_http

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")  # the user's choice wins
    with fast_http(2.5):
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "3"
        with fast_http(60, retries=3):  # nested: the outer block's settings stay
            assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "3"
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ and os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"


@pytest.mark.parametrize("status, body, expected", [
    (401, b"Unauthorized", "authentication failed; set MLFLOW_TRACKING_USERNAME"),
    (200, b"<html>a web page</html>", "tracking server unreachable or not an MLflow server"),
])
def test_check_tracking_uri_names_auth_and_non_mlflow_servers(status, body, expected):
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with pytest.raises(UsageError) as e:
            check_tracking_uri(f"http://127.0.0.1:{httpd.server_address[1]}", timeout=3)
    finally:
        httpd.shutdown()
    assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)


# ----------------------------------------------------------------------------- the parent run as users read it
class _Data:
    """Stands in for trainables.trial_data.TrialData (what DatasetInfo.of reads)."""

    class _Part:
        labels = [0, 1, 1, 2]
        class_names = ("a", "b", "c")
        modalities = {"mrna": type("M", (), {"kind": "vector"})()}

        def class_counts(self):
            return [1, 2, 1]

    data = _Part()
    fingerprint = "ab" * 32
    raw_kinds = ("vector",)


def test_parent_run_summary_dataset_and_experiment_kind(tmp_path):
    from search.prepare.config import SearchConfig
    from search.prepare.dataset_input import DatasetInfo
    from search.tracking.store import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

    uri = sqlite_store(tmp_path)
    dataset = DatasetInfo.of(SearchConfig(space="baseline", data="breast-tcga"), _Data())
    cb = new_callback(uri, dataset=dataset)
    ok, bad = trials()
    early = FakeTrial("t_00002", {"epochs": 3, "lr": 0.5})
    early.status, early.last_result = "TERMINATED", result(1, 0.9, 0.3)   # stopped by the scheduler
    run_search(cb, ok, bad)
    cb.on_experiment_end([ok, bad, early])  # the summary is of the trials Tune hands over
    client = MlflowClient(uri)
    assert client.get_experiment(cb.experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    (parent,) = parents(client, cb.experiment_id, cb.search_name)
    m = parent.data.metrics
    assert (m["trials_completed"], m["trials_pruned"], m["trials_failed"]) == (1, 1, 1)
    # best final value of each metric over the trial that finished all its epochs (ok: macro_f1 0.8)
    assert m["best_macro_f1"] == pytest.approx(0.8) and m["best_accuracy"] == pytest.approx(0.9)
    assert m["best_loss"] == pytest.approx(1 / 3) and m["wall_time_s"] > 0
    (inp,) = parent.inputs.dataset_inputs
    assert inp.dataset.name == "breast-tcga" and inp.dataset.digest == ("ab" * 32)[:36]
    assert inp.dataset.source_type == "code" and '"fusetune.data": "breast-tcga"' in inp.dataset.source
    assert json.loads(inp.dataset.profile)["training_samples"] == 4
    assert {t.key: t.value for t in inp.tags} == {"mlflow.data.context": "training", "fusetune.data_fingerprint": "ab" * 32,
                                                  "fusetune.data_spec": "breast-tcga"}


def test_experiment_kind_a_user_chose_stays(tmp_path):
    from search.tracking.store import EXPERIMENT_KIND_TAG

    uri = sqlite_store(tmp_path)
    client = MlflowClient(uri)
    plain = client.create_experiment("fusetune-test")                        # made before: no kind
    other = client.create_experiment("mine", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    run_search(new_callback(uri), *trials())
    assert client.get_experiment(plain).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    cb = MLflowTracking(uri, "mine", "s2", {}, {})
    cb.setup()
    cb.on_experiment_end([])
    assert client.get_experiment(other).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_epochs_carried_in_a_result_reach_mlflow_with_their_steps(tmp_path):
    """A trial reports epochs 3 and 5 only; epochs 1, 2 and 4 come in the results' ``curve``."""
    uri = sqlite_store(tmp_path)
    cb = new_callback(uri)
    ok = FakeTrial("t_00000", {"lr": 0.01, "epochs": 5})
    cb.setup()
    cb.on_trial_start(0, [ok], ok)
    r3 = result(3, 1 / 3, 0.8)
    r3["curve"] = [{"epoch": e, "loss": 1.0 / e, "macro_f1": 0.5 + 0.1 * e} for e in (1, 2)]
    cb.on_trial_result(1, [ok], ok, r3)
    r5 = result(5, 0.2, 1.0, final=True)
    r5["curve"] = [{"epoch": 4, "loss": 0.25, "macro_f1": 0.9}]
    cb.on_trial_result(2, [ok], ok, r5)
    ok.status, ok.last_result = "TERMINATED", r5
    cb.on_trial_complete(3, [ok], ok)
    cb.on_experiment_end([ok])
    client = MlflowClient(uri)
    run = children(client, cb.experiment_id, cb.search_name)["t_00000"]
    hist = sorted(client.get_metric_history(run.info.run_id, "macro_f1"), key=lambda m: m.step)
    assert [(m.step, round(m.value, 6)) for m in hist] == [(1, 0.6), (2, 0.7), (3, 0.8), (4, 0.9), (5, 1.0)]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "epoch")) == [1, 2, 3, 4, 5]
    assert "curve" not in run.data.metrics


def test_an_epoch_reported_again_in_one_session_is_logged_once(tmp_path):
    """A trial retried from its checkpoint of epoch 1 reports epochs 2 and 3 again (as does a trial
    resumed from a checkpoint after a killed driver's unsent records were replayed): the run keeps
    one value per epoch, the first."""
    uri = sqlite_store(tmp_path)
    cb = new_callback(uri)
    ok = FakeTrial("t_00000", {"lr": 0.01, "epochs": 4})
    cb.setup()
    cb.on_trial_start(0, [ok], ok)
    for i, (e, f1) in enumerate([(1, 0.6), (2, 0.7), (3, 0.8), (2, 0.75), (3, 0.85), (4, 0.9)]):
        cb.on_trial_result(i, [ok], ok, result(e, 1.0 / e, f1, final=e == 4))
    cb.on_trial_complete(6, [ok], ok)
    assert cb.flush(30)
    client = MlflowClient(uri)
    run = children(client, cb.experiment_id, cb.search_name)["t_00000"]
    hist = sorted(client.get_metric_history(run.info.run_id, "macro_f1"), key=lambda m: m.step)
    assert [(m.step, round(m.value, 6)) for m in hist] == [(1, 0.6), (2, 0.7), (3, 0.8), (4, 0.9)]
    cb.close()


def test_a_trial_settled_on_resume_gets_its_end_in_mlflow(tmp_path):
    # killed right after a trial's final result: the resumed snapshot holds it as TERMINATED
    # (search.tune.settle) while MLflow got neither the final epoch nor the end of its run
    uri = sqlite_store(tmp_path)
    t = FakeTrial("t_set", {"lr": 0.1})
    cb = new_callback(uri)
    cb.setup()
    cb.on_trial_start(0, [], t)
    cb.on_trial_result(1, [], t, result(1, 0.9, 0.4))
    assert cb.flush(30)
    cb.close()

    t.status, t.last_result = "TERMINATED", result(2, 0.5, 0.7, final=True)
    cb2 = new_callback(uri)
    cb2.setup()
    cb2.on_step_begin(0, [t])
    cb2.on_experiment_end([t])
    client = MlflowClient(uri)
    run = children(client, cb2.experiment_id, cb2.search_name)["t_set"]
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == [1, 2]
