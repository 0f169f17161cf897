"""The compat seam (``search/compat.py``) is the only code that touches Ray Tune's and Optuna's
private internals, and every internal it touches still exists and behaves as it assumes on the
installed versions. A Ray or Optuna upgrade that moves one fails the test named after it here."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from search import compat
from search.prepare import registry_names

REPO = Path(__file__).resolve().parents[1]
SCOPE = ("search", "trainables", "spaces")
SEAM = REPO / "search" / "compat.py"
LIBRARIES = ("ray", "optuna")

KNOWN_PRIVATE = frozenset({
    # Tuner / TunerInternal
    "_local_tuner", "_remote_tuner", "_tune_config", "_run_config",
    # TuneController (its _storage also OptunaSearch's and optuna.Study's)
    "_search_alg", "_checkpoint_manager", "_trial_metadata", "_storage",
    # SearchGenerator
    "_total_samples", "_experiment",
    # OptunaSearch
    "_ot_study", "_ot_trials", "_completed_trials", "_points_to_evaluate", "_evaluated_rewards",
    "_setup_study", "_study_name", "_sampler", "_suggest_from_define_by_run_func",
    # Optuna Trial / FrozenTrial / Study
    "_trial_id", "_cached_frozen_trial", "_study_id",
})
"""Private attribute names of Ray Tune / Optuna objects, flagged on any object (besides what a
subclass of a Ray/Optuna class reads of its base, found by introspection)."""


# --------------------------------------------------------------------------------- versions
def test_installed_versions_are_the_ones_the_seam_was_tested_with():
    untested = compat.untested_versions()
    assert not untested, (compat.version_message(untested) + ": run tests/test_compat.py, fix search/compat.py "
                          "where an internal moved, then update compat.TESTED and the pins in pyproject.toml")


def test_untested_version_warns_in_one_line():
    with pytest.warns(compat.UntestedVersionWarning) as caught:
        message = compat.check_versions({"ray": "2.61.0", "optuna": "5.1.2"})
    assert message is not None and "\n" not in message
    assert "ray 2.61.0" in message and "optuna" not in message.split("installed")[1]
    assert str(caught[0].message) == message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compat.check_versions({"ray": "2.60.3", "optuna": "5.1.0"}) is None


def test_pyproject_pins_the_tested_minor_versions():
    text = (REPO / "pyproject.toml").read_text()
    for package, minor in compat.TESTED.items():
        major, low = minor.split(".")
        pin = re.search(rf'"{package}(\[[a-z,]+\])?>=([0-9.]+),<([0-9.]+)"', text)
        assert pin, f"pyproject.toml: no >=,< pin of {package}"
        assert pin.group(2) == minor and pin.group(3) == f"{major}.{int(low) + 1}", pin.group(0)


# --------------------------------------------------------------------------------- only the seam
def _private_module(name: str) -> bool:
    parts = name.split(".")
    return parts[0] in LIBRARIES and (any(p.startswith("_") for p in parts)
                                      or name.startswith(("ray.tune.execution", "ray.tune.impl")))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _library_private_names(cls: type) -> set[str]:
    """Private attributes the Ray/Optuna classes in ``cls``'s MRO define or assign on ``self``."""
    names: set[str] = set()
    for base in cls.__mro__:
        if base.__module__.split(".")[0] not in LIBRARIES:
            continue
        names |= {n for n in vars(base) if _private(n)}
        try:
            source = inspect.getsource(base)
        except (OSError, TypeError):
            continue
        names |= {n for n in re.findall(r"self\.(_\w+)", source) if _private(n)}
    return names


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


