"""search.select.results: the one reader of a search (rows from Ray's state or from the folder, one
completeness rule, one value rule, one ranking), with hand-made study folders."""

from __future__ import annotations

import csv
import json

from search.select.results import (
    CONFIRMATION_CSV,
    RESULTS_CSV,
    TrialResult,
    load_study,
    ranked,
)
from search.select.results_csv import csv_text
from studies import fake_study


def test_value_is_a_finite_number_of_the_last_result():
    t = TrialResult("t", "TERMINATED", {}, [{"macro_f1": 0.1}, {"macro_f1": 0.5, "final": True, "auroc": float("nan"),
                                                                  "n": 3}])
    assert t.value("macro_f1") == 0.5 and t.value("n") == 3.0
    assert t.value("final") is None          # a flag is not a value
    assert t.value("auroc") is None and t.value("absent") is None
    assert t.complete
    assert not TrialResult("t", "ERROR", {}, [{"final": True}]).complete       # failed on its last report
    assert not TrialResult("t", "TERMINATED", {}, [{"epoch": 3}]).complete     # cut short by the scheduler


def test_folder_rows_skip_references_and_follow_the_confirmation(tmp_path):
    folder = fake_study(tmp_path, "s", [
        {"params": {"lr": 0.1}, "curve": [0.5, 0.6], "folds": [0.6, 0.6]},
        {"params": {"lr": 0.2}, "curve": [0.5, 0.7], "folds": [0.7, 0.7]},
        {"params": {"lr": 0.3}, "curve": [0.9]},                              # stopped early: not a candidate
        {"params": {"lr": 0.4}, "curve": [], "status": "ERROR"},              # failed before Ray made its folder
    ])
    with (folder / RESULTS_CSV).open("a", newline="") as f:                   # a reference model's row
        csv.writer(f).writerow(["reference:logreg", "REFERENCE", ""])
    ckpt = next(folder.glob("*aaaaa_00000*")) / "checkpoint_000001"
    ckpt.mkdir()
    (ckpt / "state.pt").write_bytes(b"x")
    study = load_study("s", tmp_path)
    assert [t.trial_id for t in study.trials] == [f"aaaaa_{i:05d}" for i in range(4)]   # no reference row
    assert study.trial("aaaaa_00003").status == "ERROR" and study.trial("aaaaa_00003").config["lr"] == 0.4
    assert study.trial("aaaaa_00000").checkpoint == str(ckpt)
    assert study.trial("aaaaa_00001").checkpoint is None
    assert [t.trial_id for t in study.ranked()] == ["aaaaa_00001", "aaaaa_00000"]
    assert ranked(study.trials, "macro_f1", "max") == study.ranked()          # the same rule as the driver's

    # the confirmation stage found trial 0 better on fresh folds; references and incumbents are not trials
    with (folder / CONFIRMATION_CSV).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["candidate", "kind", "trial_id", "error"])
        w.writerows([["reference:rf", "reference", "", ""], ["champion:v1", "incumbent", "", ""],
                     ["aaaaa_00000", "model", "aaaaa_00000", ""], ["paper-default", "model", "aaaaa_00001", ""]])
    study = load_study("s", tmp_path)
    assert [t.trial_id for t in study.ranked()] == ["aaaaa_00000", "aaaaa_00001"]
    assert study.best().trial_id == "aaaaa_00000"
    assert [t.trial_id for t in study.ranked("macro_f1", "min")] == ["aaaaa_00000", "aaaaa_00001"]  # by value


def test_results_csv_written_from_rows_reads_back(tmp_path):
    rows = [TrialResult("a_00000", "TERMINATED", {"lr": 0.01, "method": "baseline"},
                        [{"final": True, "epoch": 2, "macro_f1": 0.5, "time_total_s": 1.25}]),
            TrialResult("a_00001", "ERROR", {"lr": 0.1, "method": "baseline"}, [{"epoch": 1}], error="boom")]
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / RESULTS_CSV).write_text(csv_text(rows, ["lr"]))
    back = load_study("s", tmp_path).trials
    assert [(t.trial_id, t.status, t.error, t.config) for t in back] == [
        (r.trial_id, r.status, r.error, r.config) for r in rows]
    with (tmp_path / "s" / RESULTS_CSV).open(newline="") as f:
        first = next(csv.DictReader(f))
    assert (first["duration_s"], first["epochs_done"], json.loads(first["config/lr"])) == ("1.25", "2", 0.01)
