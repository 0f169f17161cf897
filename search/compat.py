"""The one place fusetune touches Ray Tune's and Optuna's private internals.

Resume (``--resume``), the state seal (:mod:`search.trust.integrity`), settling trials a killed driver
left running (:mod:`search.tune.settle`), checkpoint pruning (:mod:`search.select.cleanup`) and the persistent
Optuna study (:mod:`search.tune.optuna_storage`) need things neither library offers publicly: a hook
into Tune's experiment snapshot, the restored ``Tuner``'s config, the search generator's trial
count, ``OptunaSearch``'s study and trial map, Optuna's storage trial ids, the plain-JSON fields of
Tune's experiment state. Every such access is a function or a property here, and nowhere else
under ``search/``, ``trainables/`` or ``spaces/`` (``tests/test_compat.py`` greps for it);
``tests/test_compat.py`` also checks, on the installed versions, that each internal used here
still exists and behaves as this module assumes. An upgrade of Ray or Optuna that moves one of
them therefore fails one named test instead of breaking resume silently.

Versions: :data:`TESTED` are the minor versions the seam (and the test suite) ran on; pyproject
pins them. Another version is not refused (a patch release or a user's deliberate upgrade may
work): :func:`check_versions` warns once, in one line, when this module is imported
(``python -m pytest tests/test_compat.py`` then says which internal moved).
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from ray.tune.search.optuna import OptunaSearch

TESTED: dict[str, str] = {"ray": "2.60", "optuna": "5.1"}
"""Package -> the minor version (``major.minor``) this seam was tested with."""


# --------------------------------------------------------------------------------- versions
def installed_version(package: str) -> str:
    return metadata.version(package)


def untested_versions(installed: dict[str, str] | None = None) -> list[str]:
    """``"ray 2.61.0"`` for every installed package whose minor version is not :data:`TESTED`'s."""
    found = installed or {p: installed_version(p) for p in TESTED}
    out = []
    for package, minor in TESTED.items():
        version = found.get(package)
        if version is not None and ".".join(version.split(".")[:2]) != minor:
            out.append(f"{package} {version}")
    return out


def version_message(untested: list[str]) -> str:
    """One line naming the installed versions outside what the seam was tested with."""
    tested = ", ".join(f"{p} {v}.x" for p, v in TESTED.items())
    return (f"fusetune's Ray/Optuna compat seam (search/compat.py) was tested with {tested}; installed "
            f"{', '.join(untested)}: --resume may break (python -m pytest tests/test_compat.py says where)")


class UntestedVersionWarning(UserWarning):
    """Ray or Optuna is outside the minor versions :data:`TESTED`."""


def check_versions(installed: dict[str, str] | None = None) -> str | None:
    """Warn (:class:`UntestedVersionWarning`, one line) when Ray or Optuna is another minor
    version than :data:`TESTED`; returns the message, None when all is as tested."""
    untested = untested_versions(installed)
    if not untested:
        return None
    message = version_message(untested)
    warnings.warn(message, UntestedVersionWarning, stacklevel=2)
    return message


# --------------------------------------------------------------------------------- Tune's experiment snapshot
SNAPSHOT_HOOKS_ATTR = "_fusetune_snapshot_hooks"
"""Set on the wrapped ``TuneController.save_to_dir``: the hooks it calls (survives a reload of this module)."""


def after_experiment_snapshot(hook: Callable[[str, str], None]) -> None:
    """Call ``hook(search folder, staging folder)`` each time Tune has written an experiment
    snapshot (``TuneController.save_to_dir``: experiment state, searcher and callback states) to
    its local staging folder, before its background sync copies them into the search folder (a
    local path, or a ``scheme://`` URI for a remote store). Idempotent for the same hook."""
    from ray.tune.execution.tune_controller import TuneController

    hooks = getattr(TuneController.save_to_dir, SNAPSHOT_HOOKS_ATTR, None)
    if hooks is None:
        original = TuneController.save_to_dir
        hooks = []

        @functools.wraps(original)
        def save_to_dir(self: Any, *args: Any, **kwargs: Any) -> Any:
            out = original(self, *args, **kwargs)
            storage = self._storage
            experiment = storage.experiment_fs_path if _is_local(storage) else _uri(storage)
            for h in hooks:
                h(experiment, storage.experiment_driver_staging_path)
            return out

        setattr(save_to_dir, SNAPSHOT_HOOKS_ATTR, hooks)
        TuneController.save_to_dir = save_to_dir
    if hook not in hooks:
        hooks.append(hook)


