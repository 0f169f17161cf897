"""The benchmarks' accounting (default suite) and every benchmark's ``--quick`` run (slow)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from search.select.results import StudyResults, TrialResult

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import search_efficiency  # noqa: E402


def trial(tid: str, start: int, values: list[float], final: bool) -> TrialResult:
    """A trial that reported one epoch per second from ``start``; ``final`` on its last report."""
    history = [{"epoch": e, "timestamp": start + e, "macro_f1": v} for e, v in enumerate(values, start=1)]
    if final:
        history[-1]["final"] = True
    return TrialResult(tid, "TERMINATED", {}, history)


def test_curve_counts_trial_epochs_and_only_finished_trials():
    study = StudyResults("s", Path("."), [
        trial("a", 0, [0.5, 0.6, 0.7], final=True),    # epochs at t = 1, 2, 3
        trial("b", 0, [0.9], final=False),             # stopped early at t = 1: never a candidate
        trial("c", 3, [0.4, 0.8, 0.75], final=True),   # t = 4, 5, 6; its final value counts, not its best epoch
    ])
    points = search_efficiency.curve(study)
    assert [spent for spent, _ in points] == list(range(1, 8))
    best = [b for _, b in points]
    # order (t, trial): a1 b1 a2 a3 c1 c2 c3; a is done after 4 trial-epochs, c after 7
    assert best[:3] == [float("-inf")] * 3
    assert best[3:] == [0.7, 0.7, 0.7, 0.75]
    assert search_efficiency.spent_to_reach(points, 0.75) == 7
    assert search_efficiency.spent_to_reach(points, 0.8) is None
    assert search_efficiency.best_at(points, 5) == 0.7


QUICK = [
    ("search_efficiency.py", []),
    ("reproduction.py", []),
    ("robustness.py", []),
    ("trial_memory.py", []),
    ("concurrency.py", []),
    ("throughput.py", []),
    ("encoder_cache.py", []),
    ("methods_breast_tcga.py", []),
    ("token_models_synth.py", []),
    ("attribute_missing.py", []),
    ("fusion_claims.py", []),
    ("batched_folds.py", []),
    ("nested_tuning.py", []),
    ("ensembles.py", []),
]


TIMEOUTS = {"reproduction.py": 2400}
"""Seconds; reproduction's quick mode runs 9 small searches (28 min on a heavily loaded 2-core machine)."""


@pytest.mark.slow
@pytest.mark.parametrize("script, extra", QUICK, ids=[s for s, _ in QUICK])
def test_benchmark_quick_mode_prints_a_table(script, extra, tmp_path, data_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "FUSETUNE_CACHE_DIR": str(tmp_path / "cache")}
    storage = ["--storage", str(tmp_path / "searches")] if script in ("search_efficiency.py", "reproduction.py",
                                                                       "robustness.py") else []
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", *storage, *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUTS.get(script, 900))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "|---" in proc.stdout


def test_reproduction_variants_are_whole_points_or_say_why_not():
    import reproduction

    ok, missing = reproduction.valid_points("climd", [("default", {}), ("asc", {"difficulty_order": "asc"}),
                                                      ("bad", {"difficulty_order": "sideways"}), ("new", {"zz": 1})])
    assert [label for label, _ in ok] == ["default", "asc"]
    assert ok[1][1]["difficulty_order"] == "asc" and ok[1][1]["gamma"] == ok[0][1]["gamma"]
    assert dict(missing) == {"bad": "difficulty_order='sideways' outside choice {desc, asc}",
                             "new": "'zz' is not a dimension of space climd"}
