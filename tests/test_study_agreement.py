"""search.tune.study_agreement: the persistent Optuna study follows Tune's trials after any stop.

Each case is a state a killed driver leaves (the chaos test found the first three): built by
hand in a SQLite study, then reconciled against Tune's trials as ``results.collect`` reads them.
"""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from search.select.results import TrialResult
from search.tune.optuna_storage import RAY_TRIAL_ATTR, RETRY_ATTR
from search.tune.study_agreement import LOST_ATTR, reconcile

DIST = {"lr": FloatDistribution(1e-4, 1e-1, log=True)}


@pytest.fixture
def study(tmp_path):
    return optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}", direction="maximize")


def asked(study, ray_id: str | None, lr: float = 0.01, epochs: dict[int, float] | None = None):
    study.enqueue_trial({"lr": lr})
    trial = study.ask(DIST)
    if ray_id is not None:
        trial.set_user_attr(RAY_TRIAL_ATTR, ray_id)
    for epoch, value in (epochs or {}).items():
        trial.report(value, epoch)
    return trial.number


def row(ray_id: str, status: str = "TERMINATED", epoch: int = 9, value: float = 0.7, final: bool = True,
        curve: dict[int, float] | None = None) -> TrialResult:
    last = {"epoch": epoch, "macro_f1": value, "final": final,
            "curve": [{"epoch": e, "macro_f1": v} for e, v in (curve or {}).items()]}
    return TrialResult(ray_id, status, {"lr": 0.01}, [last])


def states(study) -> dict[int, str]:
    return {t.number: t.state.name for t in study.get_trials(deepcopy=False)}


def test_a_trial_tune_finished_after_the_last_tell_is_told_complete_with_its_values(study):
    n = asked(study, "a", epochs={1: 0.5})
    done = reconcile(study, [row("a", curve={3: 0.6})], ["macro_f1"])
    t = study.trials[n]
    assert (t.state, t.values) == (TrialState.COMPLETE, [0.7])
    assert t.intermediate_values == {1: 0.5, 3: 0.6, 9: 0.7}  # the reported one kept, the rest added
    assert done.told == {n: "COMPLETE"} and not done.added


def test_a_trial_a_scheduler_stopped_is_told_pruned(study):
    n = asked(study, "a")
    reconcile(study, [row("a", epoch=3, value=0.4, final=False)], ["macro_f1"])
    t = study.trials[n]
    assert t.state == TrialState.PRUNED and t.intermediate_values == {3: 0.4}


def test_a_retried_trial_left_with_only_its_failed_trial_gets_a_fresh_one(study):
    failed = asked(study, "a", lr=0.02)
    study.tell(failed, state=TrialState.FAIL)
    done = reconcile(study, [row("a", epoch=3, value=0.4, final=False)], ["macro_f1"])
    fresh = study.trials[done.added["a"]]
    assert study.trials[failed].state == TrialState.FAIL  # as it was told
    assert fresh.state == TrialState.PRUNED and fresh.params == {"lr": 0.02}
    assert fresh.distributions == DIST
    assert fresh.user_attrs == {RAY_TRIAL_ATTR: "a", RETRY_ATTR: failed}


def test_a_trial_no_ray_trial_continues_fails(study):
    lost, unnamed = asked(study, "gone"), asked(study, None)
    reconcile(study, [], ["macro_f1"])
    assert states(study) == {lost: "FAIL", unnamed: "FAIL"}
    assert study.trials[lost].user_attrs[LOST_ATTR]


def test_a_verdict_already_told_stands_and_a_running_twin_fails(study):
    first = asked(study, "a")
    study.tell(first, 0.9)
    twin = asked(study, "a")
    done = reconcile(study, [row("a", value=0.7)], ["macro_f1"])
    assert study.trials[first].values == [0.9]
    assert states(study) == {first: "COMPLETE", twin: "FAIL"} and done.told == {twin: "FAIL"}


def test_an_errored_trial_fails_and_an_unfinished_one_keeps_running(study):
    errored, running = asked(study, "e"), asked(study, "r")
    reconcile(study, [row("e", status="ERROR"), row("r", status="RUNNING", final=False)], ["macro_f1"])
    assert states(study) == {errored: "FAIL", running: "RUNNING"}


def test_complete_without_a_finite_value_fails_as_optuna_would(study):
    n = asked(study, "a")
    reconcile(study, [row("a", value=float("nan"))], ["macro_f1"])
    assert study.trials[n].state == TrialState.FAIL


def test_agreement_is_idempotent(study):
    asked(study, "a")
    failed = asked(study, "b")
    study.tell(failed, state=TrialState.FAIL)
    rows = [row("a"), row("b", final=False, epoch=3)]
    assert reconcile(study, rows, ["macro_f1"])
    before = states(study)
    assert not reconcile(study, rows, ["macro_f1"])
    assert states(study) == before


def test_two_objectives_are_told_both_values(tmp_path):
    study = optuna.create_study(study_name="m", storage=f"sqlite:///{tmp_path / 'm.db'}",
                                directions=["maximize", "minimize"])
    n = asked(study, "a")
    last = {"epoch": 9, "macro_f1": 0.7, "loss": 0.3, "final": True}
    reconcile(study, [TrialResult("a", "TERMINATED", {}, [last])], ["macro_f1", "loss"])
    assert study.trials[n].values == [0.7, 0.3]


def test_a_trial_enqueued_by_a_killed_driver_is_dropped_before_a_fresh_one_is_asked(study):
    """A kill between ``enqueue_trial`` and ``ask`` leaves a WAITING trial; the fresh trial of a
    retried Ray trial must not take its parameters."""
    failed = asked(study, "a", lr=0.02)
    study.tell(failed, state=TrialState.FAIL)
    study.enqueue_trial({"lr": 0.05})  # the driver died here
    done = reconcile(study, [row("a", epoch=3, value=0.4, final=False)], ["macro_f1"])
    assert study.trials[done.added["a"]].params == {"lr": 0.02}
    stale = [t for t in study.trials if LOST_ATTR in t.user_attrs]
    assert len(stale) == 1 and stale[0].state == TrialState.FAIL and stale[0].number != failed
    assert not study.get_trials(states=(TrialState.WAITING,))


def test_a_ray_trial_without_any_optuna_trial_is_left_alone(study):
    """Its parameters were never Optuna's: nothing is invented for it."""
    done = reconcile(study, [row("a")], ["macro_f1"])
    assert not done and study.trials == []
