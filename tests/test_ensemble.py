"""Ensemble selection (search.select.ensemble) against hand-computed cases, its out-of-fold inputs
(search.select.oof) and its confirmation on fresh folds (search.select.verdict.ensemble_candidate)."""

import numpy as np
import pytest

from search.prepare.config import SearchConfig
from search.prepare.errors import UsageError
from search.prepare.resolve import resolve
from search.select import ensemble, oof, verdict
from trainables.metrics import METRICS, classification_metrics

Y = np.array([1, 0, 1, 0])
# P(class 1) of three candidates on four samples of one fold; accuracy by hand:
#   A [.9 .6 .7 .4] -> predicts 1 1 1 0: right, wrong, right, right = 0.75
#   B [.3 .0 .2 .3] -> predicts 0 0 0 0: wrong, right, wrong, right = 0.50
#   C [.2 .9 .2 .8] -> predicts 0 1 0 1: all wrong                  = 0.00
P1 = {"A": [0.9, 0.6, 0.7, 0.4], "B": [0.3, 0.0, 0.2, 0.3], "C": [0.2, 0.9, 0.2, 0.8]}


def pool(order=("A", "B", "C")) -> ensemble.Pool:
    probs = np.stack([np.stack([1 - np.array(P1[n]), np.array(P1[n])], axis=1) for n in order])
    return ensemble.Pool(tuple(order), probs, Y, np.zeros(4, dtype=int))


def test_hand_computed_selection_with_sorted_initialisation_and_replacement():
    # sorted initialisation (init 2): A alone 0.75; (A+B)/2 = [.6 .3 .45 .35] -> right, right, wrong,
    # right = 0.75, a tie, so the smaller start {A}.
    # step 1: +A -> A = 0.75; +B -> 0.75; +C -> (A+C)/2 = [.55 .75 .45 .6] = 0.25. A and B tie: the
    #   member already in wins -> {A: 2} (0.75, not better than the start: not kept yet).
    # step 2: +A -> 0.75; +B -> (2A+B)/3 = [.7 .4 .53 .37] -> all right = 1.00; +C -> (2A+C)/3 =
    #   [.67 .7 .53 .53] = 0.50 -> {A: 2, B: 1} = 1.00, kept.
    # steps 3-4 cannot beat 1.00: the earliest best is kept -> weights 2/3, 1/3.
    for order in (("A", "B", "C"), ("C", "B", "A")):  # the candidates' own scores rank them, not the input order
        chosen = ensemble.select(pool(order), "accuracy", "max", size=3, init=2, iterations=4, bags=1)
        assert chosen.members == ("A", "B")
        assert chosen.weights == pytest.approx((2 / 3, 1 / 3))
        assert chosen.score == pytest.approx(1.0)
    # one iteration stops at {A: 2}, which is no better than A alone: A alone is what is kept
    single = ensemble.select(pool(), "accuracy", "max", size=3, init=2, iterations=1, bags=1)
    assert single.members == ("A",) and single.weights == (1.0,) and single.score == pytest.approx(0.75)


def test_sorted_initialisation_starts_from_the_best_average_of_the_top_n():
    # with C = [.8 .1 .9 .1] (all right, 1.00) the ranking is C, A, B; C alone already scores 1.00,
    # the average of C and A ([.85 .35 .8 .25], 1.00) ties it: the start is {C} and nothing beats it
    p = pool()
    probs = p.probs.copy()
    probs[2] = np.stack([1 - np.array([0.8, 0.1, 0.9, 0.1]), np.array([0.8, 0.1, 0.9, 0.1])], axis=1)
    chosen = ensemble.select(ensemble.Pool(p.names, probs, p.labels, p.fold), "accuracy", "max", size=3, init=3,
                             iterations=5, bags=1)
    assert chosen.members == ("C",) and chosen.weights == (1.0,)


def test_minimised_metric_size_cap_and_bagging_are_seeded():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    fold = np.arange(60) % 3
    probs = rng.dirichlet(np.ones(3), size=(8, 60))
    probs[:, np.arange(60), labels] += rng.uniform(0, 1.5, size=(8, 60))  # better than chance, unequally
    probs /= probs.sum(axis=2, keepdims=True)
    p = ensemble.Pool(tuple(f"t{i}" for i in range(8)), probs, labels, fold)
    for bag_over in ensemble.BAG_OVER:
        a = ensemble.select(p, "macro_f1", "max", size=2, bags=10, bag_over=bag_over, seed=3)
        b = ensemble.select(p, "macro_f1", "max", size=2, bags=10, bag_over=bag_over, seed=3)
        assert a == b and len(a.members) <= 2 and sum(a.weights) == pytest.approx(1.0)
    assert a.score == pytest.approx(ensemble.fold_score("macro_f1", labels, a.combine(dict(zip(p.names, probs))), fold))
    best_single = max(ensemble.fold_score("macro_f1", labels, probs[i], fold) for i in range(8))
    plain = ensemble.select(p, "macro_f1", "max", size=5, bags=1)
    assert plain.score >= best_single  # the plain selection never keeps something worse than its start
    with pytest.raises(ValueError):
        ensemble.select(p, "macro_f1", "max", size=0)


