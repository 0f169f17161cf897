"""search.export on a real tiny search: the champion's bundle, loaded in a fresh process with nothing
but the bundle, predicts (with missing modalities) exactly what the trainer itself predicts; the
model card carries the search's figures; tampered bundles and wrong inputs are refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from search.export import CARD, CARD_JSON, main
from search.handoff.model_card import render_card
from search.select.results import load_study
from studies import ROOT, fake_study
from trainables.bundle import BundleError, load_bundle, verify_bundle
from trainables.data import load_dataset

FRESH = """
import sys
import numpy as np
import pandas as pd
from trainables.bundle import load_bundle
assert "search" not in sys.modules
bundle = load_bundle(sys.argv[1])
np.save(sys.argv[3], bundle.predict(pd.read_parquet(sys.argv[2])))
"""


@pytest.fixture(scope="session")
def search(tiny_search):
    return tiny_search


@pytest.fixture(scope="session")
def exported(search, tmp_path_factory):
    dest = tmp_path_factory.mktemp("export")
    assert main(["--name", search["name"], "--storage", str(search["storage"]), "--dest", str(dest)]) == 0
    (bundle,) = dest.iterdir()
    return bundle


def _test_part_with_gaps():
    """breast-tcga's fixed test part (no protein data at all) with mRNA also missing for 5 samples."""
    test = load_dataset("breast-tcga").split_part("test")
    gone = np.zeros(len(test), bool)
    gone[:5] = True
    m = test.modalities["mrna"]
    values = m.values.copy()
    values[gone] = 0.0
    test = test.with_modalities({**test.modalities, "mrna": replace(m, values=values, mask=m.mask & ~gone)})
    assert not test.modalities["protein"].mask.any()
    cols = {}
    for name, mod in test.modalities.items():
        x = np.where(mod.mask[:, None], mod.values.astype(np.float64), np.nan)
        cols.update({f"{name}/{f}": x[:, j] for j, f in enumerate(mod.feature_names)})
    return test, pd.DataFrame(cols)


def test_champion_bundle_in_a_fresh_process_matches_the_trainer(search, exported, tmp_path):
    from search.handoff.refit import refit

    study = load_study(search["name"], search["storage"])
    champion = study.best()
    assert exported.name == f"tiny-1-{champion.trial_id}"
    verify_bundle(exported)

    # only the bundle, somewhere else; the study folder out of reach while the fresh process runs
    alone = tmp_path / "handed-over"
    shutil.copytree(exported, alone)
    test, frame = _test_part_with_gaps()
    frame.to_parquet(tmp_path / "input.parquet")
    hidden = search["folder"].with_name("tiny-hidden")
    env = {k: v for k, v in os.environ.items() if k != "FUSETUNE_DATA_DIR"} | {"PYTHONPATH": str(ROOT)}
    search["folder"].rename(hidden)
    try:
        proc = subprocess.run([sys.executable, "-c", FRESH, str(alone), str(tmp_path / "input.parquet"),
                               str(tmp_path / "probs.npy")], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300, check=False)
    finally:
        hidden.rename(search["folder"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    probs = np.load(tmp_path / "probs.npy")

    # the trainer's own evaluation of the same samples: the champion's config refitted as the search does
    fit = refit(champion.config, device="cpu")
    expected = fit.trainer.predict_proba(test)
    assert probs.shape == (70, 3)
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-6)
    assert not np.allclose(probs[:5], fit.trainer.predict_proba(load_dataset("breast-tcga").split_part("test"))[:5])


def test_model_card_carries_the_search_figures(search, exported):
    study = load_study(search["name"], search["storage"])
    champion = study.best()
    card = (exported / CARD).read_text()
    facts = json.loads((exported / CARD_JSON).read_text())
    assert set(verify_bundle(exported)["files"]) >= {CARD, CARD_JSON, "model.safetensors", "config.json",
                                                      "preprocessing.json", "inputs.json"}
    fingerprint = load_dataset("breast-tcga").fingerprint()
    assert facts["data"]["fingerprint"] == fingerprint and fingerprint in card
    mean, std = champion.value("macro_f1"), champion.last["macro_f1_std"]
    assert f"| macro_f1 (objective) | {mean:.4f} ± {std:.4f} |" in card
    assert facts["cv_metrics"]["macro_f1"]["folds"] == pytest.approx(champion.fold_values("macro_f1").tolist())
    # out-of-fold predictions cover the training part once; per-class support = class counts
    cm = np.array(facts["oof"]["confusion_matrix"])
    assert cm.sum() == 150 and cm.sum(axis=1).tolist() == [45, 30, 75]
    assert [v["support"] for v in facts["oof"]["per_class"].values()] == [45, 30, 75]
    assert "| Her2 |" in card and "## Confusion matrix" in card
    # missing modalities: each modality and all of them at 0/30/60/90 %; rate 0 = the search's own folds
    rows = facts["robustness"]["rows"]
    assert {(r["target"], r["rate"]) for r in rows} == {(t, r) for t in ("mrna", "mirna", "protein", "all")
                                                      for r in (0.0, 0.3, 0.6, 0.9)}
    for r in rows:
        if r["rate"] == 0.0:
            assert r["folds"] == pytest.approx(champion.fold_values("macro_f1").tolist(), abs=1e-9)
    assert "| missing | 0% | 30% | 60% | 90% |" in card
    # identity of the inputs and the commands that reproduce the training
    assert [i["dim"] for i in facts["inputs"]] == [200, 184, 142] and facts["class_names"] == ["Basal", "Her2", "LumA"]
    assert facts["reproduce"]["search"].startswith("python -m search.run --space baseline --data breast-tcga")
    assert "--epochs 2 --folds 2" in facts["reproduce"]["search"] and "--seed 0" in facts["reproduce"]["search"]
    assert f"python -m search.reproduce {exported}" in card
    assert render_card(facts) == card


def test_tampered_truncated_and_wrong_inputs_are_refused(exported, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    weights = bad / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-10] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="model.safetensors does not match its SHA-256.*tampered"):
        load_bundle(bad)
    shutil.copy2(exported / "model.safetensors", weights)
    card = bad / CARD
    card.write_text(card.read_text()[:100])
    with pytest.raises(BundleError, match="MODEL_CARD.md has .* bytes.*truncated"):
        load_bundle(bad)

    bundle = load_bundle(exported)
    _, frame = _test_part_with_gaps()
    with pytest.raises(BundleError, match=r"input 'mrna'.*expected \[N, d\] = \[200\]"):
        bundle.predict({"mrna": np.zeros((3, 199), np.float32)})
    with pytest.raises(BundleError, match="input 'mirna'.*columns are absent"):
        bundle.predict(frame.drop(columns=frame.columns[210:220]))
    # bad command lines: one line, exit code 2
    from search.reproduce import main as reproduce_main

    capsys.readouterr()
    assert main(["--name", "nope", "--storage", str(tmp_path), "--dest", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--name nope: no study folder" in err
    assert reproduce_main([str(bad)]) == 2
    assert capsys.readouterr().err.strip().endswith("(truncated or altered)")


INSTALLED = """
import sys
try:
    import trainables
    raise SystemExit(f"fusetune is importable before the wheel: {trainables.__file__}")
except ImportError:
    pass
sys.path.insert(0, sys.argv[1])  # where the bundle's own wheel was installed
import numpy as np, pandas as pd
import trainables
from trainables.bundle import load_bundle
assert trainables.__file__.startswith(sys.argv[1]), trainables.__file__
np.save(sys.argv[4], load_bundle(sys.argv[2]).predict(pd.read_parquet(sys.argv[3])))
"""


def test_bundle_carries_an_installable_fusetune_and_exact_requirements(exported, tmp_path):
    from isolation import without_fusetune

    files = verify_bundle(exported)["files"]
    (wheel,) = [f for f in files if f.endswith(".whl")]
    assert wheel.startswith("fusetune-") and "requirements.txt" in files  # both covered by the manifest
    requirements = (exported / "requirements.txt").read_text().split()
    assert requirements and all("==" in r and "+" not in r for r in requirements)
    assert not [r for r in requirements if r.startswith(("fusetune", "mlflow"))]
    card = (exported / CARD).read_text()
    assert "pip install -r requirements.txt" in card and f"pip install --no-deps {wheel}" in card
    assert "--index-url https://download.pytorch.org/whl/cpu" in card
    # the wheel, installed on its own, is the code that loads the bundle (fusetune otherwise hidden)
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", "--target",
                          str(target), str(exported / wheel)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-2000:]
    test, frame = _test_part_with_gaps()
    frame.to_parquet(tmp_path / "input.parquet")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, "-c", INSTALLED, str(target), str(exported), str(tmp_path / "input.parquet"),
                           str(tmp_path / "probs.npy")], cwd=elsewhere, env=without_fusetune(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "probs.npy"), load_bundle(exported).predict(frame), rtol=0, atol=1e-7)


