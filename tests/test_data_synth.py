"""synth-clinic: parameters, controls (imbalance, missingness, unmentioned rate), determinism,
report/attribute consistency, and where the class signal lives."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from trainables.data import DataError, DatasetSpec, load_dataset
from trainables.data.synth import (
    SynthParams,
    attribute_vocabulary,
    class_sizes,
    draw_missing,
    parse_params,
    visible_groups,
)


# ---------------------------------------------------------------------------- parameters
def test_defaults_and_canonical_name():
    assert parse_params(DatasetSpec.parse("synth-clinic")) == SynthParams()
    p = parse_params(DatasetSpec.parse("synth-clinic:n=200, imbalance=2.5,seed=3"))
    assert (p.n, p.imbalance, p.seed, p.classes) == (200, 2.5, 3, 3)
    data = load_dataset("synth-clinic:n=50,imbalance=2")
    assert data.name == "synth-clinic:n=50,classes=3,imbalance=2,missing=0.3,unmentioned=0.3,noise=0.5,seed=0"
    assert data.split is None


@pytest.mark.parametrize("args, key, expected", [
    ("size=3", "size", "unknown parameter"),
    ("n=abc", "n", "an integer >= 10"),
    ("n=12.5", "n", "an integer >= 10"),
    ("n=5", "n", "an integer >= 10"),
    ("classes=1", "classes", r"an integer in \[2, 10\]"),
    ("imbalance=0.5", "imbalance", "a number >= 1"),
    ("missing=0.9", "missing", r"a number in \[0, 0.6\]"),
    ("unmentioned=-0.1", "unmentioned", r"a number in \[0, 1\]"),
    ("noise=x", "noise", r"a number in \[0, 10\]"),
    ("seed=-1", "seed", "an integer >= 0"),
    ("n=100,n=200", "n", "given twice"),
])
def test_bad_parameters_name_the_key(args, key, expected):
    with pytest.raises(DataError, match=expected) as err:
        load_dataset(f"synth-clinic:{args}")
    assert f"'{key}'" in str(err.value) and "\n" not in str(err.value)


def test_too_few_samples_for_the_imbalance():
    with pytest.raises(DataError, match="smallest class would have"):
        load_dataset("synth-clinic:n=20,imbalance=50")


# ---------------------------------------------------------------------------- controls
def test_class_sizes_hand_computed():
    # weights 1, 10^-1/2, 10^-1 -> 423.7, 134.0, 42.4 -> largest remainders 0.7 and 0.4 get the 2 left over
    assert class_sizes(600, 3, 10.0).tolist() == [424, 134, 42]
    assert class_sizes(100, 2, 1.0).tolist() == [50, 50]


@pytest.mark.parametrize("n, classes, imbalance", [(600, 3, 10), (1000, 4, 5), (300, 2, 3), (500, 5, 1)])
def test_imbalance_ratio_comes_out_as_asked(n, classes, imbalance):
    data = load_dataset(f"synth-clinic:n={n},classes={classes},imbalance={imbalance},missing=0")
    counts = data.class_counts()
    assert counts.sum() == n and counts[0] == counts.max() and counts[-1] == counts.min()
    assert np.all(np.diff(counts) <= 0)  # geometric, largest first
    # rounding moves each size by < 1 sample
    assert abs(counts.max() / counts.min() - imbalance) <= imbalance * (1 / counts.min() + 1 / counts.max())


@pytest.mark.parametrize("missing", [0.0, 0.1, 0.3, 0.6])
def test_missing_rate_comes_out_as_asked(missing):
    data = load_dataset(f"synth-clinic:n=400,missing={missing}")
    avail = data.availability()
    assert ((~avail).sum(axis=0) == round(missing * 400)).all()
    assert avail.any(axis=1).all()  # every patient keeps a modality
    img, rep, ehr = (data.modalities[m] for m in ("image", "report", "ehr"))
    assert np.all(img.values[~img.mask] == 0) and np.all(ehr.values[~ehr.mask] == 0)
    assert all(t == "" for t in rep.values[~rep.mask]) and all(t for t in rep.values[rep.mask])
    assert np.all(data.meta["attributes"][~rep.mask] == -1)


def test_missing_patterns_are_spread_over_modalities():
    avail = draw_missing(3000, 3, 0.3, np.random.default_rng(0))
    patterns = {tuple(row) for row in avail}
    assert len(patterns) == 7  # every non-empty combination occurs
    both = (~avail[:, 0] & ~avail[:, 1]).mean()
    assert 0.05 < both < 0.12  # roughly independent (0.3 * 0.3 = 0.09), not forced apart


@pytest.mark.parametrize("unmentioned", [0.0, 0.3, 0.8])
def test_unmentioned_rate_comes_out_as_asked(unmentioned):
    data = load_dataset(f"synth-clinic:n=600,missing=0,unmentioned={unmentioned}")
    attrs = data.meta["attributes"]
    assert attrs.shape == (600, len(attribute_vocabulary())) and attrs.dtype == np.int8
    rate = (attrs == -1).mean()
    assert abs(rate - unmentioned) < 4 * np.sqrt(max(unmentioned * (1 - unmentioned), 1e-9) / attrs.size) + 1e-9


def test_modalities_shapes_and_ranges():
    data = load_dataset("synth-clinic:n=120")
    img = data.modalities["image"]
    assert img.kind == "image" and img.values.shape == (120, 1, 32, 32) and img.values.dtype == np.float32
    assert img.values.min() >= 0.0 and img.values.max() <= 1.0
    assert data.modalities["report"].kind == "text"
    ehr = data.modalities["ehr"]
    assert ehr.kind == "vector" and ehr.values.shape == (120, 16) and len(ehr.feature_names) == 16
    assert data.meta["attribute_names"] == [a.name for a in attribute_vocabulary()]
    sub = data.take(np.arange(10))
    assert sub.meta["attributes"].shape == (10, len(attribute_vocabulary()))


# ---------------------------------------------------------------------------- determinism
def test_seeded_determinism():
    a, b = load_dataset("synth-clinic:n=200,seed=7"), load_dataset("synth-clinic:n=200,seed=7")
    assert a.fingerprint() == b.fingerprint()
    np.testing.assert_array_equal(a.meta["attributes"], b.meta["attributes"])
    assert load_dataset("synth-clinic:n=200,seed=8").fingerprint() != a.fingerprint()


def test_missingness_does_not_change_the_patients():
    a, b = load_dataset("synth-clinic:n=200,missing=0"), load_dataset("synth-clinic:n=200,missing=0.4")
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.meta["typicality"], b.meta["typicality"])
    both = b.modalities["ehr"].mask
    np.testing.assert_array_equal(a.modalities["ehr"].values[both], b.modalities["ehr"].values[both])


# ---------------------------------------------------------------------------- report text
NEGATION = re.compile(r"\b(no|without|negative for|absent|not seen|free of)\b", re.IGNORECASE)


def parse_report(text: str) -> np.ndarray:
    """Attribute states read back from a report: each sentence holds terms of one polarity."""
    vocab = attribute_vocabulary()
    terms = sorted(((t.lower(), i) for i, a in enumerate(vocab) for t in (a.name, *a.synonyms)), key=lambda x: -len(x[0]))
    states = np.full(len(vocab), -1, np.int8)
    for sentence in filter(None, (s.strip() for s in text.split("."))):
        s = sentence.lower()
        found = []
        for term, i in terms:
            if term in s:
                found.append(i)
                s = s.replace(term, "#")
        polarity = 0 if NEGATION.search(s) else 1
        for i in found:
            assert states[i] == -1, f"attribute {vocab[i].name!r} stated twice in {text!r}"
            states[i] = polarity
    return states


def test_attribute_table_matches_the_report():
    data = load_dataset("synth-clinic:n=300,missing=0.2")
    rep = data.modalities["report"]
    for text, row, ok in zip(rep.values, data.meta["attributes"], rep.mask):
        if ok:
            np.testing.assert_array_equal(parse_report(text), row, err_msg=text)


def test_report_phrasing_varies():
    texts = " ".join(load_dataset("synth-clinic:n=300,missing=0").modalities["report"].values).lower()
    for cue in ("no ", "without", "negative for", "absent", "not seen", "free of", "no evidence of"):
        assert cue in texts, cue
    for a in attribute_vocabulary():
        assert a.name in texts and any(s in texts for s in a.synonyms), a.name
    assert len(set(load_dataset("synth-clinic:n=300,missing=0").modalities["report"].values)) > 290


# ---------------------------------------------------------------------------- where the signal is
def test_every_class_pair_is_hidden_in_at_most_one_modality():
    assert [visible_groups(3, m).tolist() for m in range(3)] == [[1, 1, 2], [0, 2, 2], [0, 1, 0]]
    for classes in range(3, 11):
        groups = [visible_groups(classes, m) for m in range(3)]
        for a, b in itertools.combinations(range(classes), 2):
            assert sum(g[a] == g[b] for g in groups) <= 1


def simple_features(data) -> dict[str, np.ndarray]:
    """Image: 4x4 pooled pixels plus blob area, mass, peak and elongation (second moments);
    report: positive / negative indicators of the attribute table; EHR: as it is."""
    img = data.modalities["image"].values[:, 0]
    n = len(img)
    w = (img - np.median(img[:, :3], axis=(1, 2))[:, None, None]).clip(0)
    yy, xx = np.mgrid[0:32, 0:32]
    mass = w.sum(axis=(1, 2))
    dy = yy - ((w * yy).sum(axis=(1, 2)) / mass)[:, None, None]
    dx = xx - ((w * xx).sum(axis=(1, 2)) / mass)[:, None, None]
    cyy, cxx, cxy = ((w * a * b).sum(axis=(1, 2)) / mass for a, b in ((dy, dy), (dx, dx), (dx, dy)))
    half, disc = (cyy + cxx) / 2, np.sqrt(((cyy - cxx) / 2) ** 2 + cxy**2)
    image = np.column_stack([
        img.reshape(n, 4, 8, 4, 8).mean(axis=(2, 4)).reshape(n, -1),
        np.log1p((w > 0.15).sum(axis=(1, 2))), np.log1p(mass), img.max(axis=(1, 2)), np.log((half + disc) / (half - disc)),
    ])
    a = data.meta["attributes"]
    report = np.concatenate([a == 1, a == 0], axis=1).astype(np.float64)
    return {"image": image, "report": report, "ehr": data.modalities["ehr"].values}


def cv_balanced_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000))
    pred = cross_val_predict(model, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0))
    return balanced_accuracy_score(y, pred)


@pytest.mark.parametrize("classes", [3, 2])
def test_each_modality_carries_signal_but_fusion_beats_each(classes):
    data = load_dataset(f"synth-clinic:n=600,classes={classes},imbalance=1,missing=0")
    feats = simple_features(data)
    single = {m: cv_balanced_accuracy(x, data.labels) for m, x in feats.items()}
    fused = cv_balanced_accuracy(np.concatenate(list(feats.values()), axis=1), data.labels)
    chance = 1 / classes
    # with 3 classes each modality confuses one pair (at most ~2/3 balanced accuracy); with 2,
    # three weak views add up (measured at seed 0: 3 classes 0.52-0.65 alone, 0.955 fused;
    # 2 classes 0.67-0.81 alone, 0.90 fused)
    margin = 0.2 if classes == 3 else 0.04
    for m, acc in single.items():
        assert acc > chance + 0.1, (m, single)
        assert acc < fused - margin, (m, single, fused)
    assert fused > 0.85, fused
