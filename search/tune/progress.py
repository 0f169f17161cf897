"""Progress of a running search on one line: trials done/running/failed, best so far, elapsed, ETA.

:class:`ProgressLine` is a Ray Tune callback (it works whatever Ray's own output mode is; the
driver silences Ray's tables with ``verbose=0``). It prints when a trial ends and otherwise every
``interval`` seconds. The time left is estimated from the epoch budget: elapsed time per epoch
trained so far times the epochs still allowed (``num_samples * epochs`` minus the epochs trained
and minus those that early stopping gave back), so it tightens as trials end.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

from ray.tune import Callback

from search.prepare.objective import Objective


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


def failure_reason(trial: Any) -> str:
    """The one-line reason of a failed trial (Ray keeps the whole traceback in its error file)."""
    from search.select.results import error_reason

    def local() -> str:
        with open(trial.error_file) as f:
            return f.read()

    for read in (local, lambda: str(trial.get_error())):
        try:
            text = read()
        except (OSError, TypeError, ValueError):  # not written or not synced yet
            continue
        if text and text != "None":
            return error_reason(text)
    return "see the trial's error.txt"


class ProgressLine(Callback):
    def __init__(self, *, total: int, epochs: int, metric: str, mode: str, interval: float = 30.0,
                 stream: TextIO | None = None, shown: bool = True) -> None:
        self.total = total
        self.epochs = epochs
        self.metric = metric
        self.mode = mode
        self.interval = interval
        self.stream = stream
        self.shown = shown  # False: keeps the best so far, prints nothing (run_search without out=)
        self._start = time.monotonic()
        self._last_print = 0.0
        self._best: tuple[float, str, Any, float | None] | None = None  # value, trial id, epoch, std

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "stream"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_best", None)  # state saved before the best-so-far was kept
        self.__dict__.setdefault("shown", True)
        self.stream = None

    def setup(self, **info: Any) -> None:
        self._start = time.monotonic()
        self._last_print = self._start

    # ------------------------------------------------------------------ hooks
    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self._last_print >= self.interval:
            self.emit(trials)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._offer(trial.trial_id, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.emit(trials, ended={trial.trial_id: "TERMINATED"})

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.shown:
            print(f"trial {trial.trial_id} failed: {failure_reason(trial)}", file=self.stream or sys.stdout, flush=True)
        self.emit(trials, ended={trial.trial_id: "ERROR"})

    # ------------------------------------------------------------------ the line
    def emit(self, trials: list, ended: dict[str, str] | None = None) -> None:
        """``ended``: trials Tune reports as ended before it updates their status."""
        self._last_print = time.monotonic()
        if self.shown:
            print(self.line(trials, self._last_print - self._start, ended), file=self.stream or sys.stdout, flush=True)

    def line(self, trials: list, elapsed: float, ended: dict[str, str] | None = None) -> str:
        status = [(ended or {}).get(t.trial_id, t.status) for t in trials]
        done = status.count("TERMINATED")
        failed = status.count("ERROR")
        running = status.count("RUNNING")
        parts = [f"[{format_duration(elapsed)}] trials {done + failed}/{self.total} done",
                 f"{running} running", f"{failed} failed"]
        best = self.best(trials)
        if best is not None:
            v, trial_id, epoch, std = best
            value = f"{v:.4f}" + (f" ± {std:.4f}" if isinstance(std, (int, float)) else "")
            parts.append(f"best so far {self.metric} {value} ({trial_id}, epoch {epoch})")
        eta = self.eta(trials, elapsed, status)
        parts.append(f"ETA {format_duration(eta)}" if eta is not None else "ETA -")
        return " | ".join(parts)

    def _offer(self, trial_id: str, result: dict | None) -> None:
        v = (result or {}).get(self.metric)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            return
        if self._best is None or Objective(self.metric, self.mode).better(v, self._best[0]):
            std = result.get(f"{self.metric}_std")
            self._best = (float(v), trial_id, result.get("epoch", "?"), std if isinstance(std, (int, float)) else None)

    def best(self, trials: list) -> tuple[float, str, Any, float | None] | None:
        """The best value any trial reported at any epoch so far (value, trial id, epoch, std):
        monotone, unlike the trials' latest results, which drop when a leader's next epoch is worse.
        It is a validation figure of the epoch named, not the trial's final one; the ranking after
        the search uses final values only (and the confirmation stage fresh folds)."""
        for t in trials:
            self._offer(t.trial_id, t.last_result)
        return self._best

    def eta(self, trials: list, elapsed: float, status: list[str]) -> float | None:
        trained = sum(_epochs(t) for t in trials)
        if trained == 0:
            return None
        ended = [t for t, s in zip(trials, status) if s in ("TERMINATED", "ERROR")]
        given_back = sum(self.epochs - _epochs(t) for t in ended)
        left = max(0, self.total * self.epochs - trained - given_back)
        return elapsed / trained * left


def _epochs(trial: Any) -> int:
    """Epochs a trial has trained (its ``epoch``: a trial does not report every epoch)."""
    last = trial.last_result or {}
    return int(last.get("epoch", last.get("training_iteration", 0)) or 0)