def private_uses(path: Path) -> list[str]:
    """``path:line: what`` for every private Ray/Optuna module, name or attribute ``path`` uses."""
    tree = ast.parse(path.read_text(), str(path))
    rel = path.relative_to(REPO)
    found: list[str] = []
    library_names: set[str] = set()  # local names bound to a Ray/Optuna module or object
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in LIBRARIES:
                    library_names.add((a.asname or a.name).split(".")[0])
                if _private_module(a.name):
                    found.append(f"{rel}:{node.lineno}: import {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in LIBRARIES:
                library_names |= {a.asname or a.name for a in node.names}
                if _private_module(node.module) or any(_private(a.name) for a in node.names):
                    found.append(f"{rel}:{node.lineno}: from {node.module} import "
                                 + ", ".join(a.name for a in node.names))
    # self/cls inside a class deriving from a Ray/Optuna class: what its library bases define
    inherited: dict[ast.ClassDef, set[str]] = {}
    module = None
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.bases:
            if module is None:
                module = importlib.import_module(_module_name(path))
            cls = getattr(module, node.name, None)
            if isinstance(cls, type):
                inherited[node] = _library_private_names(cls)

    def visit(node: ast.AST, own: set[str]) -> None:
        for child in ast.iter_child_nodes(node):
            scope = inherited.get(child, own) if isinstance(child, ast.ClassDef) else own
            if isinstance(child, ast.Attribute) and _private(child.attr):
                receiver = child.value.id if isinstance(child.value, ast.Name) else None
                if (child.attr in KNOWN_PRIVATE or receiver in library_names
                        or (receiver in ("self", "cls") and child.attr in scope)):
                    found.append(f"{rel}:{child.lineno}: .{child.attr}")
            elif isinstance(child, ast.Constant) and isinstance(child.value, str):
                if child.value in KNOWN_PRIVATE or child.value in own:  # getattr(x, "_..."), __dict__ keys
                    found.append(f"{rel}:{child.lineno}: {child.value!r}")
            visit(child, scope)

    visit(tree, set())
    return found


def test_only_the_seam_touches_ray_and_optuna_internals():
    files = sorted(p for d in SCOPE for p in (REPO / d).rglob("*.py") if p != SEAM)
    found = [use for p in files for use in private_uses(p)]
    assert not found, ("Ray/Optuna internals outside search/compat.py (add a function there, with a test "
                       "in tests/test_compat.py):\n" + "\n".join(found))


@pytest.mark.parametrize("code", [
    "def f(tuner):\n    return tuner._local_tuner\n",
    "from ray.train._internal.storage import get_fs_and_path\n",
    "from ray._private import ray_constants\n",
    "import ray.tune.execution.tune_controller\n",
    "def f(t):\n    return getattr(t, '_trial_id')\n",
    "def f(controller):\n    return controller._storage.experiment_driver_staging_path\n",
    "from ray.tune.search.optuna import OptunaSearch\nclass S(OptunaSearch):\n"
    "    def f(self):\n        return self._sampler\n",
])
def test_the_check_flags_a_private_use(tmp_path, monkeypatch, code):
    pkg = tmp_path / "probe_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text(code)
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert private_uses(pkg / "mod.py")


def test_the_check_leaves_fusetune_private_names_alone(tmp_path, monkeypatch):
    code = ("from ray.tune import Callback\nclass C(Callback):\n    def __init__(self):\n"
            "        self._trials = []\n        self._last = 0.0\n    def f(self):\n        return self._trials\n")
    pkg = tmp_path / "probe_ok"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text(code)
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert private_uses(pkg / "mod.py") == []


# --------------------------------------------------------------------------------- Optuna
@pytest.fixture(params=["memory", "sqlite"])
def study(request, tmp_path):
    storage = optuna.storages.InMemoryStorage() if request.param == "memory" else \
        optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}")
    return optuna.create_study(storage=storage, study_name="s")


def test_optuna_trial_has_storage_id(study):
    """``Trial._trial_id`` and ``FrozenTrial._trial_id``: the storage's id, distinct from ``number``."""
    study.enqueue_trial({"x": 0.5})
    study.add_trial(optuna.trial.create_trial(params={"x": 0.1}, distributions={
        "x": optuna.distributions.FloatDistribution(0, 1)}, value=0.1))
    live = study.ask()
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == live.number)
    assert isinstance(compat.storage_trial_id(live), int)
    assert compat.storage_trial_id(live) == compat.storage_trial_id(frozen)
    assert study._storage.get_trial(compat.storage_trial_id(live)).number == live.number


