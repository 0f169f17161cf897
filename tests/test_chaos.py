"""Chaos: a search stopped again and again, at random instants of every stage, always continues.

One seeded loop (``FUSETUNE_CHAOS_SEED`` replays a run; the seed is printed) drives one ASHA + TPE
search with a persistent Optuna study, confirmation, references and an ensemble, through
``python -m search.run`` and ``--resume`` until it ends:

- while trials run, most runs are SIGKILLed by the driver itself at the ``n``-th instant it reaches
  (``FUSETUNE_KILL_AT=any#n``: a trial's start, a result, a trial's end, a stop by ASHA, a
  checkpoint), some from outside, with every process of the driver, after a random delay (Ray's
  start, the data, the checks, mid-epoch: wherever the clock falls);
- then one run dies at each phase after the trials (the results, the confirmation, the refit, the
  first and second registration, the reports) and two from outside mid-way through them;
- once, the driver's own local Ray node is lost mid-trial (its raylet killed by PID);
- once, the disk of the results folder is full (a small tmpfs filled to the last byte; a fault
  injected at a write of the search folder where this machine cannot mount one).

After each stop the search folder is checked (a finished trial's final result never changes), and
at the end: every trial finished once (one row, one FINISHED MLflow run, no epoch logged twice),
no MLflow run left RUNNING, one champion and it is the best confirmed candidate, and the Optuna
study's states are Tune's. It takes 26-28 minutes on 2 shared cores, hence ``slow``.
"""

from __future__ import annotations

import csv
import json
import os
import random
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

from processes import alive, comm, descendants

REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc"),
]

SEARCH = ["--space", "baseline", "--folds", "2", "--scheduler", "asha", "--grace-period", "1", "--sampler", "tpe",
          "--epochs", "27", "--num-samples", "10", "--max-concurrent", "2", "--cpus-per-trial", "1", "--top-k", "2",
          "--confirm-repeats", "1", "--references", "logreg", "--seed", "11"]
"""ASHA's rungs at epochs 1, 3 and 9 of 27: each trial reports up to 4 times and ASHA stops some."""
MIN_KILLS = 20
DISK = 400 * 2**20  # the tmpfs of the results folder


# ------------------------------------------------------------------------------ processes
class Run:
    """One ``python -m search.run`` (supervised, its own session), every process it starts
    remembered while it lives so that the next run starts only when all are gone."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str]) -> None:
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "search.run", *args], cwd=REPO, env=env,
                                     stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        self.seen: set[int] = set()
        self._done = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._done.is_set():
            self.seen |= descendants(self.proc.pid)
            time.sleep(0.2)

    def raylet(self) -> int | None:
        pids = [p for p in descendants(self.proc.pid) if comm(p) == "raylet"]
        return pids[0] if len(pids) == 1 else None

    def kill_all(self) -> None:
        for pid in {self.proc.pid, *descendants(self.proc.pid), *self.seen}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            raise AssertionError(f"the run did not end in {timeout:.0f}s:\n{self.output()[-3000:]}") from None
        self._done.set()
        self._watcher.join()
        deadline = time.monotonic() + 120  # Ray's processes end with their driver; trial workers last
        while any(alive(p) for p in self.seen):
            if time.monotonic() > deadline:
                self.kill_all()
                break
            time.sleep(0.2)
        return rc

    def output(self) -> str:
        return self.log.read_text(errors="replace")


# ------------------------------------------------------------------------------ the disk
class SmallDisk:
    """A tmpfs for the results folder (root and ``mount`` needed); :meth:`fill` takes every free byte."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ftchaos-"))
        self.mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(self.dir)],
                                      capture_output=True).returncode == 0
        self.filler = self.dir / "filler"

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for size in (2**20, 4096, 1):  # unbuffered: every byte that fits, no flush left to fail
                while True:
                    try:
                        os.write(fd, b"\0" * size)
                    except OSError:
                        break
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def remove(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.dir)], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def disk() -> Iterator[SmallDisk]:
    d = SmallDisk()
    try:
        yield d
    finally:
        d.remove()


# ------------------------------------------------------------------------------ what is on storage
def _final_results(exp: Path) -> dict[str, str]:
    return {p.parent.name.rsplit("_", 1)[1]: p.read_text() for p in exp.glob("fusetune_*/final_result.json")}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "FUSETUNE_KILL_AT")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return {**env, **extra}


