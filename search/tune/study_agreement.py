"""The persistent Optuna study brought into agreement with Ray Tune's trials, once a search's
trials have ended (or stopped for a Ctrl-C) and again on every ``--resume``.

Tune's experiment state is the one source of truth for a trial's state; the study follows it.
While the driver lives, :class:`search.tune.optuna_storage.PersistentOptunaSearch` tells each Optuna
trial as Tune ends its Ray trial. A driver killed at the wrong instant leaves the two apart:
a trial whose final result was written just before the kill is finished for Tune (see
:mod:`search.tune.settle`) but its Optuna trial was never told; one that failed for lost
infrastructure and was retried may end with only its failed Optuna trial. :func:`reconcile`
closes those gaps through Optuna's public API only (``tell``, ``report``, ``enqueue_trial`` +
``ask``), never by writing the storage, and never changes a verdict Optuna was already told:

- a Ray trial Tune finished (``TERMINATED``) has exactly one Optuna trial that is not ``FAIL``:
  ``COMPLETE`` with its final values if it ran all its epochs, ``PRUNED`` if a scheduler stopped
  it. A ``RUNNING`` one is told so (its last reported values as intermediate values first); when
  there is none but a failed one, a fresh one with the failed one's parameters is asked and told
  (user attribute ``fusetune.retry_of``: the failed one's number);
- a Ray trial that errored has its ``RUNNING`` Optuna trial told ``FAIL``;
- an Optuna trial left ``RUNNING`` that no Ray trial of the search continues is told ``FAIL``, and
  so is one left ``WAITING`` (enqueued by a driver killed before it asked for it);
- a Ray trial still unfinished (a search stopped early) keeps its ``RUNNING`` trial.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.compat import storage_trial_id, trial_of
from search.prepare.config import SearchConfig
from search.select.results import TrialResult
from search.tune.optuna_storage import RAY_TRIAL_ATTR, RETRY_ATTR

logger = logging.getLogger("fusetune.optuna")

LOST_ATTR = "fusetune.lost"


@dataclass
class Agreement:
    """What :func:`reconcile` changed, by Optuna trial number."""

    told: dict[int, str] = field(default_factory=dict)
    """Trials that were RUNNING, with the state they were told."""
    added: dict[str, int] = field(default_factory=dict)
    """Ray trial id -> the number of the fresh Optuna trial that now records it."""

    def __bool__(self) -> bool:
        return bool(self.told or self.added)


def reconcile(study: optuna.Study, rows: Sequence[TrialResult], metrics: Sequence[str]) -> Agreement:
    """Bring ``study`` into agreement with the Ray trials ``rows`` (see the module docstring).

    ``metrics``: the search's objective, one value per study direction."""
    done = Agreement()
    _drop_waiting(study, done)
    trials = study.get_trials(deepcopy=False)
    by_ray: dict[str, list[FrozenTrial]] = {}
    for t in trials:
        by_ray.setdefault(str(t.user_attrs.get(RAY_TRIAL_ATTR, "")), []).append(t)
    ray_ids = {row.trial_id for row in rows}
    for t in trials:  # asked by a killed driver, or left behind by a retry: nobody reports into it
        if t.state == TrialState.RUNNING and str(t.user_attrs.get(RAY_TRIAL_ATTR, "")) not in ray_ids:
            trial_of(study, storage_trial_id(t)).set_user_attr(LOST_ATTR, "no Ray trial of the search continues it")
            _tell(study, t, TrialState.FAIL, None, done)
    for row in rows:
        own = by_ray.get(row.trial_id, [])
        running = [t for t in own if t.state == TrialState.RUNNING]
        if row.status == "ERROR":
            for t in running:
                _tell(study, t, TrialState.FAIL, None, done)
        elif row.status == "TERMINATED":
            _finish(study, row, own, metrics, done)
    return done