def test_optuna_trial_from_storage_id_and_user_attr(study):
    """``optuna.trial.Trial(study, storage id)`` is that trial; ``Study._storage.set_trial_user_attr``."""
    live = study.ask()
    again = compat.trial_of(study, compat.storage_trial_id(live))
    assert again.number == live.number
    compat.set_trial_user_attr(study, compat.storage_trial_id(live), "k", "v")
    again.report(1.0, 1)
    assert study.trials[-1].user_attrs == {"k": "v"} and study.trials[-1].intermediate_values == {1: 1.0}


def test_intermediate_values_in_one_transaction_are_trial_reports(study, monkeypatch):
    """``report_intermediate_values``: what ``Trial.report`` stores (a step already reported kept,
    the trial's cached copy updated), one commit for an RDB storage (``RDBStorage``'s
    ``_set_trial_intermediate_value_without_commit`` and ``_create_scoped_session``)."""
    live = study.ask()
    live.report(0.5, 1)
    commits = []
    if isinstance(study._storage, optuna.storages.RDBStorage) or hasattr(study._storage, "_backend"):
        from sqlalchemy.orm import Session

        original = Session.commit
        monkeypatch.setattr(Session, "commit", lambda self: (commits.append(1), original(self))[1])
    compat.report_intermediate_values(live, [(1, 9.0), (2, 0.25), (3, float("nan")), (4, 0.75)])
    stored = study._storage.get_trial(compat.storage_trial_id(live)).intermediate_values
    assert stored[1] == 0.5 and stored[2] == 0.25 and stored[4] == 0.75 and np.isnan(stored[3])
    assert live._cached_frozen_trial.intermediate_values.keys() == {1, 2, 3, 4}
    if commits:   # the same values one Trial.report each: a commit each
        ours = len(commits)
        other = study.ask()
        commits.clear()
        for step, value in [(1, 9.0), (2, 0.25), (3, float("nan")), (4, 0.75)]:
            other.report(value, step)
        assert len(commits) == 4 and ours <= 2   # one write (and a read) against four
    with pytest.raises(ValueError, match="non-negative"):
        compat.report_intermediate_values(live, [(-1, 0.0), (-2, 0.0)])
    study.tell(live, 1.0)
    with pytest.raises(Exception, match="finished"):   # as Trial.report on a told trial
        compat.report_intermediate_values(compat.trial_of(study, compat.storage_trial_id(live)), [(5, 1.0), (6, 1.0)])


@pytest.mark.parametrize("name", list(registry_names.SAMPLERS))
def test_sampler_random_states_hold_every_draw(name):
    """Optuna samplers keep their random state in ``LazyRandomState`` / ``RandomState`` attributes
    (``optuna.samplers._lazy_random_state``): read as JSON and put back into a fresh sampler, its
    next draws are the original's. Every sampler of the registry has one."""
    from search.prepare.config import SearchConfig
    from search.tune.samplers import SAMPLERS

    def build():
        return SAMPLERS[name](SearchConfig(space="baseline", data="breast-tcga", sampler=name, seed=7))

    sampler = build()
    states = json.loads(json.dumps(compat.sampler_random_states(sampler)))
    assert states, name
    draws = [rng.random_sample() for _, rng in compat._random_states(sampler)]
    other = build()
    for _, rng in compat._random_states(other):
        rng.random_sample(3)  # somewhere else
    compat.set_sampler_random_states(other, states)
    assert [rng.random_sample() for _, rng in compat._random_states(other)] == draws


# --------------------------------------------------------------------------------- Ray's OptunaSearch
class _Probe(compat.OptunaSearchSeam):
    calls: list[str]

    def setup_study(self, mode: Any) -> None:
        self.calls = [*getattr(self, "calls", []), "setup"]
        self.seen_points = self.take_points_to_evaluate()
        super().setup_study(mode)