def test_export_signs_with_sign_key_and_the_signature_checks_origin(search, tmp_path, capsys):
    from trainables.signing import keygen

    private, public = keygen(tmp_path / "keys" / "producer")
    _, stranger = keygen(tmp_path / "keys" / "stranger")
    dest = tmp_path / "signed"
    assert main(["--name", search["name"], "--storage", str(search["storage"]), "--dest", str(dest),
                 "--sign-key", str(private)]) == 0
    assert "signed with key" in capsys.readouterr().out
    (bundle,) = dest.iterdir()
    load_bundle(bundle, public_key=public)
    with pytest.raises(BundleError, match="signature does not verify"):
        load_bundle(bundle, public_key=stranger)
    assert main(["--name", search["name"], "--storage", str(search["storage"]), "--dest", str(tmp_path / "x"),
                 "--sign-key", str(tmp_path / "keys" / "producer.pub")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a PEM private key" in err


def test_export_of_a_corrupt_checkpoint_is_one_line(search, tmp_path, capsys):
    storage = tmp_path / "copy"
    shutil.copytree(search["storage"], storage)
    study = load_study(search["name"], str(storage))
    for trial in study.trials:
        if trial.checkpoint is not None:
            (Path(trial.checkpoint) / "state.pt").write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert main(["--name", search["name"], "--storage", str(storage), "--dest", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be restored" in err and "Traceback" not in err, err


@pytest.mark.parametrize("content, problem", [
    (b'{"space": "baseline", ', "not valid JSON (Expecting property name"),
    (b"\xff\xfe{}", "not valid JSON (not UTF-8 text)"),
    (b'["baseline"]', "expected the search's options as a JSON object, found a JSON list"),
])
def test_export_of_a_corrupt_search_json_is_one_line(tmp_path, capsys, content, problem):
    folder = fake_study(tmp_path, "s", [{"params": {"lr": 1e-3}, "curve": [0.5, 0.6], "folds": [0.6, 0.6]}])
    (folder / "search.json").write_bytes(content)
    assert main(["--name", "s", "--storage", str(tmp_path), "--dest", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"python -m search.export: error: {folder / 'search.json'}: {problem}") and "\n" not in err
    assert not (tmp_path / "out").exists()