def _drop_waiting(study: optuna.Study, done: Agreement) -> None:
    """Trials enqueued by a driver killed before it asked for them: no Ray trial will run them, and
    the next ``ask`` would hand their parameters to another trial. Asked and told FAIL."""
    for _ in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        trial = study.ask()
        trial.set_user_attr(LOST_ATTR, "enqueued by a driver killed before it was asked for")
        study.tell(trial.number, state=TrialState.FAIL)
        done.told[trial.number] = TrialState.FAIL.name


def _finish(study: optuna.Study, row: TrialResult, own: list[FrozenTrial], metrics: Sequence[str],
            done: Agreement) -> None:
    """``row`` ended: one Optuna trial records it, COMPLETE or PRUNED as Tune says."""
    verdict = TrialState.COMPLETE if row.complete else TrialState.PRUNED
    values = [row.value(m) for m in metrics]
    if verdict == TrialState.COMPLETE and any(v is None for v in values):
        verdict = TrialState.FAIL  # what Optuna itself makes of a trial without a finite value
    told = [t for t in own if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    running = [t for t in own if t.state == TrialState.RUNNING]
    if told:  # a verdict was given: it stands; a RUNNING twin is a leftover of a retry
        for t in running:
            _tell(study, t, TrialState.FAIL, None, done)
        return
    if running:
        keep, *rest = sorted(running, key=lambda t: t.number, reverse=True)
        for t in rest:
            _tell(study, t, TrialState.FAIL, None, done)
    elif own:
        keep = _fresh(study, row, max(own, key=lambda t: t.number))
        done.added[row.trial_id] = keep.number
    else:  # every Ray trial is asked through the searcher first: its parameters are not Optuna's to rebuild
        logger.warning("Ray trial %s has no Optuna trial; the study does not record it", row.trial_id)
        return
    _report(study, keep, row, metrics)
    _tell(study, keep, verdict, values, done)


def _fresh(study: optuna.Study, row: TrialResult, failed: FrozenTrial) -> FrozenTrial:
    """A new Optuna trial with the parameters of ``row``'s failed Optuna trial."""
    study.enqueue_trial(failed.params, user_attrs={RAY_TRIAL_ATTR: row.trial_id, RETRY_ATTR: failed.number})
    trial = study.ask(fixed_distributions=failed.distributions)
    logger.info("Ray trial %s: recorded by a fresh Optuna trial %d (trial %d failed)", row.trial_id, trial.number,
                failed.number)
    return study.get_trials(deepcopy=False)[trial.number]


def _report(study: optuna.Study, trial: FrozenTrial, row: TrialResult, metrics: Sequence[str]) -> None:
    """The epochs of ``row``'s last result not yet reported, as intermediate values (one objective)."""
    if len(metrics) != 1:
        return
    live = trial_of(study, storage_trial_id(trial))
    for epoch, value in sorted(row.curve(metrics[0]).items()):
        if epoch not in trial.intermediate_values:
            live.report(value, epoch)


def _tell(study: optuna.Study, trial: FrozenTrial, state: TrialState, values: list[float | None] | None,
          done: Agreement) -> None:
    study.tell(trial.number, values=values if state == TrialState.COMPLETE else None, state=state)
    done.told[trial.number] = state.name


def agree_with_tune(cfg: SearchConfig, rows: Sequence[TrialResult]) -> Agreement:
    """:func:`reconcile` the search's persistent study, if it has one (none: an in-memory study,
    a population scheduler, or a study not created yet)."""
    from search.tune import schedulers
    from search.tune.optuna_storage import open_storage, storage_url

    url = storage_url(cfg) if schedulers.has_study(cfg) else None
    if url is None:
        return Agreement()
    try:
        study = optuna.load_study(study_name=cfg.name, storage=open_storage(url))
    except KeyError:  # not created yet
        return Agreement()
    done = reconcile(study, rows, cfg.metric)
    if done:
        logger.info("Optuna study %s agrees with Tune again: told %s, added %s", cfg.name, done.told, done.added)
    return done
