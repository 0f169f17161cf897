"""The trial body without Ray: epoch reports, failures, checkpoints that resume exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from search.select.results import TrialResult, error_reason, pareto_front, ranked
from search.tune.progress import ProgressLine, format_duration
from trainables.metrics import METRICS
from trainables.registry import METHODS
from trainables.trainable import TRAINABLES, Trial, TrialFailure, check_finite, summarize
from trainables.trial_data import fold_splits, prepare, with_splits


def test_summarize_means_std_and_final_folds():
    parts = [{"loss": 1.0, "loss_cls": 0.5}, {"loss": 3.0, "loss_cls": 1.5}]
    metrics = [{m: 0.6 for m in METRICS}, {m: 0.8 for m in METRICS}]
    mid = summarize(2, parts, metrics, final=False)
    assert mid["epoch"] == 2 and mid["loss"] == 2.0 and mid["loss_cls"] == 1.0
    assert mid["macro_f1"] == pytest.approx(0.7) and mid["macro_f1_std"] == pytest.approx(0.1)  # population std
    assert "final" not in mid and not any(k.startswith("fold") for k in mid)
    end = summarize(3, parts, metrics, final=True)
    assert end["final"] is True
    assert end["fold0_auroc"] == 0.6 and end["fold1_auroc"] == 0.8
    assert {f"fold{k}_{m}" for k in (0, 1) for m in METRICS} <= set(end)


def test_check_finite_names_the_part():
    check_finite({"loss": 1.0}, 1, 0)
    with pytest.raises(TrialFailure, match=r"epoch 4, fold 2: loss_rc=nan"):
        check_finite({"loss": 1.0, "loss_rc": float("nan")}, 4, 2)


def test_fold_splits_kfold_and_holdout():
    labels = np.repeat([0, 1, 2], 10)
    folds = fold_splits(labels, 5, seed=0)
    assert len(folds) == 5
    assert sorted(np.concatenate([va for _, va in folds]).tolist()) == list(range(30))
    assert [va.tolist() for _, va in folds] == [va.tolist() for _, va in fold_splits(labels, 5, seed=0)]
    (tr, va), = fold_splits(labels, 0, seed=0, val_fraction=0.2)
    assert len(va) == 6 and len(set(tr) | set(va)) == 30


def test_splits_made_ahead_are_the_ones_a_trial_would_make(breast):
    ahead = with_splits(breast, 3, [3, 8], 0.2)
    assert ahead.data is breast.data and ahead.fingerprint == breast.fingerprint and not breast.splits
    for seed in (3, 8, 9):  # 9: not made ahead, made on the spot
        made = ahead.fold_splits(3, seed, 0.2)
        assert len(made) == 3
        for (tr, va), (tr2, va2) in zip(made, fold_splits(breast.data.labels, 3, seed, 0.2)):
            assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    config = _config(epochs=1)
    assert Trial("baseline", config, ahead).step() == Trial("baseline", config, breast).step()


WORKER = """
import pickle, sys
from trainables.trainable import Trial
config, data = pickle.loads(sys.stdin.buffer.read())
Trial("baseline", config, data).step()
print(",".join(m for m in ("sklearn", "imblearn", "scipy") if m in sys.modules))
"""


def test_a_trial_worker_with_its_splits_made_ahead_imports_no_scikit_learn(breast):
    """A trial worker imports what a trial needs (about 1.4 s of CPU less per worker: every
    ``Tuner.fit`` starts its own): the search's and the confirmation's splits come made ahead, and
    imbalanced-learn is imported by the resamplers that use it."""
    import pickle

    config = _config(epochs=1)
    data = with_splits(breast, config["folds"], [config["seed"]], 0.2)
    done = subprocess.run([sys.executable, "-c", WORKER], input=pickle.dumps((config, data)), capture_output=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().strip() == "", f"imported in the worker: {done.stdout.decode().strip()}"


def test_one_trainable_per_family():
    assert set(TRAINABLES) == set(METHODS)
    assert TRAINABLES["omnifuse"].__name__ == "fusetune_omnifuse"
    import trainables.trainable as mod

    assert mod.fusetune_omnifuse is TRAINABLES["omnifuse"]  # importable: pickled by reference


@pytest.fixture(scope="module")
def breast(data_dir):
    return prepare("breast-tcga", {})


def _config(**over):
    return {"method": "baseline", "data": "breast-tcga", "seed": 3, "folds": 2, "epochs": 3, "hidden": 32,
            "curriculum": "climd", "lr": 1e-3, **over}


def test_checkpoint_resumes_exactly(breast, tmp_path):
    """Train 3 epochs straight, or 2 + checkpoint + restore in a new Trial + 1: identical report."""
    torch.set_num_threads(1)
    straight = Trial("baseline", _config(), breast)
    reports = [straight.step() for _ in range(3)]
    assert [r["epoch"] for r in reports] == [1, 2, 3] and reports[-1]["final"]

    first = Trial("baseline", _config(), breast)
    first.step(), first.step()
    first.state(tmp_path)
    assert (tmp_path / "state.pt").is_file() and not (tmp_path / "state.pt.tmp").exists()
    resumed = Trial("baseline", _config(), breast)
    resumed.restore(tmp_path)
    assert resumed.epoch == 2
    last = resumed.step()
    for key in ("loss", *METRICS, "fold1_macro_f1"):
        assert last[key] == reports[-1][key], key


@pytest.mark.parametrize("batch_folds", [True, False])
def test_a_finished_trials_checkpoint_holds_the_weights_without_the_optimizer(breast, tmp_path, batch_folds):
    """Once every epoch is done nothing steps again: the checkpoint leaves out the optimizer's
    moments (twice the weights) and still restores a model that predicts the same."""
    torch.set_num_threads(1)
    (tmp_path / "mid").mkdir(), (tmp_path / "end").mkdir()
    trial = Trial("baseline", _config(epochs=2), breast, batch_folds=batch_folds)
    trial.step()
    trial.state(tmp_path / "mid")
    trial.step()
    trial.state(tmp_path / "end")
    mid = torch.load(tmp_path / "mid" / "state.pt", weights_only=True)
    end = torch.load(tmp_path / "end" / "state.pt", weights_only=True)
    assert all("optimizer" in f for f in mid["folds"]) and not any("optimizer" in f for f in end["folds"])
    assert (tmp_path / "end" / "state.pt").stat().st_size < 0.5 * (tmp_path / "mid" / "state.pt").stat().st_size
    again = Trial("baseline", _config(epochs=2), breast, batch_folds=batch_folds)
    again.restore(tmp_path / "end")
    assert again.epoch == 2
    val = trial.trainers[0].val
    np.testing.assert_array_equal(again.trainers[0].predict_proba(val), trial.trainers[0].predict_proba(val))


def test_restore_applies_a_perturbed_learning_rate(breast, tmp_path):
    """PBT restarts a trial from another's checkpoint with a new lr: the optimizer must use it."""
    donor = Trial("baseline", _config(), breast)
    donor.step()
    donor.state(tmp_path)
    clone = Trial("baseline", _config(lr=5e-4), breast)
    clone.restore(tmp_path)
    assert all(g["lr"] == 5e-4 for t in clone.trainers for g in t.optimizer.param_groups)


