"""One driver per search and one creator of a new SQLite store (issue 26, item 3): a second driver
on a running search is refused in one line, a killed driver leaves no stale lock, and processes
creating one SQLite tracking store at once all succeed."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from processes import parent
from search.prepare.errors import UsageError
from search.trust import locks

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def lock_dir(tmp_path, monkeypatch):
    folder = tmp_path / "locks"
    monkeypatch.setenv(locks.LOCK_DIR_ENV, str(folder))
    return folder


def _env(lock_dir: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), **{locks.LOCK_DIR_ENV: str(lock_dir)})
    env.pop("RAY_ADDRESS", None)
    return env


HOLD = ("import sys, time; from search.trust import locks\n"
        "with locks.driver_lock(sys.argv[1], 'x'):\n    print('held', flush=True); time.sleep(600)")


def test_a_second_driver_is_refused_and_a_killed_one_leaves_no_lock(lock_dir, tmp_path):
    search = str(tmp_path / "results" / "s1")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, search], env=_env(lock_dir), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError) as refused:
            with locks.driver_lock(search, "s1"):
                pass
        assert "\n" not in str(refused.value)
        assert f"--name s1: the search is being run by another driver (pid {holder.pid} on" in str(refused.value)
        with locks.driver_lock(str(tmp_path / "results" / "s2"), "s2"):  # another search is not affected
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with locks.driver_lock(search, "s1"):  # the kernel released the killed driver's lock
        with pytest.raises(UsageError):   # and this process now holds it against a second open
            with locks.driver_lock(search, "s1"):
                pass
    assert not (tmp_path / "results").exists()  # the lock writes nothing into the results folder


def test_resume_of_a_search_still_starting_names_its_driver(lock_dir, tmp_path):
    """``--resume`` of a search whose driver holds the lock but has written no Tune state yet (its
    checks, data and cluster come first) is refused as running, not as missing."""
    from search.prepare.preflight import find_search

    storage = str(tmp_path / "results")
    locks.refuse_if_running(f"{storage}/s1", "s1")  # no lock file yet: nothing to refuse
    with pytest.raises(UsageError, match=r"^--resume: no search 's1' to resume in "):
        find_search(storage, "s1")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, f"{storage}/s1"], env=_env(lock_dir),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match=rf"^--name s1: the search is being run by another driver \(pid {holder.pid} on"):
            find_search(storage, "s1")
        with pytest.raises(UsageError, match="being run by another driver"):
            locks.refuse_if_running(f"{storage}/s1", "s1")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    locks.refuse_if_running(f"{storage}/s1", "s1")  # the killed driver's lock is gone
    with locks.driver_lock(f"{storage}/s1", "s1"):  # and the probe left none behind
        pass


CREATE = ("import sys, time\nfrom search.tracking.store import check_tracking_uri\nt = float(sys.argv[2])\n"
          "while time.time() < t: time.sleep(0.001)\ncheck_tracking_uri(sys.argv[1])\nprint('ok')")


def test_processes_creating_one_sqlite_store_at_once_all_succeed(lock_dir, tmp_path):
    # before the creation lock, 8 of 12 such processes failed with MLflow's "Online migration expected
    # to match one row" (alembic racing on the new database's version table)
    for attempt in range(2):
        folder = tmp_path / f"store{attempt}"
        folder.mkdir()
        start = time.time() + 8  # every process imported MLflow by then
        procs = [subprocess.Popen([sys.executable, "-c", CREATE, f"sqlite:///{folder}/mlflow.db", str(start)],
                                  env=_env(lock_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(3)]
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0 and out.strip() == "ok", err[-2000:]


def test_the_same_name_started_twice_or_resumed_while_running_is_refused(lock_dir, tmp_path, data_dir):
    storage = tmp_path / "results"
    argv = [sys.executable, "-m", "search.run", "--space", "baseline", "--data", "breast-tcga", "--num-samples", "2",
            "--epochs", "4", "--folds", "2", "--scheduler", "fifo", "--confirm-repeats", "0", "--references", "none",
            "--top-k", "0", "--max-concurrent", "1", "--storage", str(storage), "--name", "once"]
    first = subprocess.Popen(argv, cwd=REPO, env=_env(lock_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        # the driver is the child process python -m search.run watches (search.tune.supervisor)
        while not (driver := next(iter(_holders(lock_dir, first.pid)), None)):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.2)
        for extra in ([], ["--resume"]):
            second = subprocess.run([*argv, *extra], cwd=REPO, env=_env(lock_dir), capture_output=True, text=True,
                                    timeout=300)
            err = second.stderr.strip().splitlines()
            assert second.returncode == 2 and len(err) == 1, second.stderr[-2000:]
            assert f"being run by another driver (pid {driver} on" in err[0]
        out, err = first.communicate(timeout=600)
        assert first.returncode == 0, err[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    rows = list(csv.DictReader((storage / "once" / "results.csv").open()))
    assert len(rows) == 2  # the refused drivers added no trial


def _holders(lock_dir: Path, pid: int):
    """The pids holding a search lock that are ``pid`` or its child."""
    for f in lock_dir.glob("search-*.lock"):
        try:
            holder = json.loads(f.read_text() or "{}").get("pid")
        except ValueError:
            continue
        if holder == pid or parent(holder) == pid:
            yield holder

