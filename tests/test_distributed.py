"""Distributed runs and fault tolerance, end to end with ``python -m search.run``.

Each test starts what it needs for real and tears it down in all cases:

- a two-node Ray cluster on this machine (``infra/local-cluster.sh``: a head and a second node,
  one CPU and one custom resource each) and a search with ``--address``: trials ran on both nodes;
- the driver SIGKILLed mid-search and rerun with ``--resume``: finished trials are not rerun,
  unfinished ones continue from their checkpoints, every trial is in ``results.csv`` once and in
  MLflow once, with every epoch logged exactly once;
- the second node lost mid-trial (every process on it SIGKILLed at once): the trial is retried
  (``--max-failures``) from a checkpoint that node wrote, on the remaining node, and the search completes;
- the MLflow server stopped and restarted mid-search: the search does not die and every epoch's
  metrics reach the server once it is back.

Which node ran a result is read from the process tree: a trial reports its worker's ``pid``, and
every worker process descends from one node's ``ray start`` process (Linux ``/proc``). All of it
takes minutes, hence ``slow``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from processes import comm, descendants, parents, started, uptime

REPO = Path(__file__).resolve().parents[1]
LOCAL_CLUSTER = REPO / "infra" / "local-cluster.sh"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc"),
]

# A small, quick search: the baseline space on breast-tcga (vector modalities, no encoders), two
# folds, every trial the full budget (fifo), random sampling.
SEARCH = ["--space", "baseline", "--folds", "2", "--scheduler", "fifo", "--sampler", "random"]
# The same where a test needs checkpoints before a trial's last epoch whatever the machine's speed:
# fifo's trials report every 10 s (and checkpoint only at a report), so a fast trial reports once,
# at its end; the median rule's report every epoch and checkpoint every epochs // 4, and with at
# most 3 trials it stops none (it compares a trial with at least 3 others).
EVERY_EPOCH = [*SEARCH, "--scheduler", "median"]
# Tune snapshots the experiment (and copies the trials' result.json into the search folder, which
# the tests read) every 10 s at least by default; on an idle machine a whole 48-epoch trial takes
# less, so the tests that time a kill or an outage on the search folder ask for a snapshot a second
FREQUENT_SNAPSHOTS = {"TUNE_GLOBAL_CHECKPOINT_S": "1"}


# ------------------------------------------------------------------------------ the cluster
class LocalCluster:
    """``infra/local-cluster.sh`` with its state in a fresh folder; ``nodes[i]`` is the pid of
    node ``i``'s ``ray start --block`` process (node 0 is the head)."""

    def __init__(self, workers: int = 1, env: dict[str, str] | None = None, options: tuple[str, ...] = ()) -> None:
        # short: Ray's Unix sockets live below this folder (107-byte limit)
        self.dir = Path(tempfile.mkdtemp(prefix="ftc-"))
        self.env = {**_clean_env(), **(env or {})}
        self.workers = workers
        self.options = options
        self.nodes: list[int] = []
        self.address = ""
        self._seen: dict[int, int] = {}
        self._stop_watch = threading.Event()
        self._watcher: threading.Thread | None = None

    def _script(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(LOCAL_CLUSTER), *args, "--dir", str(self.dir)], env=self.env,
                              capture_output=True, text=True, timeout=300)

    def start(self) -> LocalCluster:
        done = self._script("start", "--workers", str(self.workers), *self.options)
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(f"local cluster did not start: {done.stderr[-2000:]}")
        self.nodes = [int((self.dir / f"node_{i}.pid").read_text()) for i in range(self.workers + 1)]
        self.address = (self.dir / "address").read_text().strip()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()
        return self

    def stop(self) -> None:
        self._stop_watch.set()
        self._script("stop")
        temp = self.dir / "ray_temp_dir"
        if temp.exists():
            shutil.rmtree(temp.read_text().strip(), ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def _watch(self) -> None:
        """Remember which node every process belongs to while it lives (workers come and go)."""
        while not self._stop_watch.is_set():
            tree = parents()
            for i, root in enumerate(self.nodes):
                for pid in descendants(root, tree):
                    self._seen.setdefault(pid, i)
            time.sleep(0.1)

    def node_of(self, pid: int) -> int | None:
        """The node whose process tree held ``pid`` (None if never seen)."""
        if pid not in self._seen:
            tree = parents()
            for i, root in enumerate(self.nodes):
                if pid in descendants(root, tree):
                    self._seen[pid] = i
        return self._seen.get(pid)

    def raylet(self, node: int) -> int:
        pids = [p for p in descendants(self.nodes[node]) if comm(p) == "raylet"]
        assert len(pids) == 1, f"node {node}: raylets {pids}"
        return pids[0]

    def lose(self, node: int) -> None:
        """Node ``node`` lost as a machine is: every process on it SIGKILLed in one sweep, so none of
        them (a trial's worker included) goes on for the moment it would take to notice a dead
        raylet alone."""
        self.raylet(node)  # the node is up
        for pid in [self.nodes[node], *descendants(self.nodes[node])]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _clean_env() -> dict[str, str]:
    """This test process's environment without a Ray address to leak into the cluster or driver,
    with the checkout importable and Ray's token authentication on (local-cluster.sh turns it on)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


@pytest.fixture
def cluster(data_dir) -> Iterator[LocalCluster]:
    c = LocalCluster(workers=1)
    try:
        yield c.start()
    finally:
        c.stop()


# ------------------------------------------------------------------------------ the driver
class Driver:
    """``python -m search.run`` as a child process (its own session), output in a log file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "search.run", *args], cwd=REPO,
                                     env={**_clean_env(), **(env or {})}, stdout=open(log, "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"search did not finish in {timeout:.0f}s:\n{self.output()[-3000:]}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def drivers() -> Iterator[list[Driver]]:
    started: list[Driver] = []
    try:
        yield started
    finally:
        for d in started:
            d.kill()


# ------------------------------------------------------------------------------ results
def trial_results(exp: Path) -> dict[str, list[dict[str, Any]]]:
    """Every trial folder's reported results (``result.json``, one JSON line per report)."""
    out = {}
    for folder in sorted(p for p in exp.glob("fusetune_*") if p.is_dir()):
        lines = (folder / "result.json").read_text().splitlines() if (folder / "result.json").exists() else []
        out[folder.name.rsplit("_", 1)[1]] = [json.loads(ln) for ln in lines if ln.strip()]
    return out


def live_results(cluster: LocalCluster, name: str) -> dict[str, list[dict[str, Any]]]:
    """The trials' results as the driver writes them, in Ray's staging folder of the cluster's
    session (the search folder gets a copy with every experiment snapshot, seconds later)."""
    temp = Path((cluster.dir / "ray_temp_dir").read_text().strip())
    out = {}
    for path in temp.glob(f"session_*/artifacts/*/{name}/driver_artifacts/fusetune_*/result.json"):
        lines = path.read_text().splitlines()
        out[path.parent.name.rsplit("_", 1)[1]] = [json.loads(ln) for ln in lines if ln.strip().endswith("}")]
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    """The trial rows of ``results.csv`` (not the reference models')."""
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r["status"] != "REFERENCE"]


