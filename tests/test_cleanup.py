"""search.select.cleanup: an ended search keeps only the top trials' checkpoints; an interrupted one keeps all."""

from __future__ import annotations

from pathlib import Path

from search.select.cleanup import prune_checkpoints
from search.select.results import TrialResult


def _trial(root: Path, tid: str, status: str = "TERMINATED", checkpoints: int = 1) -> TrialResult:
    folder = root / f"fusetune_baseline_{tid}"
    folder.mkdir(parents=True)
    (folder / "result.json").write_text('{"epoch": 1}\n')
    for k in range(checkpoints):
        ck = folder / f"checkpoint_{k:06d}"
        ck.mkdir()
        (ck / "state.pt").write_bytes(b"x" * 1000)
    latest = str(folder / f"checkpoint_{checkpoints - 1:06d}") if checkpoints else None
    return TrialResult(tid, status, {}, [{"final": True}], checkpoint=latest)


def test_an_ended_search_keeps_only_the_top_checkpoints(tmp_path):
    rows = [_trial(tmp_path, "a"), _trial(tmp_path, "b", checkpoints=2), _trial(tmp_path, "c", "ERROR"),
            _trial(tmp_path, "d", checkpoints=0)]
    pruned = prune_checkpoints(rows, {"a"}, None)
    assert pruned.folders == 3 and pruned.bytes == 3000
    assert sorted(p.parent.name for p in tmp_path.glob("*/checkpoint_*")) == ["fusetune_baseline_a"]
    # results stay
    assert len(list(tmp_path.glob("*/result.json"))) == 4


def test_an_interrupted_search_keeps_every_checkpoint(tmp_path):
    rows = [_trial(tmp_path, "a"), _trial(tmp_path, "b", "RUNNING"), _trial(tmp_path, "c", "PENDING")]
    assert prune_checkpoints(rows, set(), None).folders == 0
    assert len(list(tmp_path.glob("*/checkpoint_*"))) == 3


class _Storage:
    def __init__(self, experiment: Path, trial: Path) -> None:
        import pyarrow.fs

        self.storage_filesystem = pyarrow.fs.LocalFileSystem()
        self.experiment_fs_path, self.trial_fs_path = str(experiment), str(trial)


class _LiveTrial:
    def __init__(self, root: Path, tid: str, status: str, f1: float | None) -> None:
        self.trial_id, self.status = tid, status
        self.last_result = {"final": True, "macro_f1": f1} if f1 is not None else {"epoch": 1}
        folder = root / f"fusetune_baseline_{tid}"
        (folder / "checkpoint_000000").mkdir(parents=True)
        (folder / "checkpoint_000000" / "state.pt").write_bytes(b"x" * 10)
        self.storage = _Storage(root, folder)