NEW_TRIAL_SNAPSHOT_ATTR = "_fusetune_snapshot_new_trials"
"""Set on the wrapped ``TuneController._update_trial_queue``: it snapshots after adding a trial."""


def snapshot_each_new_trial() -> None:
    """Make Tune write its experiment snapshot, and wait for its copy into the search folder, each
    time the search algorithm has added a new trial (``TuneController._update_trial_queue``), before
    the trial can start. Tune otherwise snapshots every few seconds at most, and a short trial that
    starts and ends between two snapshots is in none: a driver killed then would lose it, finished,
    and its sampled configuration (Ray samples another in its place). Idempotent."""
    from ray.tune.execution.tune_controller import TuneController

    original = TuneController._update_trial_queue
    if getattr(original, NEW_TRIAL_SNAPSHOT_ATTR, False):
        return

    @functools.wraps(original)
    def _update_trial_queue(self: Any, *args: Any, **kwargs: Any) -> bool:
        added = original(self, *args, **kwargs)
        if added:
            self.checkpoint(force=True, wait=True)
        return added

    setattr(_update_trial_queue, NEW_TRIAL_SNAPSHOT_ATTR, True)
    TuneController._update_trial_queue = _update_trial_queue


def _is_local(storage: Any) -> bool:
    import pyarrow.fs

    return isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem)


def _uri(storage: Any) -> str:
    """The search folder as a URI pyarrow resolves (``s3://bucket/path``) for a remote store."""
    scheme = storage.storage_filesystem.type_name
    return f"{scheme}://{storage.experiment_fs_path}"


def state_json_patterns() -> tuple[str, ...]:
    """The file patterns of the root JSON files Tune deserializes with (cloud)pickle inside: the
    experiment state, the search generator's and the basic variant generator's state (their
    ``CKPT_FILE_TMPL``)."""
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from ray.tune.search.search_generator import SearchGenerator

    return tuple(cls.CKPT_FILE_TMPL.format("*") for cls in (TuneController, SearchGenerator, BasicVariantGenerator))


# --------------------------------------------------------------------------------- Tune's experiment state JSON
EXPERIMENT_STATE_PREFIX = "experiment_state-"
"""Tune's ``experiment_state-<session>.json`` (``TuneController.CKPT_FILE_TMPL``); the newest by
name is the one ``Tuner.restore`` reads."""


def state_trial_entries(state: dict[str, Any]) -> list[Any]:
    """The trial entries of a parsed experiment state: each a pair of JSON strings, the trial's
    state (plain fields ``trial_id``, ``status``, ``relative_logdir``; others cloudpickled) and its
    run metadata (``last_result``, ``last_result_time``)."""
    return state.get("trial_data", [])


