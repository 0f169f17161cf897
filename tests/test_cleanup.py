"""search.cleanup: an ended search keeps only the top trials' checkpoints; an interrupted one keeps all."""

from __future__ import annotations

from pathlib import Path

from search.cleanup import prune_checkpoints
from search.results import TrialResult


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
    from search.cleanup import PruneCheckpoints

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
