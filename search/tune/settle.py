"""Before a resume: a trial whose final result was recorded is finished, whatever the snapshot says;
a trial that failed because of the machine (a lost worker or node, a full disk) is unfinished.

Ray Tune writes its experiment snapshot (``experiment_state-*.json``, what ``--resume`` reads) at
most every few seconds, and copies the trials' ``result.json`` (written on the driver, in Ray's
staging folder) to the search folder with it. A driver killed between a trial's final result
(sent to MLflow) and the next snapshot leaves that trial RUNNING in the snapshot, and Tune would
run it again from its last checkpoint (or fail it, when that checkpoint was gone): its run
FINISHED in MLflow while Tune calls it unfinished. So :class:`RecordFinal` writes every trial's final
result to ``<trial folder>/final_result.json`` on the search's storage the moment Tune hands it
over (before the trial's end, which is what marks its MLflow run FINISHED, is processed); before
``Tuner.restore`` reads the snapshot, :func:`settle` marks the trials that have one TERMINATED in
it, with that final result as their last; :class:`search.tune.orchestrate.SearchBudget` then tells the
searcher they completed (the Optuna trial COMPLETE, the concurrency slot free).

A trial whose worker died (its node lost, its actor killed: Ray's ``ActorDiedError`` and the like in
its ``error.txt``) or whose disk was full failed for reasons outside its model: :func:`settle` marks it unfinished again, so
Tune resumes it from its last checkpoint (its Optuna trial, told FAIL, is replaced by a fresh one:
:mod:`search.tune.optuna_storage`). A trial whose model raised stays failed.

The confirmation stage does not go on without such a trial's job (its candidate would lack the
repetition): :func:`stop_if_lost` stops the driver with :class:`TrialsLost` and ``--resume``
runs the job again. The search stage goes on without such a trial (recorded as failed; a
``--resume`` runs it again) unless the driver's own Ray node died with it: then nothing after the
trials can run, and the driver stops the same way.

Only the snapshot's plain JSON fields are read and written (the trial's ``status`` and its run
metadata's ``last_result``); the cloudpickled ones are copied as they are, never unpickled.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

import pyarrow.fs
from ray.tune import Callback
from ray.tune.utils.util import SafeFallbackEncoder

from search import compat
from search.trust.files import write_atomically

ENDED = ("TERMINATED", "ERROR")
FINAL_RESULT = "final_result.json"


class RecordFinal(Callback):
    """Write a trial's final result (``final`` in it) to ``<trial folder>/final_result.json`` on the
    search's storage at once (written whole, then renamed into place)."""

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if not result.get("final"):
            return
        fs, folder = trial.storage.storage_filesystem, trial.path
        fs.create_dir(folder, recursive=True)
        write_atomically(fs, posixpath.join(folder, FINAL_RESULT), json.dumps(result, cls=SafeFallbackEncoder).encode())


def newest_state(fs: pyarrow.fs.FileSystem, experiment_dir: str) -> str | None:
    """The path of the newest ``experiment_state-*.json`` (the one ``Tuner.restore`` reads), if any."""
    infos = fs.get_file_info(pyarrow.fs.FileSelector(experiment_dir, allow_not_found=True))
    states = sorted(i.path for i in infos if posixpath.basename(i.path).startswith(compat.EXPERIMENT_STATE_PREFIX)
                    and i.path.endswith(".json"))
    return states[-1] if states else None


def final_result(fs: pyarrow.fs.FileSystem, trial_dir: str) -> dict[str, Any] | None:
    """The final result :class:`RecordFinal` wrote for the trial in ``trial_dir``, else None."""
    try:
        with fs.open_input_stream(posixpath.join(trial_dir, FINAL_RESULT)) as f:
            result = json.loads(f.read())
    except (OSError, ValueError, pyarrow.ArrowException):
        return None
    return result if isinstance(result, dict) and result.get("final") else None


INFRASTRUCTURE_ERRORS = ("ActorDiedError", "ActorUnavailableError", "RayActorError", "NodeDiedError",
                         "WorkerCrashedError", "OwnerDiedError", "ObjectLostError", "OutOfMemoryError",
                         "The actor is temporarily unavailable", "The actor died", "node died", "Node failed",
                         "[Errno 28] No space left on device", "[Errno 122] Disk quota exceeded")
"""The words of a trial's error that failed because of the machine (its worker or node lost, a full
disk), not because of its model."""