def wait_for(condition, timeout: float, what: str, driver: Driver | None = None, every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = condition()
        if got:
            return got
        if driver is not None and driver.proc.poll() is not None:
            raise AssertionError(f"the search ended (rc {driver.proc.returncode}) before {what}:\n{driver.output()[-3000:]}")
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}" + (f":\n{driver.output()[-3000:]}" if driver else ""))


def completed(rows: list[dict[str, str]], epochs: int) -> bool:
    return all(r["status"] == "TERMINATED" and r["final"] == "True" and int(r["epochs_done"]) == epochs for r in rows)


# ------------------------------------------------------------------------------ the tests
def test_two_node_cluster_runs_trials_on_both_nodes(cluster, drivers, tmp_path):
    epochs, n = 6, 4
    storage, name = tmp_path / "results", "two-nodes"
    drivers.append(Driver([*SEARCH, "--address", cluster.address, "--num-samples", str(n), "--epochs", str(epochs),
                           "--cpus-per-trial", "1", "--top-k", "1", "--storage", str(storage), "--name", name],
                          tmp_path / "driver.log"))
    assert drivers[0].wait(600) == 0, drivers[0].output()[-3000:]

    rows = read_csv(storage / name / "results.csv")
    assert len(rows) == n and completed(rows, epochs)
    nodes = {tid: {cluster.node_of(r["pid"]) for r in results} for tid, results in trial_results(storage / name).items()}
    assert all(len(ns) == 1 and None not in ns for ns in nodes.values()), nodes  # one node per trial, a known one
    assert set.union(*nodes.values()) == {0, 1}, f"trials ran on nodes {nodes}"