def _space(trial: Any) -> dict[str, Any]:
    trial.suggest_float("x", 0.0, 1.0)
    return {}


def test_optuna_search_private_state(tmp_path):
    """OptunaSearch's ``_setup_study`` (called once metric and mode are known), ``_points_to_evaluate``,
    ``_ot_study``, ``_ot_trials``, ``_completed_trials``, ``_study_name``, ``_sampler``, ``_storage``."""
    sampler = optuna.samplers.RandomSampler(seed=0)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}")
    s = _Probe(space=_space, metric="m", mode="max", points_to_evaluate=[{"x": 0.25}], sampler=sampler,
               study_name="probe", storage=storage)
    assert s.calls == ["setup"] and s.seen_points == [{"x": 0.25}]
    assert isinstance(s.ot_study, optuna.Study) and s.ot_study.study_name == s.study_name == "probe"
    assert s.ot_sampler is sampler and s.ot_storage is storage
    assert s.ot_study.trials == []  # the points taken were not enqueued by Ray
    s.suggest("a")
    assert set(s.ot_trials) == {"a"} and isinstance(s.ot_trials["a"], optuna.trial.Trial)
    s.on_trial_complete("a", {"m": 1.0})
    assert s.completed_trials == {"a"} and s.ot_study.trials[0].state == optuna.trial.TrialState.COMPLETE
    assert set(compat.OptunaSearchSeam.LIVE_STATE) <= set(vars(s))
    detached = s.detached_state()
    assert not set(compat.OptunaSearchSeam.LIVE_STATE) & set(detached) and "_sampler" in detached
    s.clear_live_state()
    assert s.ot_study is None and s.ot_trials == {} and s.ot_storage is None
    s.ot_storage = storage
    s.ot_study = optuna.load_study(study_name="probe", storage=storage, sampler=s.ot_sampler)
    s.ot_trials, s.completed_trials, s.study_name = {}, set(), "probe"
    s.suggest("b")  # Ray's searcher works on state put back through the properties
    assert set(s.ot_trials) == {"b"} and len(s.ot_study.trials) == 2


# --------------------------------------------------------------------------------- Ray internals, no cluster
def test_search_generator_count_and_experiment(tmp_path):
    """``SearchGenerator._total_samples``, ``._finished``, ``._experiment`` (set by
    ``add_configurations`` and ``set_state``, what ``restore_from_dir`` restores), and
    ``ray.train._internal.storage.get_fs_and_path`` with the experiment's StorageContext fields."""
    from ray import tune
    from ray.tune.experiment import Experiment
    from ray.tune.search import SearchGenerator

    gen = SearchGenerator(_Probe(space=_space, metric="m", mode="max"))
    assert compat.generator_experiment(gen) is None
    exp = Experiment("e", run=lambda config: tune.report({"m": 1}), num_samples=2, storage_path=str(tmp_path / "a"))
    gen.add_configurations([exp])
    assert compat.generator_experiment(gen) is exp and gen.total_samples == 2
    gen.set_state({**gen.get_state(), "finished": True})
    assert gen.is_finished()
    compat.raise_total_samples(gen, 1)  # never lowers
    assert gen.total_samples == 2 and gen.is_finished()
    compat.raise_total_samples(gen, 5)
    assert gen.total_samples == 5 and not gen.is_finished()
    assert gen.get_state()["total_samples"] == 5 and gen.get_state()["finished"] is False
    other = SearchGenerator(_Probe(space=_space, metric="m", mode="max"))
    other.set_state(gen.get_state())
    assert compat.generator_experiment(other) is exp

    compat.rebase_experiment_storage(exp, str(tmp_path / "b"))
    assert exp.spec["storage"] is exp.storage
    assert exp.storage.storage_fs_path == (tmp_path / "b").as_posix()
    assert exp.storage.experiment_fs_path == (tmp_path / "b" / "e").as_posix()