# ------------------------------------------------------------------------------ the loop
POST_SEARCH = ("results", "confirmation", "refit", "reports")
"""The driver's phases after its trials have ended, reached by every --resume (of a finished search
too): a run armed with one of them finishes the trials left, then dies there."""


def plan(rng: random.Random) -> list[tuple[str, Any]]:
    """The stops, in order: 14 while trials run (the driver's own instants ``any#n``, outside kills
    after a random delay, the raylet once, the disk once); then the creation of a model version,
    twice (reached only while versions are left to create); then every phase after the trials and
    two outside kills mid-way through them (the confirmation's and the refit's training)."""
    during = [("any", rng.randint(1, 6)) if rng.random() < 0.7 else ("outside", rng.uniform(5, 60)) for _ in range(12)]
    during.insert(rng.randint(2, len(during)), ("raylet", rng.uniform(1, 4)))
    during.insert(rng.randint(2, len(during)), ("disk", None))
    after = [("phase", p) for p in POST_SEARCH] + [("outside", rng.uniform(4, 14)) for _ in range(2)]
    rng.shuffle(after)
    return [*during, ("phase", "registration"), ("phase", "registration"), *after]


def more_stops(rng: random.Random, n: int) -> list[tuple[str, Any]]:
    """Stops that a --resume always reaches, the search ended or not (the phases after the trials):
    added when the planned ones that could miss (a run that ended before its delay, a version left
    to create) did not make :data:`MIN_KILLS`."""
    return [("phase", rng.choice(POST_SEARCH)) for _ in range(n)]


def _stop(run: Run, kind: str, arg: Any, exp: Path, disk: SmallDisk, seed: int) -> str:
    """Carry out one stop on ``run`` (started armed as :func:`_env_for` says); returns its name."""
    if kind == "raylet":
        deadline = time.monotonic() + 300
        while run.proc.poll() is None and time.monotonic() < deadline:
            if any(comm(p).startswith("ray::ImplicitF") for p in descendants(run.proc.pid)):  # a trial runs
                time.sleep(arg)
                break
            time.sleep(0.2)
        raylet = run.raylet()
        if run.proc.poll() is not None or raylet is None:
            run.wait(900)
            return f"raylet missed (rc {run.proc.returncode})"
        os.kill(raylet, signal.SIGKILL)
        rc = run.wait(600)
        out = run.output()
        if rc == 0:  # the kill came after the driver's last use of Ray (its last confirmation job had ended)
            assert "results: " in out and "Traceback" not in out, (seed, out[-3000:])
            return "raylet missed (the search ended)"
        assert rc != 0 and "stopped: its Ray node was lost" in out and "continue with:" in out, (seed, out[-3000:])
        assert "[state-dump]" not in out, (seed, out[-3000:])
        return "raylet"
    if kind == "outside":
        try:
            run.proc.wait(timeout=arg)
        except subprocess.TimeoutExpired:
            run.kill_all()
        rc = run.wait(120)
        return f"outside {arg:.1f}s" if rc != 0 else "done"
    rc = run.wait(900)
    if kind == "disk":
        disk.free()
        out = run.output()
        if rc != 0:
            assert "stopped:" in out and "continue with:" in out, (seed, out[-3000:])
            assert not list(exp.rglob("*.tmp")), (seed, list(exp.rglob("*.tmp")))
        return f"disk full (rc {rc})"
    assert rc in (0, -signal.SIGKILL), (seed, rc, run.output()[-3000:])
    return f"{kind} {arg}" if rc != 0 else "done"


def _env_for(kind: str, arg: Any, disk: SmallDisk) -> dict[str, str]:
    if kind == "any":
        return _env({"FUSETUNE_KILL_AT": f"any#{arg}"})
    if kind == "phase":
        return _env({"FUSETUNE_KILL_AT": arg})
    if kind == "disk":
        if disk.mounted:
            disk.fill()
            return _env({})
        return _env({"FUSETUNE_FAIL_AT": "results"})  # no tmpfs here: the same error, injected
    return _env({})