def test_driver_killed_then_resumed(cluster, drivers, tmp_path):
    from mlflow.tracking import MlflowClient

    # one trial at a time (the median rule would pause a running trial for a pending one), each
    # reporting every epoch and checkpointing every epochs // 4 = 60 epochs. Long enough that the
    # trial seen past its first checkpoint in a snapshot is still running when the driver is killed:
    # a 48-epoch trial of 2 folds took 0.6 s on an idle machine, less than the snapshot period
    # (1 s), and had ended, recorded by the driver, when the kill came
    epochs, n, every = 240, 3, 60
    storage, name = tmp_path / "results", "killed"
    exp = storage / name
    args = ["--address", cluster.address, "--storage", str(storage), "--name", name, "--top-k", "1"]
    drivers.append(Driver([*EVERY_EPOCH, *args, "--folds", "5", "--num-samples", str(n), "--epochs", str(epochs),
                           "--max-concurrent", "1"], tmp_path / "driver-1.log", env=FREQUENT_SNAPSHOTS))

    def snapshot_with_a_finished_and_a_checkpointed_trial() -> bool:
        """The stored experiment snapshot (what --resume reads; its plain JSON fields) holds a
        finished trial and an unfinished one past its first checkpoint and not past its second.
        Past, not at: Tune takes the result that carries a checkpoint as the trial's last result at
        once but registers the checkpoint only when the actor's save task returns, and a snapshot
        written in between holds the result without the checkpoint (the trial would resume from
        its previous one, here from scratch); the next result is asked for only after the save was
        processed."""
        states = sorted(exp.glob("experiment_state-*.json"))
        try:
            trials = [(json.loads(t), json.loads(m)) for t, m in json.loads(states[-1].read_text())["trial_data"]]
        except (IndexError, OSError, ValueError, KeyError):
            return False
        done = [t for t, _ in trials if t["status"] == "TERMINATED"]
        going = [t for t, m in trials if t["status"] in ("RUNNING", "PENDING")
                 and every < int((m.get("last_result") or {}).get("epoch", 0)) <= 2 * every]
        return bool(done and going)

    wait_for(snapshot_with_a_finished_and_a_checkpointed_trial, 900,
             "a snapshot with a finished trial and a checkpointed running one", drivers[0], every=0.1)
    os.kill(drivers[0].proc.pid, signal.SIGKILL)  # the driver alone, as a crash would
    drivers[0].proc.wait()
    _wait_for_orphans(exp)
    before = trial_results(exp)
    # finished: the driver recorded the final result (its result.json in the search folder may
    # lack the last lines, which Ray copies there with its snapshots)
    finished_before = _finished(exp, storage, name)

    resumed_at = time.time()
    drivers.append(Driver([*args, "--resume"], tmp_path / "driver-2.log"))
    assert drivers[1].wait(900) == 0, drivers[1].output()[-3000:]

    rows = read_csv(exp / "results.csv")
    assert sorted(r["trial_id"] for r in rows) == sorted(set(r["trial_id"] for r in rows))
    assert len(rows) == n and completed(rows, epochs)
    known = {r["trial_id"] for r in rows}
    after = trial_results(exp)
    unfinished_before = {t: rs for t, rs in before.items() if rs and t not in finished_before and t in known}
    assert finished_before and unfinished_before
    for t in finished_before:  # kept, not rerun
        assert t in known, f"finished trial {t} lost"
        assert after[t][: len(before[t])] == before[t]
        assert all(r["timestamp"] <= resumed_at for r in after[t]), f"finished trial {t} ran again after --resume"
    checkpoints = set(range(every, epochs, every))
    continued = 0
    for t, rs in unfinished_before.items():  # each from its last checkpoint in the snapshot, or anew
        new = [r for r in after[t][len(rs):] if r["timestamp"] >= int(resumed_at)]
        assert new, f"trial {t} did not go on after --resume"
        assert new[0]["epoch"] == 1 or new[0]["epoch"] - 1 in checkpoints, (
            f"trial {t} resumed at epoch {new[0]['epoch']}, checkpoints at {sorted(checkpoints)}")
        continued += new[0]["epoch"] > 1
    assert continued, "no unfinished trial continued from its checkpoint"
    # a trial started after the last experiment snapshot is unknown to the restored search (Ray Tune
    # samples a new one instead): it must not go on either
    for t in set(before) - known:
        assert all(r["timestamp"] <= resumed_at for r in after[t]), f"lost trial {t} went on after --resume"

    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string=f"tags.`fusetune.search_name` = '{name}'", max_results=1000)
    parents = [r for r in runs if r.data.tags.get("fusetune.role") == "search"]
    children = [r for r in runs if r.data.tags.get("fusetune.role") == "trial"]
    assert len(parents) == 1
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["fusetune.trial_id"] for r in finished) == sorted(known)
    # the child run of a trial lost with the driver (see above) must not stay RUNNING forever
    lost = {r.data.tags["fusetune.trial_id"]: r.info.status for r in children if r.info.status != "FINISHED"}
    assert all(status == "KILLED" for status in lost.values()), f"child runs of lost trials: {lost}"
    for run in finished:
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "macro_f1")]
        assert sorted(steps) == list(range(1, epochs + 1)), f"trial {run.data.tags['fusetune.trial_id']}: steps {steps}"
    # the Optuna study (opened again from <search>/optuna.db): every trial of the search COMPLETE,
    # one a killed driver had asked for after the last snapshot FAIL, none left RUNNING
    import optuna

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{exp / 'optuna.db'}")
    states = {t.user_attrs.get("ray_trial_id"): t.state.name for t in study.trials}
    assert {t: states.get(t) for t in known} == dict.fromkeys(known, "COMPLETE")
    assert set(states.values()) <= {"COMPLETE", "FAIL"}, states


