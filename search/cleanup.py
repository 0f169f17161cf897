"""Disk that does not grow with the search: drop the checkpoints a finished search no longer needs.

A checkpoint holds every fold's model and optimizer state (OmniFuse, 5 folds: megabytes to
hundreds of megabytes); Ray keeps the latest of every trial (``CheckpointConfig(num_to_keep=1)``),
so a many-trial search would keep one per trial for ever. Once a search has *ended* (every trial
TERMINATED or ERROR, and Tune's experiment state saved with them so), no checkpoint is needed by
``--resume`` any more: a resumed finished search reruns no trial (finished and failed trials stay
as they are). What still reads a checkpoint is ``search.export`` (a model card's fold evidence, of
the top trials; it retrains from the config when the checkpoint is gone) and PBT/HyperBand, which
only act while the search runs. So :func:`prune_checkpoints` deletes the checkpoint folders of
every trial but the ``keep`` ones. ``results.csv``, every trial's ``result.json`` (its reports and
curves), its ``params.json`` and the MLflow records are untouched.

An interrupted search (some trial neither TERMINATED nor ERROR) is never pruned: its unfinished
trials resume from their checkpoints.

While a search runs, :class:`PruneCheckpoints` (a Tune callback) does the same every
``interval`` seconds for the trials that Tune's experiment state *on storage* already records as
ended, so that the disk does not grow with the number of trials: a kill at any moment leaves a
state in which every trial whose checkpoint is gone is finished (or failed) and is not rerun by
``--resume``. It keeps the current top ``keep`` trials (complete trials by the primary metric),
and it is off where a scheduler reads ended trials' checkpoints (PBT may clone any trial in its
upper quantile).
"""

from __future__ import annotations

import json
import math
import posixpath
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow.fs
from ray.tune import Callback

from search.results import TrialResult

ENDED = frozenset({"TERMINATED", "ERROR"})


@dataclass(frozen=True)
class Pruned:
    folders: int        # checkpoint folders deleted
    bytes: int          # their size


def checkpoint_folders(trial_dir: str, fs: pyarrow.fs.FileSystem) -> list[str]:
    """The ``checkpoint_*`` folders in a trial's folder (Ray's naming)."""
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(trial_dir, allow_not_found=True))
    except (OSError, pyarrow.ArrowException):
        return []
    return sorted(i.path for i in infos if i.type == pyarrow.fs.FileType.Directory
                  and posixpath.basename(i.path).startswith("checkpoint_"))


def folder_bytes(path: str, fs: pyarrow.fs.FileSystem) -> int:
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True, allow_not_found=True))
    return sum(int(i.size or 0) for i in infos if i.type == pyarrow.fs.FileType.File)


def prune_checkpoints(rows: Iterable[TrialResult], keep: set[str], fs: pyarrow.fs.FileSystem | None) -> Pruned:
    """Delete the checkpoints of every trial of an ended search whose id is not in ``keep``.

    ``rows`` are :func:`search.results.collect`'s (the checkpoint paths are on ``fs``, the
    search's storage filesystem; local when None). Returns what was deleted; nothing when a
    trial has not ended."""
    rows = list(rows)
    if any(r.status not in ENDED for r in rows):
        return Pruned(0, 0)
    fs = fs or pyarrow.fs.LocalFileSystem()
    folders = n_bytes = 0
    for r in rows:
        if r.trial_id in keep or not r.checkpoint:
            continue
        for path in checkpoint_folders(posixpath.dirname(r.checkpoint.rstrip("/")), fs):
            size = folder_bytes(path, fs)
            try:
                fs.delete_dir(path)
            except (OSError, pyarrow.ArrowException):
                continue  # gone already, or not ours to delete: the search's result does not depend on it
            folders += 1
            n_bytes += size
    return Pruned(folders, n_bytes)


def stored_statuses(experiment_dir: str, fs: pyarrow.fs.FileSystem) -> dict[str, str]:
    """trial id -> status in the newest ``experiment_state-*.json`` on storage (what a resume reads)."""
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(experiment_dir, allow_not_found=True))
        states = sorted(i.path for i in infos if posixpath.basename(i.path).startswith("experiment_state-")
                        and i.path.endswith(".json"))
        if not states:
            return {}
        with fs.open_input_stream(states[-1]) as f:
            state = json.loads(f.read())
    except (OSError, ValueError, pyarrow.ArrowException):
        return {}  # being written or unreadable: prune nothing this time
    out: dict[str, str] = {}
    for entry in state.get("trial_data", []):
        try:
            trial = json.loads(entry[0] if isinstance(entry, list) else entry)
            out[str(trial["trial_id"])] = str(trial["status"])
        except (KeyError, TypeError, ValueError, IndexError):
            continue
    return out


class PruneCheckpoints(Callback):
    """Delete, while the search runs, the checkpoints of ended trials outside the current top
    ``keep`` (module docstring). ``metric``/``mode``: the primary objective."""

    def __init__(self, metric: str, mode: str, keep: int, interval: float = 30.0) -> None:
        self.metric, self.mode, self.keep, self.interval = metric, mode, max(1, keep), interval
        self.pruned = Pruned(0, 0)
        self._done: set[str] = set()
        self._last = 0.0

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_done", "_last")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._done, self._last = set(), 0.0

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if time.monotonic() - self._last >= self.interval:
            self._last = time.monotonic()
            self.prune(trials)

    def top(self, trials: list) -> set[str]:
        scored = []
        for t in trials:
            last = t.last_result or {}
            v = last.get(self.metric)
            if last.get("final") and isinstance(v, (int, float)) and math.isfinite(v) and t.status != "ERROR":
                scored.append((v if self.mode == "max" else -v, str(t.trial_id)))
        return {tid for _, tid in sorted(scored, reverse=True)[: self.keep]}

    def prune(self, trials: list) -> None:
        candidates = [t for t in trials if str(t.trial_id) not in self._done and t.status in ENDED]
        if not candidates:
            return
        storage = candidates[0].storage
        fs = storage.storage_filesystem
        stored = stored_statuses(storage.experiment_fs_path, fs)
        keep = self.top(trials)
        folders = n_bytes = 0
        for t in candidates:
            tid = str(t.trial_id)
            if tid in keep or stored.get(tid) not in ENDED:
                continue  # a top trial, or one a resume from the stored state would still run
            for path in checkpoint_folders(t.storage.trial_fs_path, fs):
                size = folder_bytes(path, fs)
                try:
                    fs.delete_dir(path)
                except (OSError, pyarrow.ArrowException):
                    continue
                folders += 1
                n_bytes += size
            self._done.add(tid)
        self.pruned = Pruned(self.pruned.folders + folders, self.pruned.bytes + n_bytes)
