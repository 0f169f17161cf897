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

While a search runs, :class:`PruneCheckpoints` (a Tune callback) is the only thing that deletes
checkpoints (Ray keeps them all: ``CheckpointConfig(num_to_keep=None)``). Ray's own rotation
deletes a trial's older checkpoint as soon as a newer one is registered, while the experiment
snapshot on storage (what ``--resume`` reads) may still point to the older one: a driver killed
in that window came back with the trial in ERROR ("checkpoint ... does not exist"). Here a
checkpoint goes only once it is older than the one the *stored* snapshot points to, so a kill at
any moment leaves every checkpoint a resume needs. Which checkpoint a stored snapshot points to
is known without reading Tune's pickled checkpoint manager: Tune calls :meth:`PruneCheckpoints.get_state`
exactly when it writes a snapshot, so the callback records then, per trial, the trial's latest
checkpoint under the trial's ``last_result_time``; the stored snapshot's (plain JSON) value of
``last_result_time`` then names the record it holds.

Every ``interval`` seconds it also deletes the checkpoints of the trials that the stored snapshot
records as ended (``ended=True``), so that the disk does not grow with the number of trials: a
resume from that snapshot does not rerun them. It keeps the current top ``keep`` trials (complete
trials by the primary metric), and it leaves ended trials alone where a scheduler reads their
checkpoints (PBT may clone any trial in its upper quantile).
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

from search import compat
from search.prepare.objective import Objective
from search.select.results import TrialResult
from search.tune.settle import newest_state

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


def checkpoint_index(path: str) -> int:
    """Ray's running number of a ``checkpoint_NNNNNN`` folder (-1 for another name)."""
    tail = posixpath.basename(path.rstrip("/")).rpartition("_")[2]
    return int(tail) if tail.isdigit() else -1


def delete_folders(paths: Iterable[str], fs: pyarrow.fs.FileSystem) -> Pruned:
    folders = n_bytes = 0
    for path in paths:
        size = folder_bytes(path, fs)
        try:
            fs.delete_dir(path)
        except (OSError, pyarrow.ArrowException):
            continue  # gone already, or not ours to delete: the search's result does not depend on it
        folders += 1
        n_bytes += size
    return Pruned(folders, n_bytes)


def prune_checkpoints(rows: Iterable[TrialResult], keep: set[str], fs: pyarrow.fs.FileSystem | None) -> Pruned:
    """Delete the checkpoints of every trial of an ended search whose id is not in ``keep``, and
    of the kept ones all but the newest and the one the final state points to.

    ``rows`` are :func:`search.select.results.collect`'s (the checkpoint paths are on ``fs``, the
    search's storage filesystem; local when None). Returns what was deleted; nothing when a
    trial has not ended."""
    rows = list(rows)
    if any(r.status not in ENDED for r in rows):
        return Pruned(0, 0)
    fs = fs or pyarrow.fs.LocalFileSystem()
    doomed: list[str] = []
    for r in rows:
        if not r.checkpoint:
            continue
        folders = checkpoint_folders(posixpath.dirname(r.checkpoint.rstrip("/")), fs)
        if r.trial_id in keep:
            newest = max(folders, key=checkpoint_index, default=None)
            folders = [p for p in folders if p != newest and p.rstrip("/") != r.checkpoint.rstrip("/")]
        doomed += folders
    return delete_folders(doomed, fs)


@dataclass(frozen=True)
class StoredTrial:
    status: str
    last_result_time: float


def stored_trials(experiment_dir: str, fs: pyarrow.fs.FileSystem) -> dict[str, StoredTrial]:
    """trial id -> status and ``last_result_time`` in the newest ``experiment_state-*.json`` on
    storage (what a resume reads; only its plain JSON fields are read, nothing is unpickled)."""
    try:
        path = newest_state(fs, experiment_dir)
        if path is None:
            return {}
        with fs.open_input_stream(path) as f:
            state = json.loads(f.read())
    except (OSError, ValueError, pyarrow.ArrowException):
        return {}  # being written or unreadable: prune nothing this time
    out: dict[str, StoredTrial] = {}
    for entry in compat.state_trial_entries(state):
        try:
            trial, meta = compat.read_state_trial(entry)
            out[str(trial["trial_id"])] = StoredTrial(str(trial["status"]), float(meta.get("last_result_time", -math.inf)))
        except (KeyError, TypeError, ValueError, IndexError):
            continue
    return out


def latest_checkpoint(trial: Any) -> str | None:
    """The path of the checkpoint Tune would restore ``trial`` from (None before its first)."""
    return compat.latest_checkpoint_path(trial)


class PruneCheckpoints(Callback):
    """Delete, while the search runs, the checkpoints no resume can need (module docstring):
    those older than the checkpoint the stored snapshot points to, and, with ``ended``, those of
    ended trials outside the current top ``keep``. ``metric``/``mode``: the primary objective."""

    def __init__(self, metric: str, mode: str, keep: int, interval: float = 30.0, ended: bool = True) -> None:
        self.metric, self.mode, self.keep, self.interval, self.ended = metric, mode, max(1, keep), interval, ended
        self.pruned = Pruned(0, 0)
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._done: set[str] = set()
        self._last = 0.0
        self._trials: list = []
        # trial id -> {last_result_time at a snapshot: the checkpoint that snapshot points to}
        self._refs: dict[str, dict[float, str | None]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_done", "_last", "_trials", "_refs")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def _record(self) -> None:
        for t in self._trials:
            refs = self._refs.setdefault(str(t.trial_id), {})
            refs[float(t.run_metadata.last_result_time)] = latest_checkpoint(t)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if not self._trials:  # the first step: what a restored snapshot points to is what Tune restored
            self._trials = trials
            self._record()
        self._trials = trials

    def get_state(self) -> dict | None:
        """Called by Tune as it writes an experiment snapshot: remember what it points to. Returns
        None (nothing of this callback needs restoring)."""
        self._record()
        return None

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
                scored.append((Objective(self.metric, self.mode).key(v), str(t.trial_id)))
        return {tid for _, tid in sorted(scored, reverse=True)[: self.keep]}

    def prune(self, trials: list) -> None:
        if not trials:
            return
        storage = trials[0].storage
        fs = storage.storage_filesystem
        stored = stored_trials(storage.experiment_fs_path, fs)
        keep = self.top(trials) if self.ended else set()
        doomed: list[str] = []
        for t in trials:
            tid = str(t.trial_id)
            if tid in self._done or tid not in stored:
                continue  # pruned already, or unknown to the stored snapshot: a resume would sample it anew
            if self.ended and t.status in ENDED and stored[tid].status in ENDED and tid not in keep:
                doomed += checkpoint_folders(t.storage.trial_fs_path, fs)
                self._done.add(tid)
                continue
            refs = self._refs.get(tid, {})
            when = stored[tid].last_result_time
            if when not in refs:
                continue  # a snapshot this session did not see being written: keep everything
            for older in [k for k in refs if k < when]:
                del refs[older]
            ref = refs[when]
            if ref is None:
                continue
            doomed += [p for p in checkpoint_folders(t.storage.trial_fs_path, fs)
                       if checkpoint_index(p) < checkpoint_index(ref)]
        pruned = delete_folders(doomed, fs)
        self.pruned = Pruned(self.pruned.folders + pruned.folders, self.pruned.bytes + pruned.bytes)
