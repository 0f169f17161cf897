"""A search's trials as rows: the one reader of a finished (or running) search.

One row type, :class:`TrialResult`, comes from two sources:

- :func:`collect`: Ray Tune's experiment state (``ray.tune.ExperimentAnalysis``) at the end of
  ``python -m search.run``, so a resumed search lists every trial once, the ones finished before
  the interruption included; the driver writes these rows as ``results.csv``
  (:func:`search.select.results_csv.csv_text`).
- :func:`load_study`: the folder ``<storage>/<name>/`` the search left (Ray Tune's trial folders:
  ``params.json`` = the exact trial config, ``result.json`` = one JSON line per reported epoch,
  ``checkpoint_*/state.pt``; ``results.csv`` for the Ray status and error of every trial;
  ``confirmation.csv`` for the confirmation stage's order). Only these files are read, so a study
  can be inspected on any machine without Ray running (reports, compare, robustness, export,
  benchmarks).

One completeness rule (:attr:`TrialResult.complete`): the trial finished all its epochs (``final``
in its last result) and did not fail. Trials an early-stopping scheduler cut short are listed in
``results.csv`` but are not candidates: they never trained to the end, so their models are not the
ones the search selects. One value rule (:meth:`TrialResult.value`): a finite number in the last
result (a flag such as ``final`` is not a value). One ranking (:func:`ranked`): the complete trials
by the final value of the metric (mean over folds); a study whose confirmation stage ranked its
candidates on fresh folds puts those first, in the confirmed order (:meth:`StudyResults.ranked`).

The reference models' rows of ``results.csv`` (status ``REFERENCE``) and the reference and
incumbent rows of ``confirmation.csv`` are not trials: the reader skips them.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs

from search.prepare.errors import UsageError
from search.prepare.objective import Objective

SEARCH_FILE = "search.json"
"""The resolved options, saved in the search folder; ``--resume`` reads them back."""
RESULTS_CSV = "results.csv"
CONFIRMATION_CSV = "confirmation.csv"  # search.select.confirm's table
PARAMS_FILE = "params.json"
RESULT_FILE = "result.json"
REFERENCE = "REFERENCE"
"""The status of a reference model's row in ``results.csv``
(:func:`search.select.results_csv.csv_text`'s ``references``)."""
_FOLD_ACCURACY = re.compile(r"fold\d+_accuracy")


def fold_count(result: Iterable[str]) -> int:
    """How many folds a result (or a ``results.csv`` row) has per-fold figures for (its ``fold<k>_accuracy`` keys)."""
    return sum(1 for key in result if _FOLD_ACCURACY.fullmatch(key))


# ----------------------------------------------------------------------------- the row
@dataclass(frozen=True)
class TrialResult:
    trial_id: str
    status: str
    """Ray's status (``TERMINATED``, ``ERROR``, ...); ``UNKNOWN`` when read from a folder without ``results.csv``."""
    config: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    """The results the trial reported, in order (one per reported epoch) when read from its folder;
    the last one alone when collected from Ray's experiment state."""
    folder: Path | None = None
    error: str = ""
    checkpoint: str | None = None
    """Path of the trial's latest checkpoint folder (on the search's filesystem), if it is kept."""

    @property
    def last(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}

    @property
    def complete(self) -> bool:
        """All epochs done: the last result carries ``final`` (and the per-fold metrics), and no error."""
        return bool(self.last.get("final")) and self.status != "ERROR"

    def value(self, metric: str) -> float | None:
        """The last result's ``metric`` if it is a finite number; None otherwise."""
        v = self.last.get(metric)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

    @property
    def epochs_done(self) -> int:
        return int(self.last.get("epoch", 0) or 0)

    @property
    def duration_s(self) -> float:
        return float(self.last.get("time_total_s", 0.0) or 0.0)

    @property
    def n_folds(self) -> int:
        return fold_count(self.last)

    def fold_values(self, metric: str) -> np.ndarray:
        """The final per-fold values of ``metric`` (fold 0, 1, ...); empty if the trial did not finish."""
        return np.array([float(self.last[f"fold{k}_{metric}"]) for k in range(self.n_folds)
                         if f"fold{k}_{metric}" in self.last], dtype=float)

    def curve(self, metric: str) -> dict[int, float]:
        """Epoch -> ``metric`` (validation, mean over folds) of every epoch (reported or in a ``curve``)."""
        out: dict[int, float] = {}
        for report in self.history:
            # the epochs a trial did not report on their own travel in the next report's ``curve``
            for r in [*(e for e in report.get("curve") or () if isinstance(e, dict)), report]:
                v = r.get(metric)
                if isinstance(v, (int, float)) and math.isfinite(v):
                    out[int(r.get("epoch", r.get("training_iteration", len(out) + 1)))] = float(v)
        return out


def ranked(rows: list[TrialResult], metric: str, mode: str) -> list[TrialResult]:
    """The complete trials with a value of ``metric``, best first."""
    scored = [r for r in rows if r.complete and r.value(metric) is not None]
    return sorted(scored, key=lambda r: Objective(metric, mode).key(r.value(metric)), reverse=True)


def pareto_front(rows: list[TrialResult], metrics: tuple[str, ...], modes: tuple[str, ...]) -> set[str]:
    """Trial ids of the complete trials no other complete trial dominates on all objectives."""
    sign = [Objective(metric, m).sign for metric, m in zip(metrics, modes)]
    pts = {r.trial_id: [s * r.value(m) for s, m in zip(sign, metrics)] for r in rows
           if r.complete and all(r.value(m) is not None for m in metrics)}

    def dominated(a: list[float]) -> bool:
        return any(all(x >= y for x, y in zip(b, a)) and any(x > y for x, y in zip(b, a)) for b in pts.values())

    return {tid for tid, p in pts.items() if not dominated(p)}


def error_reason(text: str) -> str:
    """The one-line reason of a trial error from Ray's error text (our ``TrialFailure`` line)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "TrialFailure:" in ln:
            return ln.split("TrialFailure:", 1)[1].strip()
    return lines[-1] if lines else ""


# ----------------------------------------------------------------------------- from Ray's experiment state
def collect(experiment_path: str, storage_filesystem: pyarrow.fs.FileSystem | None = None) -> list[TrialResult]:
    """Every trial of the Ray Tune experiment at ``experiment_path``, in creation order (the paper default first)."""
    from ray.tune import ExperimentAnalysis  # the driver's path only: reading a folder needs no Ray

    from search import compat

    analysis = ExperimentAnalysis(experiment_path, storage_filesystem=storage_filesystem)
    rows = []
    for t in analysis.trials:
        error = ""
        if t.status == "ERROR":
            err = t.get_error()
            error = error_reason(str(err)) if err is not None else "failed"
        rows.append(TrialResult(t.trial_id, t.status, dict(t.config), [dict(t.last_result or {})], error=error,
                                checkpoint=compat.latest_checkpoint_path(t)))
    order = {t.trial_id: _creation_index(t) for t in analysis.trials}
    return sorted(rows, key=lambda r: order[r.trial_id])


def _creation_index(trial: Any) -> int:
    """Tune tags a trial ``<n>_<params>`` with its creation counter n (1-based)."""
    head = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    return int(head) if head.isdigit() else 1 << 30


# ----------------------------------------------------------------------------- from the search's folder
@dataclass
class StudyResults:
    name: str
    folder: Path
    trials: list[TrialResult]

    # the driver's fixed keys are in every trial config (search.tune.orchestrate.fixed_keys)
    def common(self, key: str) -> Any:
        """A config key every trial shares (the driver's fixed keys); None if absent."""
        values = {json.dumps(t.config.get(key), sort_keys=True, default=str) for t in self.trials if key in t.config}
        if len(values) > 1:
            raise UsageError(f"study {self.name}: trials disagree on {key!r} ({', '.join(sorted(values))})")
        return next((t.config[key] for t in self.trials if key in t.config), None)

    @property
    def space(self) -> str | None:
        return self.common("space")

    @property
    def method(self) -> str | None:
        return self.common("method")

    @property
    def metric(self) -> str:
        m = self.common("metric")
        return m[0] if isinstance(m, list) else (m or "macro_f1")

    @property
    def mode(self) -> str:
        m = self.common("mode")
        return m[0] if isinstance(m, list) else (m or "max")

    @property
    def data(self) -> str | None:
        return self.common("data")

    @property
    def seed(self) -> int | None:
        return self.common("seed")

    @property
    def folds(self) -> int | None:
        return self.common("folds")

    @property
    def data_fingerprint(self) -> str | None:
        prints = {t.last["data_fingerprint"] for t in self.trials if t.last.get("data_fingerprint")}
        if len(prints) > 1:
            raise UsageError(f"study {self.name}: trials report different data fingerprints")
        return next(iter(prints), None)

    def finished(self) -> list[TrialResult]:
        return [t for t in self.trials if t.complete]

    def ranked(self, metric: str | None = None, mode: str | None = None) -> list[TrialResult]:
        """Finished trials, best first, by the final value of ``metric`` (default: the study's).
        Where the search's confirmation stage ranked trials on fresh folds (``confirmation.csv``,
        the study's own metric), those come first in its order: the champion is the confirmed best."""
        metric, mode = metric or self.metric, mode or self.mode
        by_search = ranked(self.trials, metric, mode)
        confirmed = self.confirmed_order() if metric == self.metric else []
        first = [t for tid in confirmed for t in by_search if t.trial_id == tid]
        return first + [t for t in by_search if t not in first]

    def confirmed_order(self) -> list[str]:
        """Trial ids of the model candidates of ``confirmation.csv``, best confirmed first (the
        reference models, the registered champion and failed candidates left out)."""
        path = self.folder / CONFIRMATION_CSV
        if not path.is_file():
            return []
        with path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("kind") == "model" and not r.get("error")]
        ids = {t.trial_id for t in self.trials}
        return list(dict.fromkeys(r.get("trial_id") or r["candidate"] for r in rows
                                  if (r.get("trial_id") or r["candidate"]) in ids))

    def best(self, metric: str | None = None, mode: str | None = None) -> TrialResult:
        ranked = self.ranked(metric, mode)
        if not ranked:
            raise UsageError(f"study {self.name}: no trial finished all its epochs with a value of "
                             f"{metric or self.metric!r} (folder {self.folder})")
        return ranked[0]

    def trial(self, trial_id: str) -> TrialResult:
        for t in self.trials:
            if t.trial_id == trial_id:
                return t
        raise UsageError(f"study {self.name}: no trial {trial_id!r}")


def study_folder(name: str, storage: str | Path) -> Path:
    folder = Path(storage).expanduser() / name
    if not folder.is_dir():
        raise UsageError(f"--name {name}: no study folder {folder} (see --storage)")
    return folder


def load_study(name: str, storage: str | Path) -> StudyResults:
    """Read ``<storage>/<name>``; a one-line :class:`UsageError` if it is not a study folder."""
    folder = study_folder(name, storage)
    rows = trial_rows(folder / RESULTS_CSV)
    trials: dict[str, TrialResult] = {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and (p / PARAMS_FILE).is_file()):
        config = json.loads((d / PARAMS_FILE).read_text())
        history = _read_json_lines(d / RESULT_FILE)
        trial_id = str(history[0]["trial_id"]) if history and "trial_id" in history[0] else _trial_id_from_dir(d.name)
        row = rows.get(trial_id, {})
        trials[trial_id] = TrialResult(trial_id, row.get("status", "UNKNOWN") or "UNKNOWN", config, history, d,
                                       row.get("error", "") or "", _latest_checkpoint(d))
    for trial_id, row in rows.items():  # a trial that failed before Ray made its folder
        if trial_id not in trials:
            trials[trial_id] = TrialResult(trial_id, row.get("status", "UNKNOWN"), _config_from_row(row), [], None,
                                           row.get("error", "") or "")
    if not trials:
        raise UsageError(f"--name {name}: {folder} holds no trials ({RESULTS_CSV} nor Ray trial folders)")
    return StudyResults(name, folder, sorted(trials.values(), key=lambda t: t.trial_id))


def trial_rows(path: Path) -> dict[str, dict[str, str]]:
    """The trials' rows of a ``results.csv`` (the reference models' left out), by trial id, as text."""
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {row["trial_id"]: row for row in csv.DictReader(f) if row.get("trial_id") and row.get("status") != REFERENCE}


def _latest_checkpoint(folder: Path) -> str | None:
    """The trial's last checkpoint folder (``checkpoint_*`` with a ``state.pt``), if kept."""
    found = sorted(p for p in folder.glob("checkpoint_*") if (p / "state.pt").is_file())
    return str(found[-1]) if found else None


def _trial_id_from_dir(dirname: str) -> str:
    # Ray names trial folders <trainable>_<experiment>_<index>_<index>_<params>_<date>
    parts = dirname.split("_")
    for i in range(len(parts) - 1):
        if len(parts[i]) == 5 and parts[i + 1].isdigit() and len(parts[i + 1]) == 5:
            return f"{parts[i]}_{parts[i + 1]}"
    return dirname


def _read_json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a killed trial
                break
    return out


def _config_from_row(row: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k.startswith("config/") and v != "":  # "" = the key is not in this trial's config
            try:
                out[k[len("config/"):]] = json.loads(v)
            except (json.JSONDecodeError, TypeError):
                out[k[len("config/"):]] = v
    return out
