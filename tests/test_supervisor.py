"""search.tune.supervisor: whatever ends a driver, the user gets our lines and the MLflow run ends.

The supervised driver is a small Python program run as its own process (a fork of pytest would
share its captured output); the end-to-end case, a search whose local Ray node is lost, is in
tests/test_distributed.py (slow)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from search.tune import supervisor
from search.tune.settle import TrialsLost

REPO = Path(__file__).resolve().parents[1]


def _supervise(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    """Run ``body`` (the driver's code; ``folder`` is a search folder) supervised, as a program."""
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys
        from search.tune import supervisor

        folder = {str(tmp_path / "results" / "s")!r}

        def run():
            supervisor.report(name="s", folder=folder, storage={str(tmp_path / "results")!r})
        """) + textwrap.indent(textwrap.dedent(body), "    ") + "\nsys.exit(supervisor.supervised(run))\n")
    (tmp_path / "results" / "s" / "fusetune_x_1").mkdir(parents=True)
    (tmp_path / "results" / "s" / "fusetune_x_1" / "final_result.json").write_text('{"final": true}')
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(supervisor.SUPERVISED_ENV, None)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)


def test_a_driver_that_returns_is_left_alone(tmp_path):
    done = _supervise(tmp_path, "print('searching'); return 3")
    assert done.returncode == 3 and done.stdout == "searching\n" and done.stderr == ""


def test_a_driver_ended_by_sys_exit_keeps_its_code(tmp_path):
    done = _supervise(tmp_path, "sys.exit(2)")
    assert done.returncode == 2 and done.stderr == ""


def test_a_killed_driver_gets_our_lines_and_the_same_signal(tmp_path):
    done = _supervise(tmp_path, "os.kill(os.getpid(), signal.SIGKILL)")
    assert done.returncode == -signal.SIGKILL
    lines = done.stderr.strip().splitlines()
    assert lines == [f"python -m search.run: search s stopped: the driver was killed (SIGKILL); 1 finished trial(s) kept "
                     f"in {tmp_path / 'results' / 's'}",
                     f"continue with: python -m search.run --resume --storage {tmp_path / 'results'} --name s"]


def test_a_driver_that_ray_ends_is_named_from_rays_log(tmp_path):
    """Ray's core worker ends the driver with _exit(1) when its node dies; the log says why."""
    body = """
        log = os.path.join(folder, "driver.log")
        open(log, "w").write("(raylet) Raylet is terminated. Termination is unexpected.\\n[state-dump] ...\\n")
        supervisor.report(log=log)
        os._exit(1)
        """
    done = _supervise(tmp_path, body)
    assert done.returncode == 1
    assert "search s stopped: its Ray node was lost" in done.stderr and "--resume" in done.stderr
    assert "state-dump" not in done.stderr


def test_a_driver_that_ends_before_its_search_says_nothing_was_recorded(tmp_path):
    script = tmp_path / "early.py"
    script.write_text("import os, sys\nfrom search.tune import supervisor\n"
                      "sys.exit(supervisor.supervised(lambda: os._exit(7)))\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 7
    assert done.stderr.strip() == ("python -m search.run: the driver ended unexpectedly (exit code 7) before the "
                                   "search started; nothing was recorded")


def test_the_driver_dies_with_its_supervisor(tmp_path):
    """SIGKILL to the process the user started (the supervisor) ends the driver too."""
    done = _supervise(tmp_path, """
        print(os.getpid(), flush=True)
        os.kill(os.getppid(), signal.SIGKILL)
        import time
        time.sleep(30)
        open(os.path.join(folder, "survived"), "w").write("1")
        """)
    assert done.returncode == -signal.SIGKILL
    child = int(done.stdout.split()[0])
    import time

    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{child}").exists()


@pytest.mark.parametrize(("exc", "words"), [
    (OSError(errno.ENOSPC, "No space left on device", "/r/s/results.csv"), "the disk is full (/r/s/results.csv)"),
    (MlflowException("API request to http://127.0.0.1:5000 failed"), "the MLflow tracking store failed (API request"),
    (ValueError("a bug"), None),
    (OSError(errno.EACCES, "Permission denied"), None),
    (TrialsLost("1 trial(s) of the confirmation stage lost their Ray worker (ActorDiedError: ...)", own_node=True),
     "its Ray node was lost (1 trial(s) of the confirmation stage lost their Ray worker"),
    (TrialsLost("1 trial(s) of the confirmation stage lost their Ray worker (ActorUnavailableError: ...)"),
     "1 trial(s) of the confirmation stage lost their Ray worker (ActorUnavailableError"),
])
def test_cause(exc, words, monkeypatch):
    monkeypatch.setattr(supervisor, "_known", {})
    found = supervisor.cause(exc)
    assert (found is None) if words is None else found.startswith(words), found


def test_stopped_marks_the_run_failed_and_leaves_no_temporary_file(tmp_path, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("e"), tags={"fusetune.search_name": "s", "fusetune.role": "search"})
    folder = tmp_path / "s"
    (folder / "fusetune_x_1").mkdir(parents=True)
    (folder / "results.csv.tmp").write_text("half")
    (folder / "fusetune_x_1" / "final_result.json.tmp").write_text("half")
    monkeypatch.setattr(supervisor, "_known", {"name": "s", "folder": str(folder), "storage": str(tmp_path),
                                               "tracking_uri": uri})
    assert supervisor.stopped(OSError(errno.ENOSPC, "No space left on device", str(folder / "results.csv"))) == 1
    err = capsys.readouterr().err  # after MLflow's own lines on creating the store
    ours = err[err.index("python -m search.run: "):].strip().splitlines()
    assert len(ours) == 2 and ours[0].startswith("python -m search.run: search s stopped: the disk is full")
    assert ours[1] == f"continue with: python -m search.run --resume --storage {tmp_path} --name s"
    assert not list(folder.rglob("*.tmp"))
    assert client.get_run(run.info.run_id).info.status == "FAILED"
