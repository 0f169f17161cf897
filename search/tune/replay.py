"""Schedulers that remember a resumed search's past: the same decisions as the uninterrupted run.

Ray Tune's experiment snapshot keeps the trials and the searcher's state but not the scheduler's:
a resumed search starts ASHA with empty rungs and the median rule with no history, so a trial that
the uninterrupted search would have stopped at its next rung runs all its epochs (and the searcher
then samples from other results). :class:`RememberingASHA` and :class:`RememberingMedian` rebuild
that state from what is on storage: when Tune adds a restored trial (``on_trial_add``), its reported
results (the ``result.json`` lines in its trial folder, plain JSON) are replayed into the scheduler
as records, without decisions:

- a finished trial: every result it reported (and the final one :mod:`search.tune.settle` recorded);
- an unfinished trial: the results up to the checkpoint it resumes from; those after it are
  reported again by the resumed trial and decided live, as they were the first time.

ASHA records a trial's value at the first result at or past each rung (``on_trial_result``; the
returned decision is ignored: the trial is not running); the median rule keeps every result of a
trial (``on_trial_complete`` appends one without deciding). A new trial has no folder yet, so
nothing is replayed for it. HyperBand (brackets of paused trials) and PBT (a population that
exploits at its own intervals) keep Ray's behaviour: their resumed course may differ.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule

from search import compat
from search.tune.settle import final_result

RESULT_FILE = "result.json"


def history(trial: Any, time_attr: str) -> list[dict[str, Any]]:
    """The results ``trial`` reported before this driver restored it, in order, as a resumed trial
    stands: all of a finished trial's, an unfinished trial's up to the result of its restore
    checkpoint (none before its first). Empty for a new trial (no result yet, no folder yet)."""
    try:
        folder = trial.path
    except RuntimeError:  # a new trial: Tune names its folder when it starts
        return []
    fs = trial.storage.storage_filesystem
    try:
        with fs.open_input_stream(posixpath.join(folder, RESULT_FILE)) as f:
            lines = f.read().decode(errors="replace").splitlines()
    except (OSError, ValueError):
        return []
    results = []
    for line in lines:
        try:
            result = json.loads(line)
        except ValueError:  # a line cut by a kill
            continue
        if isinstance(result, dict) and isinstance(result.get(time_attr), (int, float)):
            results.append(result)
    if trial.status == "TERMINATED":
        last = final_result(fs, folder) or trial.run_metadata.last_result or {}
        if isinstance(last.get(time_attr), (int, float)) and (not results or last[time_attr] > results[-1][time_attr]):
            results.append(last)
        return results
    point = compat.restore_point(trial)
    if point is None or not isinstance(point.get(time_attr), (int, float)):
        return []
    return [r for r in results if r[time_attr] <= point[time_attr]]


class Remembering:
    """Replays a restored trial's :func:`history` into the scheduler when Tune adds it."""

    _time_attr: str

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, trial)
        for result in history(trial, self._time_attr):
            self.record(tune_controller, trial, result)

    def record(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        raise NotImplementedError


class RememberingASHA(Remembering, ASHAScheduler):
    """Ray's ASHA whose rungs hold the restored trials' values (the decision of a replayed result
    is ignored)."""

    def record(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        ASHAScheduler.on_trial_result(self, tune_controller, trial, result)


class RememberingMedian(Remembering, MedianStoppingRule):
    """Ray's median stopping rule whose running means include the restored trials' results."""

    def record(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        MedianStoppingRule.on_trial_complete(self, tune_controller, trial, result)