def test_experiment_state_file_naming(tmp_path):
    """``TuneController.CKPT_FILE_TMPL`` starts with :data:`compat.EXPERIMENT_STATE_PREFIX`, and
    :func:`search.tune.settle.newest_state` picks the state file Tune's restore reads."""
    import pyarrow.fs
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint
    from ray.tune.execution.tune_controller import TuneController

    from search.tune.settle import newest_state

    assert TuneController.CKPT_FILE_TMPL == compat.EXPERIMENT_STATE_PREFIX + "{}.json"
    for session in ("2026-12-01_10-00-00", "2026-12-03_09-59-59", "2026-12-02_23-00-00"):
        (tmp_path / TuneController.CKPT_FILE_TMPL.format(session)).write_text("{}")
    fs = pyarrow.fs.LocalFileSystem()
    assert newest_state(fs, str(tmp_path)) == _find_newest_experiment_checkpoint(str(tmp_path), fs)
    assert newest_state(fs, str(tmp_path)).endswith("2026-12-03_09-59-59.json")


def test_state_json_patterns():
    """The ``CKPT_FILE_TMPL`` of TuneController, SearchGenerator, BasicVariantGenerator."""
    assert compat.state_json_patterns() == ("experiment_state-*.json", "search_gen_state-*.json",
                                            "basic-variant-state-*.json")


def test_ray_cluster_constant(monkeypatch):
    """``ray._private.ray_constants.ENABLE_RAY_CLUSTER``, the switch ``ray.init`` reads."""
    from ray._private import ray_constants

    assert isinstance(ray_constants.ENABLE_RAY_CLUSTER, bool)
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    compat.disable_ray_cluster_constant()
    assert ray_constants.ENABLE_RAY_CLUSTER is False


# --------------------------------------------------------------------------------- a tiny Tune run
class _Snapshots:
    """Records each snapshot hook call: the search folder, the staged files, and whether Tune had
    asked the callbacks for their state by then."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, list[str], int]] = []
        self.get_state_calls = 0

    def __call__(self, experiment: str, staging: str) -> None:
        self.calls.append((experiment, staging, sorted(p.name for p in Path(staging).iterdir()), self.get_state_calls))


@pytest.fixture(scope="module")
def tune_run(tmp_path_factory):
    """One trial of one report with a checkpoint, an Optuna searcher, a snapshot hook and a callback."""
    import ray
    from ray import tune
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.search import SearchGenerator

    root = tmp_path_factory.mktemp("tune")
    snapshots = _Snapshots()

    class Counting(tune.Callback):
        def get_state(self) -> dict | None:
            snapshots.get_state_calls += 1
            return {"calls": snapshots.get_state_calls}

    def trainable(config: dict[str, Any]) -> None:  # a closure: pickled by value for the worker
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            Path(d, "w").write_text("1")
            tune.report({"m": 0.5, "epoch": 1}, checkpoint=tune.Checkpoint.from_directory(d))

    compat.after_experiment_snapshot(snapshots)
    compat.after_experiment_snapshot(snapshots)  # idempotent
    ray.init(num_cpus=1, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(
            search_alg=SearchGenerator(_Probe(space=_space, metric="m", mode="max")), num_samples=1),
            run_config=tune.RunConfig(name="exp", storage_path=str(root), callbacks=[Counting()], verbose=0))
        tuner.fit()
        yield {"path": root / "exp", "snapshots": snapshots, "trainable": trainable}
    finally:
        getattr(TuneController.save_to_dir, compat.SNAPSHOT_HOOKS_ATTR).remove(snapshots)
        ray.shutdown()


def test_save_to_dir_is_tunes_snapshot(tune_run):
    """``TuneController.save_to_dir`` is what Tune calls for a snapshot; the wrapper sees its
    ``_storage`` (experiment_fs_path, experiment_driver_staging_path, storage_filesystem) with
    the staged experiment state, searcher state and callback state, after the callbacks' ``get_state``."""
    from search.trust.integrity import tune_json_patterns

    calls = tune_run["snapshots"].calls
    assert calls, "the hook on TuneController.save_to_dir was never called"
    assert len({c[0] for c in calls}) == 1 and calls[0][0] == str(tune_run["path"])
    experiment, staging, staged, asked = calls[-1]
    assert staging != experiment
    assert any(n.startswith(compat.EXPERIMENT_STATE_PREFIX) for n in staged)
    assert any(n.startswith("searcher-state-") for n in staged) and any(n.startswith("callback-states-") for n in staged)
    assert asked == len(calls) and all(c[3] >= i + 1 for i, c in enumerate(calls))
    import fnmatch
    assert all(any(fnmatch.fnmatchcase(n, p) for n in staged) for p in tune_json_patterns()[:2])


