"""search.tune.faults: FUSETUNE_KILL_AT=<phase>[#n] and any#n name the instant the driver kills itself."""

from __future__ import annotations

import signal

import pytest

from search.tune import faults


@pytest.fixture
def kills(monkeypatch):
    got: list[int] = []
    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: got.append(sig))
    monkeypatch.setattr(faults, "_reached", {})
    return got


@pytest.mark.parametrize(("spec", "phases", "killed_at"), [
    ("refit", ["result", "refit", "refit"], 1),
    ("registration#2", ["registration", "reports", "registration", "registration"], 2),
    ("result#3", ["result", "trial_end", "result", "result", "result"], 3),
    ("any#3", ["startup", "result", "trial_end", "result"], 2),
    ("reports", ["result", "refit"], None),
])
def test_the_kill_comes_at_the_named_instant(spec, phases, killed_at, kills, monkeypatch):
    monkeypatch.setenv(faults.KILL_ENV, spec)
    at = None
    for i, phase in enumerate(phases):
        faults.point(phase)
        if kills and at is None:
            at = i
    assert at == killed_at and kills[:1] == ([signal.SIGKILL] if killed_at is not None else [])


def test_unset_is_a_no_op_and_installs_no_callback(kills, monkeypatch):
    monkeypatch.delenv(faults.KILL_ENV, raising=False)
    for phase in faults.PHASES:
        faults.point(phase)
    assert kills == [] and faults.callbacks() == []
    monkeypatch.setenv(faults.KILL_ENV, "any#5")
    assert len(faults.callbacks()) == 1  # the Tune-loop phases count towards any
    monkeypatch.setenv(faults.KILL_ENV, "refit")
    assert faults.callbacks() == []