def test_nan_loss_fails_the_trial(breast):
    trial = Trial("baseline", _config(lr=1e30, curriculum="none"), breast)
    with pytest.raises(TrialFailure, match="non-finite training loss at epoch 1"):
        trial.step()


def test_error_reason_finds_the_trial_failure_line():
    text = "Traceback (most recent call last):\n  File x\ntrainables.trainable.TrialFailure: epoch 2: ValueError: bad\n job_id=1"
    assert error_reason(text) == "epoch 2: ValueError: bad"
    assert error_reason("RuntimeError: boom") == "RuntimeError: boom"


def _row(tid, status="TERMINATED", final=True, **metrics):
    return TrialResult(tid, status, {}, [{"final": final, **metrics}])


def test_ranking_and_pareto_front():
    rows = [_row("a", macro_f1=0.7, macro_f1_std=0.05), _row("b", macro_f1=0.8, macro_f1_std=0.10),
            _row("c", macro_f1=0.6, macro_f1_std=0.20), _row("d", final=False, macro_f1=0.9, macro_f1_std=0.0),
            _row("e", status="ERROR", macro_f1=0.95, macro_f1_std=0.0)]
    assert [r.trial_id for r in ranked(rows, "macro_f1", "max")] == ["b", "a", "c"]   # complete trials only
    assert [r.trial_id for r in ranked(rows, "macro_f1", "min")] == ["c", "a", "b"]
    assert pareto_front(rows, ("macro_f1", "macro_f1_std"), ("max", "min")) == {"a", "b"}  # c is dominated by a


