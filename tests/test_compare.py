"""search.compare: best configuration per study, mean ± std, paired t-test over folds, refusals."""

from __future__ import annotations

import csv
import math
import subprocess
import sys

import pytest

from search.compare import leaderboard, main, resolve
from search.prepare.errors import UsageError
from search.select.results import load_study
from studies import ROOT, fake_study

P = {"lr": 1e-3, "weight_decay": 1e-4, "batch_size": 32, "hidden": 128, "dropout": 0.1, "imbalance": "none"}


def _study(storage, name, best_folds, *, worse=(0.2, 0.3, 0.25), **kw):
    return fake_study(storage, name, [
        {"params": {**P, "lr": 1e-4}, "curve": [0.1, sum(worse) / 3], "folds": list(worse)},
        {"params": P, "curve": [0.3, sum(best_folds) / 3], "folds": list(best_folds)},
        {"params": {**P, "lr": 5e-3}, "curve": [0.99], "folds": None},  # stopped early: never a candidate
    ], **kw)


def test_corrected_resampled_t_test_by_hand(tmp_path):
    _study(tmp_path, "a", (0.70, 0.80, 0.75))
    _study(tmp_path, "b", (0.60, 0.72, 0.70))
    entries = leaderboard(resolve(["a", "b"], tmp_path), "macro_f1", reference="a")
    assert [e.study.name for e in entries] == ["a", "b"]
    assert entries[0].trial.trial_id == "aaaaa_00001" and entries[0].note == "reference"
    b = entries[1]
    d = [0.60 - 0.70, 0.72 - 0.80, 0.70 - 0.75]
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    assert mean / (sd / math.sqrt(3)) == pytest.approx(-5.276, abs=1e-3)  # the plain paired t, which overstates
    # Nadeau-Bengio: 3-fold CV, n_test/n_train = 1/2, so the variance of the mean is (1/3 + 1/2) sd^2
    t = mean / math.sqrt((1 / 3 + 1 / 2) * sd * sd)
    p = 1 - abs(t) / math.sqrt(t * t + 2)  # two-sided p of Student's t with 2 degrees of freedom
    assert b.diff == pytest.approx(mean) and b.t == pytest.approx(t) and b.p == pytest.approx(p)
    assert b.t == pytest.approx(-3.337, abs=1e-3) and b.p == pytest.approx(0.0793, abs=1e-3)


def test_identical_folds_and_reference_choice(tmp_path):
    _study(tmp_path, "a", (0.70, 0.80, 0.75))
    _study(tmp_path, "c", (0.70, 0.80, 0.75))
    entries = leaderboard(resolve(["a", "c"], tmp_path), "macro_f1", reference="c")
    ref = next(e for e in entries if e.note == "reference")
    other = next(e for e in entries if e.note != "reference")
    assert ref.study.name == "c" and other.p is None and other.note == "identical on every fold"
    with pytest.raises(UsageError, match="--reference z"):
        leaderboard(resolve(["a", "c"], tmp_path), "macro_f1", reference="z")


@pytest.mark.parametrize("kw, what", [({"fingerprint": "e" * 64}, "data fingerprint"), ({"folds": 5}, "folds"),
                                      ({"seed": 1}, "seed")])
def test_refuses_different_data_or_folds(tmp_path, capsys, kw, what):
    _study(tmp_path, "a", (0.70, 0.80, 0.75))
    _study(tmp_path, "x", (0.70, 0.80, 0.75), **kw)
    with pytest.raises(UsageError, match=what):
        leaderboard(resolve(["a", "x"], tmp_path), "macro_f1")
    assert main(["a", "x", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and what in err and "same data and folds" in err


def test_cli_writes_markdown_and_csv(tmp_path):
    _study(tmp_path, "a", (0.70, 0.80, 0.75))
    _study(tmp_path, "b", (0.80, 0.85, 0.90))
    out = tmp_path / "cmp"
    proc = subprocess.run([sys.executable, "-m", "search.compare", "a", "b", "--storage", str(tmp_path), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["rank", "study", "space"]
    assert lines[1].split()[1] == "b" and "0.8500 ± 0.0408" in lines[1]  # best first; population std over folds
    rows = list(csv.DictReader((out / "macro_f1-a-vs-b.csv").open()))
    assert [r["study"] for r in rows] == ["b", "a"] and rows[1]["p_corrected_t"] == "reference"
    assert float(rows[0]["p_corrected_t"]) < 1 and rows[0]["diff_vs_reference"] == "+0.1000"
    md = (out / "macro_f1-a-vs-b.md").read_text()
    assert "| rank | study |" in md and "corrected resampled t-test over the paired folds against `a`" in md


def test_space_name_picks_its_latest_study_and_unknown_names_fail(tmp_path, capsys):
    _study(tmp_path, "a", (0.70, 0.80, 0.75))
    assert [s.name for s in resolve(["baseline"], tmp_path)] == ["a"]
    assert main(["a", "nope", "--storage", str(tmp_path)]) == 2
    assert "nope: neither a study" in capsys.readouterr().err
    with pytest.raises(UsageError, match="--metric"):
        leaderboard([load_study("a", tmp_path)], "f2")