def test_experiment_state_trial_fields(tune_run):
    """The plain-JSON fields settle and cleanup read (trial_id, status, relative_logdir;
    last_result, last_result_time) and that Tune's restore reads what settle writes."""
    import pyarrow.fs
    from ray.tune.experiment import Trial

    from search.tune.settle import newest_state
    path = newest_state(pyarrow.fs.LocalFileSystem(), str(tune_run["path"]))
    state = json.loads(Path(path).read_text())
    (entry,) = compat.state_trial_entries(state)
    trial, meta = compat.read_state_trial(entry)
    assert trial["status"] == "TERMINATED" and (tune_run["path"] / trial["relative_logdir"]).is_dir()
    assert isinstance(trial["trial_id"], str) and meta["last_result"]["m"] == 0.5
    assert isinstance(meta["last_result_time"], float)
    trial["status"] = "RUNNING"  # what a killed driver's snapshot holds: Tune runs it again
    compat.write_state_trial(entry, trial, meta)
    assert Trial.from_json_state(entry[0]).status == "PENDING"
    trial["status"] = "TERMINATED"  # what settle writes
    meta["last_result"] = {**meta["last_result"], "m": 0.75, "final": True}
    meta["last_result_time"] = 123.0
    compat.write_state_trial(entry, trial, meta)
    restored = Trial.from_json_state(entry[0])
    restored.restore_run_metadata(entry[1])
    assert restored.status == "TERMINATED" and restored.trial_id == trial["trial_id"]
    assert restored.run_metadata.last_result["m"] == 0.75 and restored.run_metadata.last_result_time == 123.0


def test_latest_checkpoint_path(tune_run):
    """``Trial.run_metadata.checkpoint_manager.latest_checkpoint_result.checkpoint.path``."""
    from ray.tune import ExperimentAnalysis

    (trial,) = ExperimentAnalysis(str(tune_run["path"])).trials
    path = compat.latest_checkpoint_path(trial)
    assert path is not None and Path(path).name == "checkpoint_000000" and (Path(path) / "w").is_file()
    assert compat.latest_checkpoint_path(object()) is None


def test_restored_tuner_config(tune_run):
    """``Tuner._local_tuner._tune_config.search_alg`` and ``._local_tuner.get_run_config().callbacks``
    of ``Tuner.restore``: the restored search algorithm, and callbacks the resumed run uses."""
    from ray import tune
    from ray.tune.search import SearchGenerator

    seen: list[str] = []

    class Seen(tune.Callback):
        def setup(self, **info: Any) -> None:
            seen.append("setup")

    tuner = tune.Tuner.restore(str(tune_run["path"]), tune_run["trainable"], resume_unfinished=True)
    alg = compat.tuner_search_alg(tuner)
    assert isinstance(alg, SearchGenerator) and isinstance(alg.searcher, _Probe)
    compat.set_run_callbacks(tuner, [Seen()])
    tuner.fit()
    assert seen == ["setup"]


def test_restore_point(tune_run):
    """``...checkpoint_manager.latest_checkpoint_result.metrics``: the result of the checkpoint a
    trial resumes from (search.tune.replay replays a trial's results up to it)."""
    from ray.tune import ExperimentAnalysis

    (trial,) = ExperimentAnalysis(str(tune_run["path"])).trials
    assert compat.restore_point(trial)["m"] == 0.5 and compat.restore_point(trial)["epoch"] == 1
    assert compat.restore_point(object()) is None


