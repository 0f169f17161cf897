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
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow.fs

from search.results import TrialRow

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


def prune_checkpoints(rows: Iterable[TrialRow], keep: set[str], fs: pyarrow.fs.FileSystem | None) -> Pruned:
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