def machine_failure(text: str) -> bool:
    """Whether a trial's error text is one of the machine (:data:`INFRASTRUCTURE_ERRORS`)."""
    return any(word in text for word in INFRASTRUCTURE_ERRORS)


OWN_NODE_LOST = ("Owner's node has crashed",)
"""The words of a trial's error when the driver's own Ray node died (the driver owns the trial's actor)."""


class TrialsLost(RuntimeError):
    """Trials of a stage failed because of the machine (their Ray worker or node lost, a full disk)
    and no retry is left: the driver stops, and ``--resume`` runs them again (:func:`settle`).
    ``own_node``: the driver's own Ray node died with them."""

    def __init__(self, message: str, own_node: bool = False) -> None:
        super().__init__(message)
        self.own_node = own_node


def stop_if_lost(grid: Any, stage: str, own_node_only: bool = False) -> None:
    """Raise :class:`TrialsLost` when a trial of ``grid`` (a ``ResultGrid``) failed because of the
    machine (``own_node_only``: only when the driver's own Ray node died with it)."""
    errors = [res.error for res in grid if res.error is not None]
    lost = [e for e in errors if machine_failure(f"{type(e).__name__}: {e}")]
    own = [e for e in lost if any(words in str(e) for words in OWN_NODE_LOST)]
    if own_node_only:
        lost = own
    if lost:
        lines = [ln.strip() for ln in str(lost[0]).splitlines() if ln.strip()] or [""]
        why = next((ln for ln in lines if "because" in ln), lines[0])  # Ray's "The actor is dead because ..."
        raise TrialsLost(f"{len(lost)} trial(s) of the {stage} lost their Ray worker ({type(lost[0]).__name__}: "
                         f"{why[:160]})", own_node=bool(own))


def infrastructure_failure(fs: pyarrow.fs.FileSystem, trial_dir: str, error_file: str | None) -> bool:
    """Whether the error Tune recorded for a trial (``error.txt``, plain text) is one of the machine
    (:data:`INFRASTRUCTURE_ERRORS`: its worker or node lost, a full disk) rather than of the model."""
    if not error_file:
        return False
    try:
        with fs.open_input_stream(posixpath.join(trial_dir, posixpath.basename(error_file))) as f:
            text = f.read(200_000).decode(errors="replace")
    except (OSError, pyarrow.ArrowException):
        return False
    return machine_failure(text)


def settle(experiment_path: str) -> dict[str, dict[str, Any]]:
    """Mark TERMINATED, in the newest snapshot of the experiment at ``experiment_path``, every
    trial it holds as unfinished that has a recorded final result, and unfinished every trial that
    failed because of the machine (:func:`infrastructure_failure`: its worker or node lost, a full disk;
    Tune retries it from its last checkpoint). Returns trial id -> final result of the trials it marked TERMINATED."""
    fs, root = pyarrow.fs.FileSystem.from_uri(experiment_path) if "://" in experiment_path else (
        pyarrow.fs.LocalFileSystem(), experiment_path)
    path = newest_state(fs, root)
    if path is None:
        return {}
    with fs.open_input_stream(path) as f:
        state = json.loads(f.read())
    settled: dict[str, dict[str, Any]] = {}
    revived = 0
    for entry in compat.state_trial_entries(state):
        trial, meta = compat.read_state_trial(entry)
        if trial.get("status") == "ERROR" and trial.get("relative_logdir") and infrastructure_failure(
                fs, posixpath.join(root, trial["relative_logdir"]), meta.get("error_filename")):
            trial["status"] = "RUNNING"  # Tune resumes it from its last checkpoint, as an unfinished trial
            meta["error_filename"] = meta["pickled_error_filename"] = None
            compat.write_state_trial(entry, trial, meta)
            revived += 1
            continue
        if trial.get("status") in ENDED or not trial.get("relative_logdir"):
            continue
        result = final_result(fs, posixpath.join(root, trial["relative_logdir"]))
        if result is None or str(result.get("trial_id", trial["trial_id"])) != str(trial["trial_id"]):
            continue
        trial["status"] = "TERMINATED"
        meta["last_result"] = result
        if isinstance(result.get("timestamp"), (int, float)):
            meta["last_result_time"] = float(result["timestamp"])
        compat.write_state_trial(entry, trial, meta)
        settled[str(trial["trial_id"])] = result
    if settled or revived:
        write_atomically(fs, path, json.dumps(state).encode(), tmp=f"{path}.settle-tmp")
    return settled
