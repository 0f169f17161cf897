"""trainables.exit_request: a SIGTERM that lands in a weakref callback ends the worker silently.

Each case runs in a fresh interpreter: Ray's worker handler (SIGTERM -> ``SystemExit(1)``) and a
weakref callback that is running when the signal arrives, as when the raylet ends a trial's worker
while the garbage collector frees torch objects.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import os, signal, sys, weakref
from trainables.exit_request import quiet_exit_requests

def sigterm_handler(signum, frame):  # what Ray's worker main loop installs
    raise SystemExit(1)

signal.signal(signal.SIGTERM, sigterm_handler)
if {install}:
    quiet_exit_requests()
    quiet_exit_requests()  # a second trial in the same worker

class Model:
    pass

def freed(_):
    {body}

model = Model()
ref = weakref.ref(model, freed)
del model  # the callback runs here
print("went on", flush=True)
"""

SIGTERM_IN_CALLBACK = "os.kill(os.getpid(), signal.SIGTERM); [None for _ in range(100000)]"


def run(body: str, install: bool) -> subprocess.CompletedProcess:
    code = textwrap.dedent(SCRIPT).format(install=install, body=body)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_without_it_the_exit_request_is_lost_and_printed():
    """The failure this module exists for (so the test below can fail)."""
    out = run(SIGTERM_IN_CALLBACK, install=False)
    assert "Exception ignored in" in out.stderr and "SystemExit: 1" in out.stderr and "Traceback" in out.stderr
    assert out.stdout == "went on\n" and out.returncode == 0


def test_a_sigterm_in_a_weakref_callback_ends_the_process_silently():
    out = run(SIGTERM_IN_CALLBACK, install=True)
    assert (out.returncode, out.stdout, out.stderr) == (1, "", "")


@pytest.mark.parametrize(("exc", "code"), [("SystemExit(3)", 3), ("SystemExit(None)", 0), ("SystemExit('bye')", 1)])
def test_the_exit_code_is_the_requested_one(exc, code):
    out = run(f"raise {exc}", install=True)
    assert (out.returncode, out.stdout, out.stderr) == (code, "", "")


def test_other_exceptions_in_callbacks_are_still_reported():
    out = run("raise ValueError('a bug in a callback')", install=True)
    assert "ValueError: a bug in a callback" in out.stderr and "Exception ignored in" in out.stderr
    assert out.stdout == "went on\n" and out.returncode == 0


@pytest.mark.filterwarnings("ignore:`get_trial_resources` is meant")  # outside a Tune session: one CPU
def test_every_trainable_installs_it(monkeypatch):
    """The search's trials and the confirmation's jobs: both end by the raylet's SIGTERM."""
    from search.select import confirm
    from trainables import trainable
    from trainables.exit_request import _MARK

    def fail(*_a, **_k):
        raise ValueError("no job here")

    monkeypatch.setattr(confirm, "run_job", fail)
    for name, call in (("confirmation", lambda: confirm.fusetune_confirm({"job": {}})),
                       ("search", lambda: trainable.run_trial("baseline", {"method": "baseline"}))):  # no data
        monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)
        with pytest.raises(trainable.TrialFailure):
            call()
        assert getattr(sys.unraisablehook, _MARK, False), name