class _T:
    def __init__(self, tid, status, it, value=None):
        self.trial_id, self.status = tid, status
        self.last_result = {"training_iteration": it, "epoch": it}
        if value is not None:
            self.last_result.update(macro_f1=value, macro_f1_std=0.01)


def test_progress_line():
    p = ProgressLine(total=4, epochs=10, metric="macro_f1", mode="max")
    trials = [_T("a", "TERMINATED", 10, 0.7), _T("b", "ERROR", 2), _T("c", "RUNNING", 5, 0.8), _T("d", "PENDING", 0)]
    line = p.line(trials, elapsed=34.0)
    assert line.startswith("[0:00:34] trials 2/4 done | 1 running | 1 failed")
    assert "best so far macro_f1 0.8000 ± 0.0100 (c, epoch 5)" in line
    worse = [_T("a", "TERMINATED", 10, 0.7), _T("b", "ERROR", 2), _T("c", "RUNNING", 6, 0.6), _T("d", "PENDING", 0)]
    assert "best so far macro_f1 0.8000 ± 0.0100 (c, epoch 5)" in p.line(worse, 36.0)  # monotone: c's epoch 6 is worse
    # 17 epochs trained in 34 s; budget 40, 8 given back by the failed trial -> 15 left -> 30 s
    assert line.endswith("ETA 0:00:30")
    assert ProgressLine(total=1, epochs=1, metric="macro_f1", mode="max").line([_T("a", "PENDING", 0)], 1.0).endswith("ETA -")
    # Tune calls on_trial_complete before it marks the trial TERMINATED
    assert "trials 3/4 done | 0 running" in p.line(trials, 40.0, ended={"c": "TERMINATED"})
    assert format_duration(3725.4) == "1:02:05"


def test_trial_data_is_loaded_once_per_process(breast):
    assert prepare("breast-tcga", {}) is breast
    assert breast.raw_kinds == ("vector",) and len(breast.data) == 150  # the fixed train split only


def test_report_cadence_milestones_every_n_timed_and_last():
    from trainables.trainable import ReportCadence

    now = [0.0]
    c = ReportCadence(20, at=[5, 15], every=0, seconds=0.0, checkpoint_every=5, clock=lambda: now[0])
    assert [e for e in range(1, 21) if c.due(e)] == [5, 15, 20]
    c = ReportCadence(20, at=[], every=4, seconds=0.0, checkpoint_every=5)
    assert [e for e in range(1, 21) if c.due(e)] == [4, 8, 12, 16, 20]
    c = ReportCadence(20, at=[], every=0, seconds=10.0, checkpoint_every=5, clock=lambda: now[0])
    due = []
    for e in range(1, 21):
        now[0] += 3.0  # an epoch takes 3 s: a timed report every 4th epoch
        if c.due(e):
            due.append(e)
            c.reported()
    assert due == [4, 8, 12, 16, 20]
    legacy = ReportCadence.from_config({"checkpoint_every": 1}, 3)  # a config without the keys
    assert all(legacy.due(e) for e in (1, 2, 3)) and legacy.checkpoint_every == 1