def test_chaos(data_dir, disk, tmp_path):
    seed = int(os.environ.get("FUSETUNE_CHAOS_SEED") or random.SystemRandom().randrange(10**6))
    print(f"chaos seed {seed} (FUSETUNE_CHAOS_SEED={seed} replays it)", flush=True)
    rng = random.Random(seed)
    storage, name = disk.dir / "results", "chaos"
    exp = storage / name
    base = ["--storage", str(storage), "--name", name]
    # every planned stop is tried, also once the search has ended (a --resume of an ended search
    # passes every phase after the trials again); then --resume until it ends
    stops = plan(rng)
    finals: dict[str, str] = {}
    done: list[str] = []
    runs = 0
    while stops:
        kind, arg = stops.pop(0)
        runs += 1
        args = [*SEARCH, *base] if runs == 1 else [*base, "--resume"]
        run = Run(args, tmp_path / f"run-{runs:02d}.log", _env_for(kind, arg, disk))
        what = _stop(run, kind, arg, exp, disk, seed)
        done.append(what)
        print(f"run {runs}: {what}", flush=True)
        if run.proc.returncode != 0:
            assert "Traceback" not in run.output(), (seed, done, run.output()[-3000:])
        now = _final_results(exp)
        changed = {t for t in finals if now.get(t) != finals[t]}
        assert not changed, f"seed {seed}: finished trials changed after {what}: {changed}"
        finals.update(now)
        kills = sum(d != "done" and not d.startswith(("raylet missed", "none")) for d in done)
        if not stops and kills < MIN_KILLS:
            stops = more_stops(rng, MIN_KILLS - kills)
        if not stops and (kind != "none" or run.proc.returncode != 0):
            assert runs < 80, f"seed {seed}: the search did not end: {done}"
            stops = [("none", None)]  # then --resume until the search ends
    print(f"chaos seed {seed}: {len(done)} runs, {kills} stops: {done}", flush=True)
    _check_the_end(exp, storage, name, finals, seed)
    assert kills >= MIN_KILLS, f"seed {seed}: only {kills} stops: {done}"


def _check_the_end(exp: Path, storage: Path, name: str, finals: dict[str, str], seed: int) -> None:
    import optuna
    from mlflow.tracking import MlflowClient

    rows = [r for r in _rows(exp / "results.csv") if r["status"] != "REFERENCE"]
    ids = [r["trial_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 10, (seed, ids)
    assert all(r["status"] == "TERMINATED" for r in rows), (seed, rows)
    assert set(finals) <= set(ids), (seed, set(finals) - set(ids))
    for r in rows:  # the final result as first recorded
        if r["trial_id"] in finals:
            assert int(json.loads(finals[r["trial_id"]])["epoch"]) == int(r["epochs_done"]), (seed, r)

    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=5000)
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"], seed
    search_runs = [r for r in runs if r.data.tags.get("fusetune.search_name") == name]
    counted = [r for r in search_runs if r.data.tags.get("fusetune.role") == "trial"]
    assert sorted(r.data.tags["fusetune.trial_id"] for r in counted) == sorted(ids), seed
    for run in counted:
        assert run.info.status == "FINISHED", (seed, run.data.tags["fusetune.trial_id"])
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "macro_f1")]
        assert len(steps) == len(set(steps)), (seed, run.data.tags["fusetune.trial_id"], steps)

    # one champion, the best model candidate confirmed on the fresh folds
    confirmed = _rows(exp / "confirmation.csv")
    best = next(r for r in confirmed if r["kind"] not in ("reference", "incumbent"))
    registered = {v.name for v in client.search_model_versions()}
    assert len(registered) == 1, (seed, registered)
    champion = client.get_model_version_by_alias(registered.pop(), "champion")
    assert champion.tags.get("fusetune.candidate") == best["candidate"], (seed, champion.tags, best)

    # the Optuna study agrees with Tune: a trial Tune finished is COMPLETE, one ASHA stopped PRUNED;
    # every other Optuna trial (asked by a killed driver, or told FAIL before a retry) FAIL
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{exp / 'optuna.db'}")
    by_tune = {r["trial_id"]: "COMPLETE" if r["final"] == "True" else "PRUNED" for r in rows}
    live = {}
    for t in study.trials:
        tid = t.user_attrs.get("ray_trial_id")
        if t.state.name != "FAIL":
            assert tid not in live, (seed, tid)
            live[tid] = t.state.name
    assert live == by_tune, (seed, live, by_tune)