def test_metric_value_is_classification_metrics():
    rng = np.random.default_rng(1)
    for n_classes in (2, 4):
        labels = rng.integers(0, n_classes, 30)
        probs = rng.dirichlet(np.ones(n_classes), 30)
        full = classification_metrics(labels, probs)
        for m in METRICS:
            assert ensemble.metric_value(m, labels, probs) == pytest.approx(full[m], abs=1e-12)


def test_pool_aligns_candidates_on_the_samples_they_share(tmp_path):
    a = oof.OutOfFold(np.array([2, 0, 1]), np.array([1, 0, 0]), np.array([1, 0, 1]), np.eye(2)[[1, 0, 1]] * 1.0)
    b = oof.OutOfFold(np.array([0, 1, 2, 3]), np.array([0, 0, 1, 1]), np.array([0, 1, 1, 0]),
                      np.full((4, 2), 0.5))
    oof.write(str(tmp_path), "t1", a)
    back = oof.read(str(tmp_path), "t1")
    assert np.array_equal(back.index, a.index) and np.array_equal(back.probs, a.probs)
    assert oof.read(str(tmp_path), "t2") is None
    p = ensemble.Pool.of({"t1": back, "t2": b})
    assert p.labels.tolist() == [0, 1, 1] and p.fold.tolist() == [0, 0, 1] and p.probs.shape == (2, 3, 2)
    assert p.probs[0, :, 1].tolist() == [0.0, 1.0, 1.0]
    bad = oof.OutOfFold(np.array([0, 1, 2]), np.array([1, 1, 1]), np.array([0, 1, 1]), np.full((3, 2), 0.5))
    with pytest.raises(ValueError, match="not on the search's folds"):
        ensemble.Pool.of({"t1": a, "x": bad})
    (tmp_path / "oof" / "t3.npz").write_bytes(b"\x80\x04not numpy")  # a pickle-looking payload is never unpickled
    with pytest.raises(ValueError, match="t3.npz"):
        oof.read(str(tmp_path), "t3")


def test_ensemble_is_confirmed_on_its_members_fresh_fold_probabilities():
    scheme = verdict.Scheme(2, 0.2, (1000, 2000), "accuracy", "f" * 64)
    labels = np.array([1, 0, 1, 0])
    members = {}
    for name, p1 in (("A", [0.9, 0.6, 0.7, 0.4]), ("B", [0.3, 0.0, 0.2, 0.3])):
        c = verdict.Candidate(name, "model", {"id": name})
        probs = np.stack([1 - np.array(p1), np.array(p1)], axis=1)
        c.probs = {r: oof.OutOfFold(np.arange(4), np.array([0, 0, 1, 1]), labels, probs) for r in range(2)}
        members[name] = c
    chosen = ensemble.Ensemble(("A", "B"), (2 / 3, 1 / 3), 0.9)
    c = verdict.ensemble_candidate(chosen, members, scheme)
    assert not c.error and c.kind == "ensemble" and c.search_value == 0.9 and c.is_model
    assert c.folds["accuracy"].tolist() == [1.0, 1.0, 1.0, 1.0]  # (2A+B)/3 is right on every sample
    del members["B"].probs[1]
    assert "no probabilities" in verdict.ensemble_candidate(chosen, members, scheme).error


def test_ensemble_options_checked_before_anything_starts():
    base = {"space": "baseline", "data": "breast-tcga"}
    assert resolve(SearchConfig(**base)).ensemble == "trials+references"
    assert resolve(SearchConfig(**base, confirm_repeats=0)).ensemble == "off"
    assert resolve(SearchConfig(**base, metric=("loss",))).ensemble == "off"
    for given, expected in (({"ensemble_size": 0}, "--ensemble-size 0: expected an integer >= 1"),
                            ({"ensemble_size": -2}, "--ensemble-size -2: expected an integer >= 1"),
                            ({"ensemble_size": True}, "--ensemble-size True: expected an integer >= 1"),
                            ({"ensemble": "all"}, "--ensemble all: expected one of off, trials, trials"),
                            ({"ensemble": "trials", "confirm_repeats": 0}, "unconfirmed and never promoted"),
                            ({"ensemble": "trials", "metric": ("loss",)}, "first --metric")):
        with pytest.raises(UsageError, match=expected) as err:
            resolve(SearchConfig(**base, **given))
        assert "\n" not in str(err.value)


def test_bad_ensemble_options_exit_2_in_one_line(capsys):
    from search import run

    for argv in (["--ensemble-size", "0"], ["--ensemble", "everything"], ["--ensemble", "trials", "--confirm-repeats", "0"]):
        assert run.main(["--space", "baseline", "--data", "breast-tcga", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--ensemble" in err[0], err