def read_state_trial(entry: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The trial's state and run metadata of an entry of :func:`state_trial_entries`, as dicts."""
    return json.loads(entry[0]), json.loads(entry[1])


def write_state_trial(entry: Any, trial: dict[str, Any], meta: dict[str, Any]) -> None:
    """Put (changed) trial state and run metadata back into ``entry``, as Tune writes them."""
    entry[0], entry[1] = json.dumps(trial), json.dumps(meta, indent=2)


def latest_checkpoint_path(trial: Any) -> str | None:
    """The path of the checkpoint Tune would restore ``trial`` from (None before its first): its
    run metadata's checkpoint manager's latest result."""
    cpm = getattr(getattr(trial, "run_metadata", None), "checkpoint_manager", None)
    latest = cpm.latest_checkpoint_result if cpm is not None else None
    return latest.checkpoint.path if latest is not None and latest.checkpoint is not None else None


def restore_point(trial: Any) -> dict[str, Any] | None:
    """The reported result whose checkpoint Tune would restore ``trial`` from (None before its first)."""
    cpm = getattr(getattr(trial, "run_metadata", None), "checkpoint_manager", None)
    latest = cpm.latest_checkpoint_result if cpm is not None else None
    return dict(latest.metrics) if latest is not None and latest.checkpoint is not None else None


# --------------------------------------------------------------------------------- the restored Tuner
def set_run_callbacks(tuner: Any, callbacks: list[Any]) -> None:
    """Replace the callbacks of a restored ``Tuner`` (no public setter)."""
    tuner._local_tuner.get_run_config().callbacks = callbacks


def tuner_search_alg(tuner: Any) -> Any:
    """The search algorithm a restored ``Tuner`` will run (no public getter)."""
    return tuner._local_tuner._tune_config.search_alg


# --------------------------------------------------------------------------------- SearchGenerator
def generator_experiment(generator: Any) -> Any:
    """The ``Experiment`` a ``SearchGenerator`` creates its trials from (None before it has one)."""
    return getattr(generator, "_experiment", None)


def raise_total_samples(generator: Any, total: int) -> None:
    """Let a ``SearchGenerator`` sample up to ``total`` trials (more than it was started with):
    its count goes up and a generator that had finished samples again."""
    if total > generator._total_samples:
        generator._total_samples = total
        generator._finished = False


def rebase_experiment_storage(experiment: Any, storage_path: str) -> None:
    """Point the storage of a restored ``Experiment`` at ``storage_path`` (the results folder of
    this session), so the trials it creates from now on are written there."""
    import copy

    from ray.train._internal.storage import get_fs_and_path

    storage = copy.copy(experiment.spec["storage"])
    storage.storage_filesystem, fs_path = get_fs_and_path(storage_path, None)
    storage.storage_fs_path = Path(fs_path).as_posix()
    experiment.spec["storage"] = experiment.storage = storage


# --------------------------------------------------------------------------------- Ray's local node
def disable_ray_cluster_constant() -> None:
    """Ray's no-cluster switch as Ray read it when it was imported (``ray_constants.ENABLE_RAY_CLUSTER``)."""
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


# --------------------------------------------------------------------------------- Ray's messages to the driver
RAYLET_ROUTE_ATTR = "_fusetune_raylet_stream"
"""Set on the wrapped ``ray._private.worker.print_to_stdstream``: a one-element list, the stream."""


def route_raylet_messages(stream: Any) -> None:
    """Ray relays its own processes' messages (a dead raylet's last log lines and state dumps, the
    GCS server's errors) to the driver's standard output (``ray._private.worker.print_to_stdstream``
    with a process name for pid, ``raylet`` or ``gcs_server``, from its ``listen_error_messages``
    thread and its log monitor): write them to ``stream`` instead. The trial workers' output (a
    numeric pid) is relayed as before. Calling it again changes the stream."""
    from ray._private import worker

    current = getattr(worker.print_to_stdstream, RAYLET_ROUTE_ATTR, None)
    if current is not None:
        current[0] = stream
        return
    original, target = worker.print_to_stdstream, [stream]

    @functools.wraps(original)
    def print_to_stdstream(data: dict[str, Any], ignore_prefix: bool) -> None:
        pid = data.get("pid")
        if isinstance(pid, int) or (isinstance(pid, str) and pid.isdigit()):
            return original(data, ignore_prefix)
        for line in data.get("lines", []):
            target[0].write(f"({pid}) {line}\n")
        target[0].flush()
        return None

    setattr(print_to_stdstream, RAYLET_ROUTE_ATTR, target)
    worker.print_to_stdstream = print_to_stdstream


# --------------------------------------------------------------------------------- Optuna
def storage_trial_id(trial: Any) -> int:
    """The storage's id of an Optuna ``Trial`` or ``FrozenTrial`` (not its ``number``)."""
    return trial._trial_id


def trial_of(study: Any, storage_id: int) -> Any:
    """The live ``optuna.trial.Trial`` of ``study`` with the storage id ``storage_id``."""
    import optuna

    return optuna.trial.Trial(study, storage_id)


def set_trial_user_attr(study: Any, storage_id: int, key: str, value: Any) -> None:
    """A user attribute on the trial with storage id ``storage_id``, through the study's storage."""
    study._storage.set_trial_user_attr(storage_id, key, value)


def report_intermediate_values(trial: Any, values: list[tuple[int, float]]) -> None:
    """``trial.report(value, step)`` for every ``(step, value)``, as Optuna's ``Trial.report`` does
    it (a step already reported is left as it is, without Optuna's warning), in one transaction of an RDB storage (SQLite,
    PostgreSQL): a sparse report's curve of 50 epochs was 50 commits, each one ~3 ms of the Tune
    loop's thread, which the reporting trial waits for. Other storages: one ``report`` per value."""
    from optuna.storages import RDBStorage
    from optuna.storages._rdb.storage import _create_scoped_session

    known = trial._cached_frozen_trial.intermediate_values
    todo = {int(step): float(value) for step, value in values if int(step) not in known}
    backend = getattr(trial.storage, "_backend", trial.storage)   # the cache in front of an RDB storage
    if len(todo) < 2 or not isinstance(backend, RDBStorage) or len(trial.study.directions) > 1:
        for step, value in todo.items():
            trial.report(value, step)
        return
    if min(todo) < 0:
        raise ValueError(f"`step={min(todo)}` must be non-negative.")
    with _create_scoped_session(backend.scoped_session, True) as session:
        for step, value in todo.items():
            backend._set_trial_intermediate_value_without_commit(session, trial._trial_id, step, value)
    known.update(todo)


def sampler_random_states(sampler: Any) -> dict[str, list[Any]]:
    """Every random state an Optuna sampler draws from (its own and its inner samplers'), as JSON:
    attribute path -> ``numpy.random.RandomState.get_state()``. Optuna keeps no other sampler state
    outside the study's storage (CMA-ES and NSGA-II keep theirs there)."""
    states = {path: rng.get_state() for path, rng in _random_states(sampler)}
    return {path: [kind, keys.tolist(), *rest] for path, (kind, keys, *rest) in states.items()}


def set_sampler_random_states(sampler: Any, states: dict[str, list[Any]]) -> None:
    """Put back what :func:`sampler_random_states` read; a path the sampler lacks is an error."""
    import numpy as np

    found = dict(_random_states(sampler))
    for path, (kind, keys, pos, has_gauss, gauss) in states.items():
        found[path].set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))


