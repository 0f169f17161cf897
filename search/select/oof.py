"""Out-of-fold predictions: every full-budget trial's validation probabilities on the search's folds.

A trial that trains every epoch puts ``oof.npz`` (:func:`trainables.trainable.save_oof`: the
samples' positions in the training part, their fold, labels and class probabilities) into its last
checkpoint. :class:`KeepOutOfFold` copies it, the moment Tune hands that checkpoint over, to
``<search>/oof/<trial id>.npz``, so it outlives checkpoint pruning; the references' predictions on
the same folds (from the confirmation stage) are written beside it as ``reference-<name>.npz``.
Paths are relative to the search folder, so a copied or moved folder keeps them, and a resumed
search finds them where it left them. Only numpy arrays are stored and they are read with
``allow_pickle=False``: nothing in this folder is ever unpickled.

Ensemble selection (:mod:`search.select.ensemble`) reads them through :func:`read`.
"""

from __future__ import annotations

import io
import posixpath
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.fs
from ray.tune import Callback

from search.trust.files import write_atomically
from trainables.trainable import OOF_FILE

FOLDER = "oof"
REFERENCE_PREFIX = "reference-"


@dataclass(frozen=True)
class OutOfFold:
    """One candidate's validation predictions on the search's folds."""

    index: np.ndarray    # [n] positions in the training part
    fold: np.ndarray     # [n] the search fold each sample was validated in
    labels: np.ndarray   # [n]
    probs: np.ndarray    # [n, C]

    def arrays(self) -> dict[str, np.ndarray]:
        return {"index": self.index, "fold": self.fold, "labels": self.labels, "probs": self.probs}

    @classmethod
    def from_arrays(cls, arrays: Any, where: str) -> OutOfFold:
        try:
            index, fold = np.asarray(arrays["index"], np.int64), np.asarray(arrays["fold"], np.int64)
            labels, probs = np.asarray(arrays["labels"], np.int64), np.asarray(arrays["probs"], np.float64)
        except (KeyError, ValueError, TypeError):
            raise ValueError(f"{where}: not an out-of-fold file (expected arrays index, fold, labels, probs)") from None
        n = len(index)
        if probs.ndim != 2 or len(probs) != n or len(fold) != n or len(labels) != n:
            raise ValueError(f"{where}: arrays of different lengths ({n} samples, probs {probs.shape})")
        return cls(index, fold, labels, probs)

    @classmethod
    def from_folds(cls, splits: list[tuple[np.ndarray, np.ndarray]], labels: np.ndarray,
                   fold_probs: list[np.ndarray]) -> OutOfFold:
        """From per-split validation probabilities (a reference scored on the search's folds)."""
        index = np.concatenate([va for _, va in splits]).astype(np.int64)
        fold = np.concatenate([np.full(len(va), k, np.int64) for k, (_, va) in enumerate(splits)])
        return cls(index, fold, np.asarray(labels)[index].astype(np.int64), np.concatenate(fold_probs).astype(np.float64))


def _filesystem(experiment_path: str, fs: pyarrow.fs.FileSystem | None) -> tuple[pyarrow.fs.FileSystem, str]:
    if fs is not None:
        return fs, experiment_path
    if "://" in experiment_path:
        return pyarrow.fs.FileSystem.from_uri(experiment_path)
    return pyarrow.fs.LocalFileSystem(), experiment_path


def path(experiment_path: str, name: str) -> str:
    """``<search>/oof/<name>.npz`` (``name``: a trial id or ``reference-<reference>``)."""
    return posixpath.join(experiment_path, FOLDER, f"{name}.npz")


def reference_name(reference: str) -> str:
    return f"{REFERENCE_PREFIX}{reference}"


def write(experiment_path: str, name: str, oof: OutOfFold | dict[str, np.ndarray],
          fs: pyarrow.fs.FileSystem | None = None) -> str:
    """Store ``oof`` under the search folder (written whole under a temporary name, then renamed)."""
    fs, root = _filesystem(experiment_path, fs)
    target = path(root, name)
    fs.create_dir(posixpath.dirname(target), recursive=True)
    buf = io.BytesIO()
    np.savez(buf, **(oof.arrays() if isinstance(oof, OutOfFold) else oof))
    return write_atomically(fs, target, buf.getvalue())


def _load(fs: pyarrow.fs.FileSystem, file: str) -> OutOfFold | None:
    try:
        with fs.open_input_stream(file) as f:
            raw = f.read()
    except (OSError, pyarrow.ArrowException):
        return None
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as arrays:
            return OutOfFold.from_arrays(arrays, file)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{file}: unreadable out-of-fold file ({exc})") from None


def read(experiment_path: str, name: str, fs: pyarrow.fs.FileSystem | None = None) -> OutOfFold | None:
    """The stored out-of-fold predictions ``name``; None when there are none. A file that exists but
    is not a numpy archive of the expected arrays is a :class:`ValueError` naming it."""
    fs, root = _filesystem(experiment_path, fs)
    return _load(fs, path(root, name))


def from_checkpoint(checkpoint_path: str, fs: pyarrow.fs.FileSystem | None = None,
                    name: str = OOF_FILE) -> OutOfFold | None:
    """The ``oof.npz`` (or the file ``name``) a trial put into its last checkpoint, if it is there."""
    fs, root = _filesystem(checkpoint_path, fs)
    return _load(fs, posixpath.join(root, name))


def recover(experiment_path: str, rows: list[Any], fs: pyarrow.fs.FileSystem | None = None) -> int:
    """Copy the checkpoint's ``oof.npz`` of every complete trial in ``rows`` that has none stored yet
    (a driver killed between the checkpoint and :class:`KeepOutOfFold`); returns how many."""
    copied = 0
    for r in rows:
        if not r.complete or r.checkpoint is None or read(experiment_path, r.trial_id, fs) is not None:
            continue
        found = from_checkpoint(r.checkpoint, fs)
        if found is not None:
            write(experiment_path, r.trial_id, found, fs)
            copied += 1
    return copied


class KeepOutOfFold(Callback):
    """Copy a trial's ``oof.npz`` from the checkpoint Tune just received to ``<search>/oof/``."""

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        fs, folder = checkpoint.filesystem, checkpoint.path
        found = _load(fs, posixpath.join(folder, OOF_FILE))
        if found is not None:
            write(posixpath.dirname(trial.path.rstrip("/")), trial.trial_id, found, fs)