def test_snapshot_each_new_trial(tmp_path):
    """``TuneController._update_trial_queue`` adds the searcher's next trial and returns whether it
    did; ``checkpoint(force=True, wait=True)`` writes the snapshot and copies it to storage at once.
    Wrapped, every trial is in a stored snapshot while still PENDING, though the trials (one at a
    time) end well within Tune's snapshot period."""
    import ray
    from ray import tune
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.search import ConcurrencyLimiter, SearchGenerator

    from search.tune.settle import newest_state

    pending: list[set[str]] = []

    def seen(experiment: str, staging: str) -> None:
        import pyarrow.fs

        path = newest_state(pyarrow.fs.LocalFileSystem(), staging)
        trials = [compat.read_state_trial(e)[0] for e in compat.state_trial_entries(json.loads(Path(path).read_text()))]
        pending.append({t["trial_id"] for t in trials if t["status"] == "PENDING"})

    def trainable(config: dict[str, Any]) -> None:
        tune.report({"m": 0.5, "epoch": 1})

    compat.snapshot_each_new_trial()
    compat.snapshot_each_new_trial()  # idempotent: wrapped once
    assert getattr(TuneController._update_trial_queue, compat.NEW_TRIAL_SNAPSHOT_ATTR)
    assert not getattr(TuneController._update_trial_queue.__wrapped__, compat.NEW_TRIAL_SNAPSHOT_ATTR, False)
    compat.after_experiment_snapshot(seen)
    ray.init(num_cpus=1, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        searcher = ConcurrencyLimiter(_Probe(space=_space, metric="m", mode="max"), max_concurrent=1)
        grid = tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=SearchGenerator(searcher), num_samples=3),
                          run_config=tune.RunConfig(name="exp", storage_path=str(tmp_path), verbose=0)).fit()
    finally:
        getattr(TuneController.save_to_dir, compat.SNAPSHOT_HOOKS_ATTR).remove(seen)
        ray.shutdown()
    ids = {r.metrics["trial_id"] for r in grid}
    assert len(ids) == 3 and ids <= set().union(*pending), (ids, pending)


def test_route_raylet_messages(capsys):
    """``ray._private.worker.print_to_stdstream(data, ignore_prefix)`` is what Ray's
    ``listen_error_messages`` thread calls (by its module-global name) for a raylet's messages,
    pid ``raylet``; routed, they go to the stream and the trial workers' output as before."""
    import io

    from ray._private import worker

    assert "print_to_stdstream" in worker.listen_error_messages.__code__.co_names
    assert list(inspect.signature(worker.print_to_stdstream).parameters) == ["data", "ignore_prefix"]
    original = worker.print_to_stdstream
    log, other = io.StringIO(), io.StringIO()
    try:
        compat.route_raylet_messages(other)
        compat.route_raylet_messages(log)  # again: the stream changes, the wrapper stays one
        assert worker.print_to_stdstream.__wrapped__ is original
        worker.print_to_stdstream({"lines": ["Raylet is terminated.\n    [state-dump] x"], "pid": "raylet",
                                   "is_err": False}, ignore_prefix=False)
        worker.print_to_stdstream({"lines": ["E gcs_placement_group_scheduler.cc:273: Failed"], "pid": "gcs_server",
                                   "is_err": True}, ignore_prefix=False)
        worker.print_to_stdstream({"lines": ["a trial's line"], "pid": 4242, "ip": "127.0.0.1", "is_err": False,
                                   "task_name": "t", "actor_name": "", "job": "01"}, ignore_prefix=False)
    finally:
        worker.print_to_stdstream = original
    assert log.getvalue() == ("(raylet) Raylet is terminated.\n    [state-dump] x\n"
                              "(gcs_server) E gcs_placement_group_scheduler.cc:273: Failed\n") and other.getvalue() == ""
    out = capsys.readouterr()
    assert "a trial's line" in out.out and "Raylet" not in out.out + out.err and "gcs_" not in out.out + out.err