def _random_states(obj: Any, path: str = "", depth: int = 3) -> list[tuple[str, Any]]:
    """(path, RandomState) of ``obj``'s optuna-owned attributes, ``LazyRandomState`` made concrete."""
    import numpy as np
    from optuna.samplers._lazy_random_state import LazyRandomState

    if isinstance(obj, LazyRandomState):
        return [(path, obj.rng)]
    if isinstance(obj, np.random.RandomState):
        return [(path, obj)]
    if depth == 0 or not type(obj).__module__.startswith("optuna.") or not hasattr(obj, "__dict__"):
        return []
    return [found for name, value in sorted(vars(obj).items())
            for found in _random_states(value, f"{path}.{name}".lstrip("."), depth - 1)]


# --------------------------------------------------------------------------------- Ray's OptunaSearch
class OptunaSearchSeam(OptunaSearch):
    """Ray's ``OptunaSearch`` with its private state as properties, and :meth:`setup_study` in
    place of its ``_setup_study`` (subclass this; override :meth:`setup_study`)."""

    LIVE_STATE = ("_ot_study", "_ot_trials", "_storage")
    """What :meth:`detached_state` leaves out: the open study, its live trials, the storage."""

    def _setup_study(self, mode: str | list) -> None:
        self.setup_study(mode)

    def setup_study(self, mode: str | list) -> None:
        """Create the study (Ray's ``_setup_study``): called when metric and mode are known."""
        OptunaSearch._setup_study(self, mode)

    def take_points_to_evaluate(self) -> list[dict[str, Any]]:
        """The points to evaluate first (as given), leaving none for Ray to enqueue."""
        points, self._points_to_evaluate = self._points_to_evaluate, []
        return points

    @property
    def ot_study(self) -> Any:
        return self._ot_study

    @ot_study.setter
    def ot_study(self, study: Any) -> None:
        self._ot_study = study

    @property
    def ot_trials(self) -> dict[str, Any]:
        """Ray trial id -> live Optuna trial."""
        return self._ot_trials

    @ot_trials.setter
    def ot_trials(self, trials: dict[str, Any]) -> None:
        self._ot_trials = trials

    @property
    def completed_trials(self) -> set[str]:
        """Ray trial ids already told to the study."""
        return self._completed_trials

    @completed_trials.setter
    def completed_trials(self, ids: set[str]) -> None:
        self._completed_trials = ids

    @property
    def study_name(self) -> str:
        return self._study_name

    @study_name.setter
    def study_name(self, name: str) -> None:
        self._study_name = name

    @property
    def ot_sampler(self) -> Any:
        return self._sampler

    @property
    def ot_storage(self) -> Any:
        return self._storage

    @ot_storage.setter
    def ot_storage(self, storage: Any) -> None:
        self._storage = storage

    def detached_state(self) -> dict[str, Any]:
        """``__dict__`` without :data:`LIVE_STATE` (what is pickled when the study is in a storage)."""
        return {k: v for k, v in self.__dict__.items() if k not in self.LIVE_STATE}

    def clear_live_state(self) -> None:
        """No study, no live trials, no storage (until they are opened again)."""
        self._ot_study, self._ot_trials, self._storage = None, {}, None


check_versions()