# faster detection of a dead node than Ray's defaults (which wait tens of seconds)
FAST_FAILURE_DETECTION = {
    "RAY_health_check_initial_delay_ms": "0",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def test_node_lost_mid_trial_is_rescheduled_on_the_remaining_node(data_dir, drivers, tmp_path):
    epochs, every = 120, 30  # checkpoints every epochs // 4 epochs
    storage, name = tmp_path / "results", "node-loss"
    exp = storage / name
    cluster = LocalCluster(workers=1, env=FAST_FAILURE_DETECTION)
    try:
        cluster.start()
        drivers.append(Driver([*EVERY_EPOCH, "--address", cluster.address, "--num-samples", "2", "--epochs", str(epochs),
                               "--max-concurrent", "2", "--max-failures", "3", "--top-k", "0",
                               "--storage", str(storage), "--name", name], tmp_path / "driver.log"))

        def trial_on_node_1_checkpointed() -> str | None:
            for t, rs in live_results(cluster, name).items():
                if rs and cluster.node_of(rs[-1]["pid"]) == 1 and not rs[-1].get("final") \
                        and sum(bool(r.get("checkpoint_dir_name")) for r in rs) >= 2:
                    return t
            return None

        victim = wait_for(trial_on_node_1_checkpointed, 600, "a trial on node 1 with 2 checkpoints", drivers[0],
                          every=0.05)
        cluster.lose(1)
        # Every report of node 1's the driver logged, kept as they appear until the retry reports
        # from node 0: the driver logs a report some time after the worker sent it (and the
        # checkpoint the retry starts from is one the driver had been told of), so a single read at
        # the kill could miss the last ones.
        on_node_1: dict[int, dict[str, Any]] = {}

        def retried_or_ended() -> bool:
            reports = live_results(cluster, name).get(victim, [])
            on_node_1.update({r["epoch"]: r for r in reports if cluster.node_of(r["pid"]) == 1})
            return drivers[0].proc.poll() is not None or any(cluster.node_of(r["pid"]) == 0 for r in reports)

        wait_for(retried_or_ended, 900, "the lost trial to report from node 0", every=0.05)
        assert drivers[0].wait(900) == 0, drivers[0].output()[-3000:]
    finally:
        cluster.stop()

    rows = read_csv(exp / "results.csv")
    assert len(rows) == 2 and completed(rows, epochs)
    assert on_node_1, "no report of the lost trial from node 1"
    # the retry's reports, from node 0 only, after whatever of node 1's Ray's copy in the search
    # folder kept (it is restored from the last snapshot when the retry starts, so it may keep none)
    results = trial_results(exp)[victim]
    nodes = [cluster.node_of(r["pid"]) for r in results]
    assert 0 in nodes, "the trial on the lost node never reported again"
    retry = nodes.index(0)
    assert set(nodes[:retry]) <= {1} and set(nodes[retry:]) == {0}, nodes
    assert results[retry]["epoch"] - 1 in set(range(every, epochs, every)), results[retry]["epoch"]
    assert results[retry]["epoch"] - 1 <= max(on_node_1)  # from a checkpoint node 1 had written
    assert results[-1]["epoch"] == epochs


def test_fractional_gpus_share_one_gpu(data_dir, drivers, tmp_path):
    """``--gpus-per-trial 0.5``: two trials run at once on a node with one GPU. The node declares a
    logical GPU (Ray schedules on declared resources; without CUDA the trials train on the CPU)."""
    epochs = 20
    storage, name = tmp_path / "results", "half-gpu"
    cluster = LocalCluster(workers=0, options=("--cpus-per-node", "2", "--gpus-per-node", "1"))
    try:
        cluster.start()
        drivers.append(Driver([*SEARCH, "--address", cluster.address, "--num-samples", "2", "--epochs", str(epochs),
                               "--cpus-per-trial", "1", "--gpus-per-trial", "0.5", "--top-k", "0",
                               "--storage", str(storage), "--name", name], tmp_path / "driver.log"))
        assert drivers[0].wait(600) == 0, drivers[0].output()[-3000:]
    finally:
        cluster.stop()
    rows = read_csv(storage / name / "results.csv")
    assert len(rows) == 2 and completed(rows, epochs)
    spans = []
    for results in trial_results(storage / name).values():
        start = results[0]["timestamp"] - results[0]["time_this_iter_s"]
        spans.append((start, results[-1]["timestamp"]))
    (a0, a1), (b0, b1) = sorted(spans)
    assert b0 < a1, f"the two half-GPU trials did not overlap: {spans}"


def test_tracking_server_outage_mid_search(data_dir, drivers, tmp_path):
    from mlflow.tracking import MlflowClient

    from mlflow_server import MlflowServer

    epochs, n = 150, 2  # long enough to outlast stopping the server
    storage, name = tmp_path / "results", "outage"
    exp = storage / name
    server = MlflowServer(tmp_path / "mlflow").start()
    try:
        # a local Ray started by the driver; the server is given by URI
        # every epoch a report (the outage is measured in reports)
        drivers.append(Driver([*EVERY_EPOCH, "--num-samples", str(n), "--epochs", str(epochs), "--max-concurrent", "2",
                               "--top-k", "1", "--tracking-uri", server.uri, "--storage", str(storage),
                               "--name", name], tmp_path / "driver.log", env=FREQUENT_SNAPSHOTS))
        wait_for(lambda: any(trial_results(exp).values()), 600, "the first epoch", drivers[0], every=0.05)
        server.stop()
        down_at = max(len(rs) for rs in trial_results(exp).values())
        assert down_at < epochs - 20, "the trials ran out before the server was down"
        # the search goes on without the server: epochs keep being reported (the driver's loop,
        # which every report waits for, is not blocked by the tracking callback)
        wait_for(lambda: max(len(rs) for rs in trial_results(exp).values()) >= down_at + 10, 300,
                 "epochs reported during the outage", drivers[0])
        assert drivers[0].proc.poll() is None
        server.start()
        assert drivers[0].wait(900) == 0, drivers[0].output()[-3000:]

        # every epoch of every trial reached the server once it was back (a trial may fail on its
        # own, e.g. a diverging configuration: then its run is FAILED with the epochs it did)
        rows = {r["trial_id"]: r for r in read_csv(exp / "results.csv")}
        assert len(rows) == n and any(r["status"] == "TERMINATED" for r in rows.values())
        client = MlflowClient(tracking_uri=server.uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  filter_string=f"tags.`fusetune.search_name` = '{name}'", max_results=1000)
        children = {r.data.tags["fusetune.trial_id"]: r for r in runs if r.data.tags.get("fusetune.role") == "trial"}
        assert sorted(children) == sorted(rows)
        for t, run in children.items():
            assert run.info.status == {"TERMINATED": "FINISHED", "ERROR": "FAILED"}[rows[t]["status"]]
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "macro_f1")]
            assert sorted(steps) == list(range(1, int(rows[t]["epochs_done"]) + 1)), f"trial {t}: steps {steps}"
    finally:
        server.stop()