def _stored_state(root: Path, statuses: dict[str, str]) -> None:
    import json

    trial_data = [[json.dumps({"trial_id": tid, "status": st}), "{}"] for tid, st in statuses.items()]
    (root / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": trial_data}))


def test_while_running_only_trials_the_stored_state_records_as_ended_lose_their_checkpoints(tmp_path):
    from search.select.cleanup import PruneCheckpoints

    trials = [_LiveTrial(tmp_path, "best", "TERMINATED", 0.9), _LiveTrial(tmp_path, "worse", "TERMINATED", 0.5),
              _LiveTrial(tmp_path, "unsaved", "TERMINATED", 0.4), _LiveTrial(tmp_path, "failed", "ERROR", None),
              _LiveTrial(tmp_path, "running", "RUNNING", None)]
    # the stored state (what --resume reads) has not seen "unsaved" end yet
    _stored_state(tmp_path, {"best": "TERMINATED", "worse": "TERMINATED", "unsaved": "RUNNING", "failed": "ERROR",
                             "running": "RUNNING"})
    pruner = PruneCheckpoints("macro_f1", "max", keep=1, interval=0.0)
    pruner.on_step_end(0, trials)
    left = {p.parent.name.rsplit("_", 1)[-1] for p in tmp_path.glob("*/checkpoint_*")}
    assert left == {"best", "unsaved", "running"} and pruner.pruned.folders == 2
    _stored_state(tmp_path, {"best": "TERMINATED", "worse": "TERMINATED", "unsaved": "TERMINATED",
                             "failed": "ERROR", "running": "RUNNING"})
    pruner.on_step_end(1, trials)
    assert {p.parent.name.rsplit("_", 1)[-1] for p in tmp_path.glob("*/checkpoint_*")} == {"best", "running"}


class _Checkpoint:
    def __init__(self, path: Path) -> None:
        self.path = str(path)


class _RunningTrial:
    """A trial with checkpoints 0..n-1, Tune's latest being ``latest``, at ``last_result_time``."""

    def __init__(self, root: Path, tid: str, n: int) -> None:
        from types import SimpleNamespace

        self.trial_id, self.status, self.last_result = tid, "RUNNING", {"epoch": 1}
        self.folder = root / f"fusetune_baseline_{tid}"
        for k in range(n):
            (self.folder / f"checkpoint_{k:06d}").mkdir(parents=True)
        self.storage = _Storage(root, self.folder)
        self.run_metadata = SimpleNamespace(last_result_time=0.0, checkpoint_manager=SimpleNamespace(
            latest_checkpoint_result=None))

    def at(self, when: float, latest: int) -> None:
        from types import SimpleNamespace

        self.run_metadata.last_result_time = when
        self.run_metadata.checkpoint_manager.latest_checkpoint_result = SimpleNamespace(
            checkpoint=_Checkpoint(self.folder / f"checkpoint_{latest:06d}"))

    def left(self) -> list[int]:
        return sorted(int(p.name.rsplit("_", 1)[1]) for p in self.folder.glob("checkpoint_*"))


def _stored_times(root: Path, times: dict[str, float]) -> None:
    import json

    data = [[json.dumps({"trial_id": tid, "status": "RUNNING"}), json.dumps({"last_result_time": when})]
            for tid, when in times.items()]
    (root / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": data}))


def test_the_checkpoint_the_stored_snapshot_points_to_survives_until_a_newer_snapshot_is_stored(tmp_path):
    from search.select.cleanup import PruneCheckpoints

    t = _RunningTrial(tmp_path, "a", 4)
    pruner = PruneCheckpoints("macro_f1", "max", keep=1, interval=0.0)
    t.at(5.0, latest=1)
    pruner.on_step_begin(0, [t])
    pruner.get_state()                     # Tune writes a snapshot: it points to checkpoint 1
    _stored_times(tmp_path, {"a": 5.0})    # ... and it reached storage
    t.at(9.0, latest=3)                    # two more checkpoints since, no snapshot yet
    pruner.on_step_end(1, [t])
    assert t.left() == [1, 2, 3]           # what a resume from the stored snapshot restores is there
    pruner.get_state()                     # a snapshot pointing to 3 is written, not yet stored
    pruner.on_step_end(2, [t])
    assert t.left() == [1, 2, 3]
    _stored_times(tmp_path, {"a": 9.0})
    pruner.on_step_end(3, [t])
    assert t.left() == [3] and pruner.pruned.folders == 3


def test_a_snapshot_this_session_did_not_see_written_keeps_every_checkpoint(tmp_path):
    from search.select.cleanup import PruneCheckpoints

    t = _RunningTrial(tmp_path, "a", 3)
    t.at(7.0, latest=2)
    _stored_times(tmp_path, {"a": 3.0})    # an older session's snapshot, pointing to we know not which
    pruner = PruneCheckpoints("macro_f1", "max", keep=1, interval=0.0)
    pruner.on_step_begin(0, [t])
    pruner.on_step_end(1, [t])
    assert t.left() == [0, 1, 2]
