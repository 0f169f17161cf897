"""Named points at which the driver kills itself, for the kill-and-resume tests only.

``FUSETUNE_KILL_AT=<phase>`` in the driver's environment makes it SIGKILL itself (no clean-up, as
a crash or an OOM kill would) at that phase; nothing else reads the variable and, unset, every
point is a no-op. The phases, in the order a search meets them:

- ``startup``: the first trial has started and Tune's first experiment snapshot is on storage;
- ``result``: right after a trial's result was recorded (every result, final or not);
- ``trial_end``: right after a trial's final result was recorded (its ``result.json``
  line written, its MLflow record queued), before Tune has saved that the trial ended;
- ``after_stop``: at a trial's final result, once the scheduler has stopped another trial early
  (the trial that finishes may have started after Tune's last experiment snapshot);
- ``mid_search``: at the first step after a trial reported a checkpoint before its last epoch
  (Tune has registered it; the next experiment snapshot may not have been written);
- ``confirmation``: the confirmation stage has confirmed its candidates and the ensemble was selected
  (``ensemble.json`` written), before the ensemble's other members are confirmed;
- ``results``: the search has ended, before its results are written;
- ``refit``: the search has ended and its results are written, before the top-k are refitted;
- ``registration``: a model version was created, before its tags are set;
- ``reports``: the models are registered and promoted, before the reports are written.

``FUSETUNE_KILL_AT=<phase>#<n>`` kills at the ``n``-th time the driver reaches the phase (``result#7``:
at the seventh result; ``registration#2``: after the second version); ``<phase>`` alone is ``#1``;
``any#n`` at the ``n``-th phase reached, whichever it is.
The chaos test (``tests/test_chaos.py``) draws its kill instants this way.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from typing import Any

from ray.tune import Callback

KILL_ENV = "FUSETUNE_KILL_AT"
FAIL_ENV = "FUSETUNE_FAIL_AT"
"""``FUSETUNE_FAIL_AT=<phase>``: a full disk's ``OSError`` (ENOSPC) raised at the phase, where a test
cannot mount a small disk to fill."""
PHASES = ("startup", "result", "trial_end", "after_stop", "mid_search", "results", "confirmation", "refit",
          "registration", "reports")
TUNE_PHASES = ("startup", "result", "trial_end", "after_stop", "mid_search")
"""The phases met inside the Tune loop (:class:`KillAt`); the others are met by the stages after it."""

_reached: dict[str, int] = {}


def target() -> tuple[str, int] | None:
    """The phase and count ``FUSETUNE_KILL_AT`` names (``phase`` or ``phase#n``), None when unset."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return None
    phase, _, count = spec.partition("#")
    return phase, int(count) if count else 1


ANY = "any"
"""``FUSETUNE_KILL_AT=any#n``: the ``n``-th phase reached, whichever it is."""


def armed(phase: str) -> bool:
    """Whether ``FUSETUNE_KILL_AT`` names ``phase`` (at any count) or ``any``."""
    aim = target()
    return aim is not None and aim[0] in (phase, ANY)


def point(phase: str) -> None:
    """Kill this process now if ``FUSETUNE_KILL_AT`` names ``phase`` (or ``any``) and this is its
    ``n``-th time; raise a full disk's error if ``FUSETUNE_FAIL_AT`` names it."""
    if os.environ.get(FAIL_ENV) == phase:
        raise OSError(errno.ENOSPC, "No space left on device (FUSETUNE_FAIL_AT)", phase)
    if not armed(phase):
        return
    aim, count = target()
    _reached[aim] = _reached.get(aim, 0) + 1
    if _reached[aim] == count:
        os.kill(os.getpid(), signal.SIGKILL)


class KillAt(Callback):
    """The phases inside the Tune loop; listed after every other callback, so that what they do
    for the same event (the result files, the MLflow queue) is done when the driver dies."""

    def __init__(self) -> None:
        self.checkpointed = False
        self.stopped_early = False

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if not armed("startup"):
            return
        from search.tune.settle import newest_state

        storage = trial.storage
        deadline = time.monotonic() + 60
        # a snapshot to resume from: Tune writes the first at its first step and copies it to storage
        # on a thread of its own, which this wait does not hold up
        while newest_state(storage.storage_filesystem, storage.experiment_fs_path) is None \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        point("startup")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        point("result")
        if result.get("final"):
            point("trial_end")
            if self.stopped_early:
                point("after_stop")
        elif result.get("checkpoint_dir_name"):
            self.checkpointed = True  # Tune registers it in this same step

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if not (trial.last_result or {}).get("final"):
            self.stopped_early = True  # ended by the scheduler before its last epoch

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self.checkpointed:
            point("mid_search")


def callbacks() -> list[Callback]:
    """The kill callback when a Tune-loop phase is armed, else none."""
    return [KillAt()] if any(armed(p) for p in TUNE_PHASES) else []
