"""search.tune.replay: a resumed ASHA / median rule decides as the uninterrupted one did.

Each test runs one scheduler through a search as it happens (results arrive, decisions are made),
and a second, fresh one as a resumed driver builds it: the restored trials are added and their
``result.json`` replayed. From then on both get the same new results and must decide alike; Ray's
plain scheduler, fresh, decides otherwise (so each test can fail)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow.fs
import pytest
from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule, TrialScheduler

from search.tune import replay
from search.tune.replay import RememberingASHA, RememberingMedian

STOP, CONTINUE = TrialScheduler.STOP, TrialScheduler.CONTINUE


@dataclass(eq=False)
class Trial:
    """What the schedulers and search.tune.replay read of a Tune trial."""

    trial_id: str
    path: str
    status: str = "RUNNING"
    run_metadata: Any = None  # .last_result
    storage: Any = field(default_factory=lambda: type("S", (), {"storage_filesystem": pyarrow.fs.LocalFileSystem()}))


class Controller:
    """What the median rule asks of Tune's controller (the trials it could run instead)."""

    def get_live_trials(self) -> list:
        return []


TUNE = Controller()


def _result(epoch: int, value: float) -> dict[str, Any]:
    return {"epoch": epoch, "m": value}


def _trial(tmp_path: Path, tid: str, results: list[dict[str, Any]], status: str = "RUNNING") -> Trial:
    folder = tmp_path / tid
    folder.mkdir()
    (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in results))
    return Trial(tid, str(folder), status, SimpleNamespace(last_result=results[-1] if results else {}))


def _asha(cls: type = RememberingASHA) -> Any:
    return cls(metric="m", mode="max", time_attr="epoch", max_t=27, grace_period=1, reduction_factor=3)


def _median(cls: type = RememberingMedian) -> Any:
    return cls(metric="m", mode="max", time_attr="epoch", grace_period=1, min_samples_required=2)


# the search before the kill: a and b finished all 27 epochs; c reported up to epoch 9, its checkpoint
# (what it resumes from) at epoch 3
HISTORY = {
    "a": [_result(1, 0.9), _result(3, 0.92), _result(9, 0.95), _result(27, 0.96)],
    "b": [_result(1, 0.8), _result(3, 0.85), _result(9, 0.9), _result(27, 0.91)],
    "c": [_result(1, 0.86), _result(3, 0.88), _result(9, 0.2)],
}
RESTORE_EPOCH = {"c": 3}
# after the kill: c goes on from epoch 4 (its epoch 9 is reported again), then a new trial d
AFTER = [("c", _result(9, 0.2)), ("d", _result(1, 0.95)), ("d", _result(3, 0.1))]


def _live(scheduler: Any, tmp_path: Path) -> dict[str, Trial]:
    """The uninterrupted search: every result as it came (a, b, c interleaved by epoch)."""
    trials = {t: Trial(t, str(tmp_path / f"live-{t}")) for t in [*HISTORY, "d"]}
    for t in HISTORY:
        scheduler.on_trial_add(TUNE, trials[t])
    for epoch in (1, 3, 9, 27):
        for t, results in HISTORY.items():
            for r in results:
                if r["epoch"] == epoch and (t != "c" or epoch <= RESTORE_EPOCH["c"]):
                    if r["epoch"] == 27:
                        scheduler.on_trial_complete(TUNE, trials[t], r)
                    else:
                        scheduler.on_trial_result(TUNE, trials[t], r)
    scheduler.on_trial_add(TUNE, trials["d"])
    return trials


def _resumed(scheduler: Any, tmp_path: Path, monkeypatch) -> dict[str, Trial]:
    """The resumed driver: Tune adds the restored trials (a, b finished; c from its checkpoint)."""
    monkeypatch.setattr(replay.compat, "restore_point",
                        lambda trial: {"epoch": RESTORE_EPOCH[trial.trial_id]} if trial.trial_id in RESTORE_EPOCH else None)
    trials = {t: _trial(tmp_path, t, rs, "RUNNING" if t in RESTORE_EPOCH else "TERMINATED") for t, rs in HISTORY.items()}
    trials["d"] = Trial("d", str(tmp_path / "d"))
    for t in [*HISTORY, "d"]:
        scheduler.on_trial_add(TUNE, trials[t])
    return trials


def _decide(scheduler: Any, trials: dict[str, Trial]) -> list[str]:
    return [scheduler.on_trial_result(TUNE, trials[t], r) for t, r in AFTER]


@pytest.mark.parametrize("make", [_asha, _median], ids=["asha", "median"])
def test_a_resumed_scheduler_decides_as_the_uninterrupted_one(make, tmp_path, monkeypatch):
    live = make()
    expected = _decide(live, _live(live, tmp_path))
    assert STOP in expected  # the history decides something: c at its rung 9, d below the others

    resumed = make()
    assert _decide(resumed, _resumed(resumed, tmp_path, monkeypatch)) == expected

    (tmp_path / "plain").mkdir()
    plain = make(ASHAScheduler if make is _asha else MedianStoppingRule)  # Ray's, resumed: no memory
    assert _decide(plain, _resumed(plain, tmp_path / "plain", monkeypatch)) != expected


def test_history_of_an_unfinished_trial_stops_at_its_restore_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(replay.compat, "restore_point", lambda trial: {"epoch": 3})
    trial = _trial(tmp_path, "c", HISTORY["c"])
    assert [r["epoch"] for r in replay.history(trial, "epoch")] == [1, 3]
    monkeypatch.setattr(replay.compat, "restore_point", lambda trial: None)  # no checkpoint: from scratch
    assert replay.history(trial, "epoch") == []


def test_history_of_a_finished_trial_includes_its_recorded_final_result(tmp_path):
    trial = _trial(tmp_path, "a", HISTORY["a"][:3], "TERMINATED")  # killed before its last line was copied
    final = {**_result(27, 0.96), "final": True}
    (tmp_path / "a" / "final_result.json").write_text(json.dumps(final))
    (tmp_path / "a" / "result.json").write_text((tmp_path / "a" / "result.json").read_text() + '{"epoch": 2')  # a cut line
    assert [r["epoch"] for r in replay.history(trial, "epoch")] == [1, 3, 9, 27]


def test_a_new_trial_has_no_history(tmp_path):
    assert replay.history(Trial("n", str(tmp_path / "missing")), "epoch") == []

    class New:
        trial_id, status = "n", "PENDING"

        @property
        def path(self) -> str:  # as Tune's Trial before it starts
            raise RuntimeError("Should not access `trial_fs_path` without setting `trial_dir_name`")

    assert replay.history(New(), "epoch") == []