def test_repetitions_in_one_trial_are_the_trials_of_each_repetition(breast):
    """The confirmation stage's job: R repetitions x k folds in one lockstep (R x k batched members)
    give each repetition the scores and probabilities a trial of that repetition's seed gives."""
    from search.select.confirm import run_job

    torch.set_num_threads(1)
    config = {**_config(epochs=2), "folds": 2}
    job = {"candidate": "t", "kind": "model", "config": config, "folds": 2, "val_fraction": 0.2}
    together = run_job({"job": {**job, "repeats": [[0, 1003], [1, 2003]]}}, breast)
    alone = {r: run_job({"job": {**job, "repeats": [[r, seed]]}}, breast)[r] for r, seed in ((0, 1003), (1, 2003))}
    assert sorted(together) == [0, 1]
    for r in (0, 1):
        (report, probs), (report_alone, probs_alone) = together[r], alone[r]
        assert report["n_folds"] == 2 and report.keys() == report_alone.keys()
        assert all(report[k] == pytest.approx(report_alone[k], abs=1e-6) for k in report)
        assert np.array_equal(probs.index, probs_alone.index)
        assert np.allclose(probs.probs, probs_alone.probs, atol=1e-6)
    assert not np.array_equal(together[0][1].index, together[1][1].index)  # two different repetitions
    # an older fusetune's job (one repetition, repeat/seed) still runs
    assert run_job({"job": {**job, "repeat": 0, "seed": 1003}}, breast)[0][0] == pytest.approx(together[0][0], abs=1e-6)


def test_a_job_scores_its_last_epoch_as_a_trial_evaluating_every_epoch_does(breast):
    """A confirmation job evaluates after its last epoch only (nothing stops it early): the same
    fold models and scores as a trial that evaluates every epoch (evaluation draws nothing), batched
    or fold after fold."""
    from search.select.confirm import run_job

    torch.set_num_threads(1)
    config = {**_config(epochs=3), "folds": 2}
    job = {"candidate": "t", "kind": "model", "config": config, "folds": 2, "val_fraction": 0.2,
           "repeats": [[0, 1003]]}
    report, probs = run_job({"job": job}, breast)[0]
    for batch_folds in (True, False):
        every = Trial("baseline", {**config, "seed": 1003, "val_fraction": 0.2}, breast, batch_folds=batch_folds)
        last_only = Trial("baseline", {**config, "seed": 1003, "val_fraction": 0.2}, breast, batch_folds=batch_folds)
        for epoch in (1, 2, 3):
            last = every.step()
            quiet = last_only.step(evaluate=epoch == 3)
            assert (set(quiet) & set(METRICS) == set()) == (epoch < 3)
        assert all(quiet[m] == last[m] for m in METRICS)
        assert np.array_equal(last_only.out_of_fold()["probs"], every.out_of_fold()["probs"])
        if batch_folds:
            assert all(report[m] == last[m] for m in METRICS)
            assert np.array_equal(probs.probs, every.out_of_fold()["probs"])


def test_repetitions_fold_after_fold_where_a_method_does_not_batch(breast):
    torch.set_num_threads(1)
    config = {**_config(epochs=2), "folds": 2}
    together = Trial("baseline", config, breast, seeds=[5, 7], batch_folds=False)
    alone = [Trial("baseline", {**config, "seed": s}, breast, batch_folds=False) for s in (5, 7)]
    assert together.batched is None and len(together.trainers) == 4
    for _ in range(2):
        got, each = together.step(), [t.step() for t in alone]
    for r, report in enumerate(each):
        for j in range(2):
            assert got[f"fold{2 * r + j}_macro_f1"] == pytest.approx(report[f"fold{j}_macro_f1"], abs=1e-9)
        assert np.array_equal(together.out_of_fold(r)["probs"], alone[r].out_of_fold()["probs"])
