"""A finished (or running) search read back from its results folder, for reports, comparison,
robustness and export.

A study is the folder ``<storage>/<name>/`` that ``python -m search.run`` leaves: Ray Tune's trial
folders (``params.json`` = the exact trial config, ``result.json`` = one JSON line per reported
epoch, ``checkpoint_*/state.pt``) and ``results.csv`` (one row per trial, with its Ray status).
Only these files are read, so a study can be inspected on any machine without Ray running.

The best trial (:meth:`StudyResults.best`) is the one with the best *final* value of the metric
(mean over folds) among the trials that finished all their epochs (``final: True``); trials an
early-stopping scheduler cut short never reported per-fold metrics and are not candidates.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from search.config import SearchConfig as _SearchConfig
from search.errors import UsageError

RESULTS_CSV = "results.csv"
CONFIRMATION_CSV = "confirmation.csv"  # search.confirm's table
_FOLD_KEY = re.compile(r"fold\d+_accuracy")
PARAMS_FILE = "params.json"
RESULT_FILE = "result.json"


@dataclass(frozen=True)
class TrialResult:
    trial_id: str
    status: str
    """Ray's status from ``results.csv`` (``TERMINATED``, ``ERROR``, ...); ``UNKNOWN`` without it."""
    config: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    """Every result the trial reported, in order (one per epoch)."""
    folder: Path | None = None
    error: str = ""

    @property
    def last(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}

    @property
    def complete(self) -> bool:
        """All epochs done: the last result carries ``final`` and the per-fold metrics."""
        return bool(self.last.get("final")) and self.status not in ("ERROR",)

    def value(self, metric: str) -> float | None:
        v = self.last.get(metric)
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None

    @property
    def n_folds(self) -> int:
        return sum(1 for k in self.last if _FOLD_KEY.fullmatch(k))

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

    def checkpoint(self) -> Path | None:
        """The folder of the trial's last checkpoint (``checkpoint_*`` with a ``state.pt``), if kept."""
        if self.folder is None:
            return None
        found = sorted(p for p in self.folder.glob("checkpoint_*") if (p / "state.pt").is_file())
        return found[-1] if found else None


@dataclass
class StudyResults:
    name: str
    folder: Path
    trials: list[TrialResult]

    # the driver's fixed keys are in every trial config (notes/SEARCH_INTERFACE)
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
        scored = [t for t in self.finished() if t.value(metric) is not None]
        by_search = sorted(scored, key=lambda t: t.value(metric), reverse=(mode == "max"))
        confirmed = self.confirmed_order() if metric == self.metric else []
        first = [t for tid in confirmed for t in by_search if t.trial_id == tid]
        return first + [t for t in by_search if t not in first]

    def confirmed_order(self) -> list[str]:
        """Trial ids of the model candidates of ``confirmation.csv``, best confirmed first."""
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
    rows = _read_results_csv(folder / RESULTS_CSV)
    trials: dict[str, TrialResult] = {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and (p / PARAMS_FILE).is_file()):
        config = json.loads((d / PARAMS_FILE).read_text())
        history = _read_json_lines(d / RESULT_FILE)
        trial_id = str(history[0]["trial_id"]) if history and "trial_id" in history[0] else _trial_id_from_dir(d.name)
        row = rows.get(trial_id, {})
        trials[trial_id] = TrialResult(trial_id, row.get("status", "UNKNOWN") or "UNKNOWN", config, history, d,
                                       row.get("error", "") or "")
    for trial_id, row in rows.items():  # a trial that failed before Ray made its folder
        if trial_id not in trials and row.get("status") != "REFERENCE":  # reference models are not trials
            trials[trial_id] = TrialResult(trial_id, row.get("status", "UNKNOWN"), _config_from_row(row), [], None,
                                           row.get("error", "") or "")
    if not trials:
        raise UsageError(f"--name {name}: {folder} holds no trials ({RESULTS_CSV} nor Ray trial folders)")
    return StudyResults(name, folder, sorted(trials.values(), key=lambda t: t.trial_id))


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


def _read_results_csv(path: Path) -> dict[str, dict[str, str]]:
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {row["trial_id"]: row for row in csv.DictReader(f) if row.get("trial_id")}


def _config_from_row(row: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k.startswith("config/") and v != "":  # "" = the key is not in this trial's config
            try:
                out[k[len("config/"):]] = json.loads(v)
            except (json.JSONDecodeError, TypeError):
                out[k[len("config/"):]] = v
    return out


# ----------------------------------------------------------------------------- shared by the CLIs
DEFAULT_STORAGE: str = _SearchConfig.storage
"""``--storage`` default of the study commands: the search driver's (``python -m search.run``)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit with code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_storage_option(parser: argparse.ArgumentParser, default: str | None = DEFAULT_STORAGE) -> None:
    parser.add_argument("--storage", default=default, metavar="DIR",
                        help=f"results folder of the searches (default: {DEFAULT_STORAGE})")
