"""search.cleanup: an ended search keeps only the top trials' checkpoints; an interrupted one keeps all."""

from __future__ import annotations

from pathlib import Path

from search.cleanup import prune_checkpoints
from search.results import TrialRow


def _trial(root: Path, tid: str, status: str = "TERMINATED", checkpoints: int = 1) -> TrialRow:
    folder = root / f"fusetune_baseline_{tid}"
    folder.mkdir(parents=True)
    (folder / "result.json").write_text('{"epoch": 1}\n')
    for k in range(checkpoints):
        ck = folder / f"checkpoint_{k:06d}"
        ck.mkdir()
        (ck / "state.pt").write_bytes(b"x" * 1000)
    latest = str(folder / f"checkpoint_{checkpoints - 1:06d}") if checkpoints else None
    return TrialRow(tid, status, {}, {"final": True}, 1.0, "", latest)


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
