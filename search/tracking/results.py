"""Tune's trials as the tracking logs them: a result's metrics and epoch, a failure's reason, the summary.

What the callback (:mod:`search.tracking.callback`) puts in its records of a trial's results and end,
and the summary metrics of the search's parent run over all its trials.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from search.prepare.objective import Objective
from search.tracking.queue import one_line as _one_line

STEP_METRIC = "epoch"               # logged with every result; the resume guard reads its history
CURVE_KEY = "curve"
"""A result's list of the epochs the trial did not report on their own (``trainables.trainable``);
each is logged with its own step, in the same batch as the result."""

RESULT_TAG_KEYS = ("data_fingerprint", "code_version")
"""Metadata the trainable puts in every result; logged once per child run as tags."""

RAY_BOOKKEEPING = frozenset({
    "done", "training_iteration", "timesteps_total", "episodes_total", "timestamp", "time_this_iter_s",
    "time_since_restore", "timesteps_since_restore", "iterations_since_restore", "pid", "hostname",
    "node_ip", "date", "trial_id", "experiment_id", "experiment_tag", "should_checkpoint",
    "checkpoint_dir_name", "config", "warmup_time",
})
"""Keys Ray Tune adds to every result; ``time_total_s`` is kept (the trial's wall time so far)."""


def result_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of a Tune result worth tracking (nested dicts flattened with ``/``)."""
    out: dict[str, float] = {}

    def walk(prefix: str, d: Mapping[str, Any]) -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            if not prefix and k in RAY_BOOKKEEPING:
                continue
            if isinstance(v, Mapping):
                walk(f"{key}/", v)
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                out[key] = float(v)

    walk("", result)
    return out


def result_step(result: Mapping[str, Any]) -> int:
    """The epoch of a result (the trainable's ``epoch``, else Tune's ``training_iteration``)."""
    return int(result.get("epoch", result.get("training_iteration", 0)))


def trial_error_reason(trial: Any) -> str:
    """One line saying why a trial failed: the original exception (not Ray's wrapper and traceback)."""
    err: BaseException | None = None
    with contextlib.suppress(Exception):
        err = trial.get_pickled_error()
    if err is not None:
        cause = getattr(err, "cause", None) or err
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        return _one_line(f"{type(cause).__name__}: {first}" if first else type(cause).__name__, 1000)
    text = ""
    with contextlib.suppress(Exception):
        text = Path(trial.error_file).read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):  # the last "SomeError: message" line of the traceback
        head, sep, message = ln.partition(":")
        name = head.rsplit(".", 1)[-1]  # "trainables.trainable.TrialFailure" -> "TrialFailure"
        if sep and name and name[0].isupper() and head.replace(".", "").replace("_", "").isalnum():
            return _one_line(f"{name}:{message}", 1000)
    return _one_line(lines[-1], 1000) if lines else "unknown error"


def summary_metrics(trials: list, metrics: tuple[str, ...]) -> dict[str, float]:
    """The parent run's summary of Tune's trials: counts by outcome and, for each of ``metrics``
    (and the objectives the trials carry), its best final value (in the metric's own direction)
    among the trials that finished all their epochs."""
    from search.prepare.config import natural_mode

    completed = [t.last_result for t in trials if getattr(t, "status", "") == "TERMINATED"
                 and (getattr(t, "last_result", None) or {}).get("final")]
    out = {"trials_completed": float(len(completed)),
           "trials_pruned": float(sum(getattr(t, "status", "") == "TERMINATED" for t in trials) - len(completed)),
           "trials_failed": float(sum(getattr(t, "status", "") == "ERROR" for t in trials))}
    for m in metrics:
        values = [float(r[m]) for r in completed if isinstance(r.get(m), (int, float)) and math.isfinite(r[m])]
        if values:
            out[f"best_{m}"] = Objective(m, natural_mode(m)).best(values)
    return out