# ------------------------------------------------------------------------------ kill at every phase
def _hashes(root: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _search_runs(storage: Path, name: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string=f"tags.`fusetune.search_name` = '{name}'", max_results=1000)


def _versions(storage: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    return [client.get_model_version(v.name, v.version) for v in client.search_model_versions()]


def _finished(exp: Path, storage: Path, name: str) -> set[str]:
    """Trials whose final result the driver recorded (search.tune.settle.RecordFinal) or whose MLflow run
    is FINISHED. (Their ``result.json`` in the search folder may lack the last lines: Ray copies it
    there from the driver's staging folder with its experiment snapshots.)"""
    recorded = {p.parent.name.rsplit("_", 1)[1] for p in exp.glob("fusetune_*/final_result.json")}
    tracked = {r.data.tags["fusetune.trial_id"] for r in _search_runs(storage, name)
               if r.data.tags.get("fusetune.role") == "trial" and r.info.status == "FINISHED"}
    return recorded | tracked


def _wait_for_orphans(exp: Path) -> None:
    """A killed driver's trials write their own result.json on their workers: wait until Ray has
    ended them before looking at what they left."""
    workers = {r["pid"] for rs in trial_results(exp).values() for r in rs}
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), 120,
             "the killed driver's trial processes to end")


KILL_PHASES = ("startup", "trial_end", "mid_search", "refit", "registration", "reports")
"""search.tune.faults.PHASES (not imported: the test process does not import the search package)."""


@pytest.mark.parametrize("phase", KILL_PHASES)
def test_driver_killed_at_every_phase_then_resumed_keeps_every_finished_trial(phase, cluster, drivers, tmp_path):
    """The driver SIGKILLs itself at ``phase`` (``FUSETUNE_KILL_AT``, search.tune.faults) and the search
    is resumed: every trial finished before the kill is kept as it was (not rerun, one row, one
    counted MLflow run), every trial of the search ends complete, and the registered versions are
    one per trial with every tag."""
    epochs, n = 12, 3
    storage, name = tmp_path / "results", f"kill-{phase.replace('_', '-')}"
    exp = storage / name
    args = ["--address", cluster.address, "--storage", str(storage), "--name", name]
    drivers.append(Driver([*EVERY_EPOCH, *args, "--num-samples", str(n), "--epochs", str(epochs),
                           "--max-concurrent", "1", "--top-k", "1", "--confirm-repeats", "0", "--references", "none"],
                          tmp_path / "driver-1.log", env={"FUSETUNE_KILL_AT": phase}))
    rc = drivers[0].wait(600)
    assert rc == -signal.SIGKILL, f"not killed at {phase} (rc {rc}):\n{drivers[0].output()[-3000:]}"
    _wait_for_orphans(exp)
    before = trial_results(exp)
    finished_before = _finished(exp, storage, name) if (storage / "mlflow.db").exists() else set()
    versions_before = _versions(storage)
    if phase in ("startup", "mid_search", "trial_end"):
        assert len(finished_before) < n, f"all trials had finished before the {phase} kill"
    if phase == "startup":
        assert not finished_before
    if phase == "trial_end":
        assert finished_before
    if phase in ("refit", "registration", "reports"):
        assert len(finished_before) == n
        assert len(versions_before) == {"refit": 0, "registration": 1, "reports": 1}[phase]
    if phase == "registration":  # created, killed before its tags: the resume completes them
        assert not any(k.startswith("cv_") for k in versions_before[0].tags)

    resumed_at = time.time()
    drivers.append(Driver([*args, "--resume"], tmp_path / "driver-2.log"))
    assert drivers[1].wait(900) == 0, drivers[1].output()[-3000:]

    rows = read_csv(exp / "results.csv")
    ids = [r["trial_id"] for r in rows]
    assert len(ids) == len(set(ids)) == n and completed(rows, epochs), rows
    after = trial_results(exp)
    for t in finished_before:  # kept as it was: in the results, not rerun
        assert t in ids, f"finished trial {t} lost at {phase}"
        assert after[t][: len(before[t])] == before[t]
        assert all(r["timestamp"] <= resumed_at for r in after[t]), f"finished trial {t} ran again after --resume"
    runs = _search_runs(storage, name)
    parents = [r for r in runs if r.data.tags.get("fusetune.role") == "search"]
    counted = [r for r in runs if r.data.tags.get("fusetune.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["fusetune.trial_id"] for r in counted) == sorted(ids)  # one counted run per trial
    for run in counted:
        assert run.info.status == "FINISHED"
        steps = [m.step for m in MlflowClientFor(storage).get_metric_history(run.info.run_id, "macro_f1")]
        assert sorted(steps) == list(range(1, epochs + 1)), f"trial {run.data.tags['fusetune.trial_id']}: steps {steps}"
    for run in runs:  # a trial lost with the driver was sampled again: its run names the one that took its place
        if run.data.tags.get("fusetune.role") == "superseded":
            assert run.data.tags.get("fusetune.superseded_by") in ids and run.info.status == "KILLED"
    assert parents[0].data.metrics["trials_completed"] == n
    versions = _versions(storage)
    assert len(versions) == 1, [(v.version, v.run_id) for v in versions]  # not a second version
    tags = versions[0].tags
    assert {"fusetune.trial_id", "fusetune.rank", "fusetune.config", "cv_macro_f1", "cv_accuracy"} <= set(tags), tags
    assert tags["fusetune.trial_id"] in ids
    assert "fusetune.champion" in parents[0].data.tags
    assert (exp / "reports" / "index.json").exists()


def MlflowClientFor(storage: Path):  # noqa: N802 - reads like the client it returns
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")


def test_a_copied_then_moved_results_folder_resumes_in_place(cluster, drivers, tmp_path):
    """``--resume --storage COPY`` on a copy of a results folder reads and writes only the copy:
    every file under the original is byte for byte as it was; the copy moved elsewhere resumes too."""
    epochs = 4
    original, copy, moved, name = tmp_path / "original", tmp_path / "copy", tmp_path / "moved", "portable"
    base = ["--address", cluster.address, "--name", name, "--top-k", "1", "--confirm-repeats", "0"]
    drivers.append(Driver([*SEARCH, *base, "--storage", str(original), "--num-samples", "2", "--epochs", str(epochs),
                           "--references", "none"], tmp_path / "driver-1.log"))
    assert drivers[0].wait(600) == 0, drivers[0].output()[-3000:]
    shutil.copytree(original, copy, symlinks=True)
    hashes = _hashes(original)

    drivers.append(Driver([*base, "--storage", str(copy), "--resume", "--num-samples", "3"], tmp_path / "driver-2.log"))
    assert drivers[1].wait(600) == 0, drivers[1].output()[-3000:]
    assert _hashes(original) == hashes, "resuming the copy changed the original"
    assert len(read_csv(copy / name / "results.csv")) == 3
    trial_runs = [r for r in _search_runs(copy, name) if r.data.tags.get("fusetune.role") == "trial"]
    assert len(trial_runs) == 3
    assert all(r.info.artifact_uri.startswith(copy.as_uri()) for r in trial_runs)

    shutil.move(copy, moved)
    drivers.append(Driver([*base, "--storage", str(moved), "--resume", "--num-samples", "4"], tmp_path / "driver-3.log"))
    assert drivers[2].wait(600) == 0, drivers[2].output()[-3000:]
    assert not copy.exists(), "the moved folder's old location was written to"
    assert _hashes(original) == hashes
    assert len(read_csv(moved / name / "results.csv")) == 4
    assert len([r for r in _search_runs(moved, name) if r.data.tags.get("fusetune.role") == "trial"]) == 4


# ------------------------------------------------------------------------------ ASHA: a kill keeps its course
ASHA = ["--space", "baseline", "--folds", "2", "--scheduler", "asha", "--grace-period", "1", "--sampler", "tpe",
        "--seed", "3", "--epochs", "9", "--max-concurrent", "1", "--top-k", "1", "--confirm-repeats", "0",
        "--references", "none"]
"""Short trials one at a time (ASHA's rungs at epochs 1 and 3 of 9): several start and end between
two of Tune's periodic snapshots, and ASHA stops some of them."""


def _study_states(exp: Path, name: str) -> dict[str, str]:
    import optuna

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{exp / 'optuna.db'}")
    return {t.user_attrs["ray_trial_id"]: t.state.name for t in study.trials
            if "ray_trial_id" in t.user_attrs and "fusetune.lost" not in t.user_attrs}


def _course(exp: Path) -> list[tuple[str, str, str]]:
    """What a search decided, trial by trial in the order Optuna sampled them: the configuration
    (rounded), the epochs it got, the value it ended with."""
    import optuna

    name = json.loads((exp / "search.json").read_text())["name"]
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{exp / 'optuna.db'}")
    rows = {r["trial_id"]: r for r in read_csv(exp / "results.csv")}
    course = []
    for t in sorted(study.trials, key=lambda t: t.number):
        tid = t.user_attrs.get("ray_trial_id")
        if tid in rows and "fusetune.lost" not in t.user_attrs and t.state.name != "FAIL":
            params = ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(t.params.items()))
            course.append((params, rows[tid]["epochs_done"], f"{float(rows[tid]['macro_f1']):.6f}"))
    return course


def test_killed_at_a_trial_end_after_asha_stopped_another_keeps_that_trial(cluster, drivers, tmp_path):
    """The kill of issue 26: at a trial's final result, just after ASHA stopped another trial. The
    trial that had just finished (its final result recorded, its MLflow run FINISHED) is kept finished
    by the resume, not sampled again, and the Optuna study agrees with Tune on every trial."""
    n = 8
    storage, name = tmp_path / "results", "after-stop"
    exp = storage / name
    args = ["--address", cluster.address, "--storage", str(storage), "--name", name]
    # no periodic snapshot while the short trials run (Tune's period is 10 s at least; a loaded
    # machine stretches a trial past it): what matters is the trial that started after the last one
    drivers.append(Driver([*ASHA, *args, "--num-samples", str(n)], tmp_path / "driver-1.log",
                          env={"FUSETUNE_KILL_AT": "after_stop", "TUNE_GLOBAL_CHECKPOINT_S": "600"}))
    rc = drivers[0].wait(600)
    assert rc == -signal.SIGKILL, f"not killed after a stop (rc {rc}):\n{drivers[0].output()[-3000:]}"
    _wait_for_orphans(exp)
    before = trial_results(exp)
    finished_before = _finished(exp, storage, name)
    last = max(exp.glob("fusetune_*/final_result.json"), key=lambda p: p.stat().st_mtime).parent.name.rsplit("_", 1)[1]
    assert last in finished_before

    resumed_at = time.time()
    drivers.append(Driver([*args, "--resume"], tmp_path / "driver-2.log"))
    assert drivers[1].wait(900) == 0, drivers[1].output()[-3000:]
    assert "done" in drivers[1].output()

    rows = {r["trial_id"]: r for r in read_csv(exp / "results.csv")}
    assert len(rows) == n and all(r["status"] == "TERMINATED" for r in rows.values()), rows
    assert any(int(r["epochs_done"]) < 9 for r in rows.values()), "ASHA stopped no trial"
    after = trial_results(exp)
    for t in finished_before:  # kept as it was: in the results, not rerun
        assert t in rows, f"finished trial {t} lost"
        assert all(r["timestamp"] <= resumed_at for r in after[t]), f"finished trial {t} ran again after --resume"
        assert after[t][: len(before[t])] == before[t]
    assert rows[last]["final"] == "True" and int(rows[last]["epochs_done"]) == 9
    states = _study_states(exp, name)
    assert {t: states.get(t) for t in rows} == {
        t: "COMPLETE" if r["final"] == "True" else "PRUNED" for t, r in rows.items()}, states


def test_a_resumed_asha_search_makes_the_uninterrupted_ones_decisions(cluster, drivers, tmp_path):
    """The same seeded ASHA + TPE search twice: once uninterrupted, once killed mid-search (at its
    12th result: trials finished, stopped and running) and resumed. Every trial gets the same
    configuration, the same number of epochs (ASHA's decisions) and the same value. What may
    differ: Ray's trial ids, timings, and the trials a killed driver had sampled after its last
    snapshot (none here: Tune snapshots each new trial before it starts)."""
    n = 6
    ref_storage, storage, name = tmp_path / "reference", tmp_path / "results", "course"
    drivers.append(Driver([*ASHA, "--address", cluster.address, "--storage", str(ref_storage), "--name", name,
                           "--num-samples", str(n)], tmp_path / "reference.log"))
    assert drivers[0].wait(600) == 0, drivers[0].output()[-3000:]
    expected = _course(ref_storage / name)
    assert len(expected) == n and any(int(e) < 9 for _, e, _ in expected), expected  # ASHA stopped one

    args = ["--address", cluster.address, "--storage", str(storage), "--name", name]
    drivers.append(Driver([*ASHA, *args, "--num-samples", str(n)], tmp_path / "driver-1.log",
                          env={"FUSETUNE_KILL_AT": "result#12"}))
    rc = drivers[1].wait(600)
    assert rc == -signal.SIGKILL, f"not killed (rc {rc}):\n{drivers[1].output()[-3000:]}"
    _wait_for_orphans(storage / name)
    drivers.append(Driver([*args, "--resume"], tmp_path / "driver-2.log"))
    assert drivers[2].wait(900) == 0, drivers[2].output()[-3000:]
    assert _course(storage / name) == expected


# ------------------------------------------------------------------------------ the driver's own Ray node lost
def _raylet_of(driver: Driver) -> int | None:
    pids = [p for p in descendants(driver.proc.pid) if comm(p) == "raylet"]
    return pids[0] if len(pids) == 1 else None


def test_local_node_lost_mid_trial_says_so_and_resumes(data_dir, drivers, tmp_path):
    """The driver's own local Ray node dies mid-trial (its raylet killed by PID): the driver ends
    non-zero with our lines (what stopped, what was kept, the --resume command) and none of Ray's
    state dumps (those are in <search>/driver.log), the MLflow run of the search FAILED; --resume
    then completes the search, the trial that was running retried, the Optuna study agreeing."""
    epochs, n = 400, 3
    storage, name = tmp_path / "results", "local-node"
    exp = storage / name
    args = ["--storage", str(storage), "--name", name]
    drivers.append(Driver([*EVERY_EPOCH, *args, "--num-samples", str(n), "--epochs", str(epochs),
                           "--max-concurrent", "1", "--top-k", "1", "--confirm-repeats", "0", "--references", "none"],
                          tmp_path / "driver-1.log"))
    # the search folder's result.json is a copy Tune makes with its snapshots: a trial well under way
    wait_for(lambda: any(len(rs) > 20 for rs in trial_results(exp).values()), 600, "a trial's 20th epoch", drivers[0])
    raylet = wait_for(lambda: _raylet_of(drivers[0]), 60, "the local raylet", drivers[0])
    os.kill(raylet, signal.SIGKILL)
    rc = drivers[0].wait(300)
    out = drivers[0].output()
    assert rc not in (0, -signal.SIGKILL), out[-3000:]
    assert "Ray node was lost" in out and f"--resume --storage {storage} --name {name}" in out, out[-3000:]
    assert "state-dump" not in out and "Raylet is terminated" not in out, out[-3000:]
    assert "Raylet is terminated" in (exp / "driver.log").read_text(errors="replace")
    parents = [r for r in _search_runs(storage, name) if r.data.tags.get("fusetune.role") == "search"]
    assert [p.info.status for p in parents] == ["FAILED"]
    finished_before = _finished(exp, storage, name)

    drivers.append(Driver([*args, "--resume"], tmp_path / "driver-2.log"))
    assert drivers[1].wait(900) == 0, drivers[1].output()[-3000:]
    rows = {r["trial_id"]: r for r in read_csv(exp / "results.csv")}
    assert len(rows) == n and completed(list(rows.values()), epochs), rows
    assert finished_before <= set(rows)
    states = _study_states(exp, name)
    assert {t: states.get(t) for t in rows} == dict.fromkeys(rows, "COMPLETE"), states
    parents = [r for r in _search_runs(storage, name) if r.data.tags.get("fusetune.role") == "search"]
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert not [r for r in _search_runs(storage, name) if r.info.status == "RUNNING"]


# ------------------------------------------------------------------------------ a confirmation trial's worker lost
def test_a_confirmation_trial_whose_worker_is_lost_stops_the_search_and_resume_runs_it(data_dir, drivers, tmp_path):
    """A confirmation job's Ray worker dies (SIGKILL) while it trains: that is not its candidate's
    error. The driver ends non-zero naming the lost worker, with the --resume command; --resume runs
    the job again and the confirmation table has every candidate confirmed, none with an error."""
    storage, name = tmp_path / "results", "lost-confirm"
    exp = storage / name
    args = ["--storage", str(storage), "--name", name]
    drivers.append(Driver([*SEARCH, *args, "--num-samples", "2", "--epochs", "400", "--top-k", "1",
                           "--confirm-repeats", "2", "--references", "logreg", "--ensemble", "off"],
                          tmp_path / "driver-1.log"))
    wait_for(lambda: "confirming the top" in drivers[0].output(), 600, "the confirmation stage", drivers[0])
    since = uptime()

    def confirmation_workers() -> list[int]:  # the trial workers started after the stage began
        pids = [p for p in descendants(drivers[0].proc.pid) if comm(p).startswith("ray::ImplicitF")]
        return [p for p in pids if (started(p) or 0) > since - 0.5]

    wait_for(confirmation_workers, 120, "a confirmation trial's worker", drivers[0], every=0.05)
    time.sleep(1.0)  # the model candidates' jobs (400 epochs, 2 x 2 folds) well into their training
    for worker in confirmation_workers():
        os.kill(worker, signal.SIGKILL)
    rc = drivers[0].wait(300)
    out = drivers[0].output()
    assert rc == 1, out[-3000:]
    # Ray's words for a killed actor (ActorDiedError: "The actor is dead because its worker process has died")
    assert re.search(f"search {name} stopped: [12] trial\\(s\\) of the confirmation stage lost their Ray worker "
                     r"\(\w*Actor\w*Error: ", out), out[-3000:]
    assert f"continue with: python -m search.run --resume --storage {storage} --name {name}" in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert not (exp / "confirmation.csv").exists()

    drivers.append(Driver([*args, "--resume"], tmp_path / "driver-2.log"))
    assert drivers[1].wait(900) == 0, drivers[1].output()[-3000:]
    with open(exp / "confirmation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["candidate"] for r in rows} >= {"paper-default", "reference:logreg"}, rows
    assert not [r for r in rows if r["error"]], rows
    assert all(int(r["n_scores"]) == 4 for r in rows if r["kind"] != "reference"), rows
