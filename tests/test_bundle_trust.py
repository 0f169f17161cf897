"""Bundles: signed origin (Ed25519), finite inputs only, no sample without any modality."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from search.handoff.models import pyfunc_input
from trainables import signing
from trainables.bundle import (
    MANIFEST,
    PREPROCESSING,
    BundleError,
    _building,
    copy_bundle,
    load_bundle,
    save_bundle,
    sign_bundle,
)
from trainables.data import load_dataset
from trainables.engine import FoldTrainer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle_and_test(tmp_path_factory):
    data = load_dataset("rosmap")
    train = data.split_part("train")
    trainer = FoldTrainer("baseline", {"epochs": 1, "lr": 1e-3, "hidden": 16}, train, seed=0)
    trainer.train_epoch()
    path = save_bundle(tmp_path_factory.mktemp("bundle") / "b", trainer, data=train)
    return path, data.split_part("test").take(np.arange(6))


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    return signing.keygen(folder / "producer"), signing.keygen(folder / "someone-else")


def _reseal(path: Path) -> None:
    """What an attacker can do without the key: edit files, then rewrite the manifest to match."""
    import shutil
    import tempfile

    tmp = Path(tempfile.mkdtemp())
    copy = tmp / "b"
    shutil.copytree(path, copy)
    (copy / MANIFEST).unlink()
    with _building(path.parent / f"{path.name}.resealed") as out:
        for f in copy.iterdir():
            shutil.copy2(f, out / f.name)
    shutil.rmtree(path)
    (path.parent / f"{path.name}.resealed").rename(path)


# --------------------------------------------------------------------------------- signatures
def test_keygen_writes_a_private_key_only_the_user_reads(keys):
    (private, public), _ = keys
    assert private.stat().st_mode & 0o077 == 0
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert signing.key_id(public) == signing.key_id(signing.load_private_key(private).public_key())


def test_keygen_command(tmp_path):
    out = subprocess.run([sys.executable, "-m", "trainables.signing", "keygen", "--out", str(tmp_path / "k")],
                         cwd=REPO, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["public_key"] == str(tmp_path / "k.pub")
    again = subprocess.run([sys.executable, "-m", "trainables.signing", "keygen", "--out", str(tmp_path / "k")],
                           cwd=REPO, capture_output=True, text=True, check=False)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_a_signed_bundle_loads_under_its_public_key_only(bundle_and_test, keys, tmp_path):
    path, test = bundle_and_test
    (private, public), (_, other_public) = keys
    signed = copy_bundle(path, tmp_path / "signed")
    with pytest.raises(BundleError, match="is not signed"):
        load_bundle(signed, public_key=public)
    sign_bundle(signed, private)
    bundle = load_bundle(signed, public_key=public)
    np.testing.assert_array_equal(bundle.predict(pyfunc_input(bundle, test)),
                                  load_bundle(path).predict(pyfunc_input(bundle, test)))
    load_bundle(signed, public_key=public.read_bytes())                       # PEM bytes work too
    with pytest.raises(BundleError, match="does not verify with public key"):
        load_bundle(signed, public_key=other_public)


def test_an_edited_preprocessing_with_a_resealed_manifest_fails_under_the_public_key(bundle_and_test, keys, tmp_path):
    path, test = bundle_and_test
    (private, public), _ = keys
    signed = copy_bundle(path, tmp_path / "signed")
    sign_bundle(signed, private)
    state = json.loads((signed / PREPROCESSING).read_text())
    first = next(iter(state))
    state[first] = json.loads(json.dumps(state[first]).replace("0.", "9.", 3))  # shift the statistics
    (signed / PREPROCESSING).write_text(json.dumps(state))
    _reseal(signed)
    load_bundle(signed)  # the manifest alone is fooled: integrity, not origin
    with pytest.raises(BundleError) as err:
        load_bundle(signed, public_key=public)
    assert "signature does not verify" in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------------- inputs
@pytest.mark.parametrize("value", [np.inf, -np.inf, 1e300])
def test_non_finite_input_is_refused_in_one_line(bundle_and_test, value):
    path, test = bundle_and_test
    bundle = load_bundle(path)
    frame = pyfunc_input(bundle, test)
    frame.iloc[2, 5] = value
    with pytest.raises(BundleError) as err:
        bundle.predict(frame)
    assert f"input 'mrna': sample 2 has the non-finite or out-of-range value {value:g}" in str(err.value)
    arrays = {k: m.values.astype(np.float64) for k, m in test.modalities.items()}
    arrays["meth"][4, 0] = value
    with pytest.raises(BundleError, match="input 'meth': sample 4"):
        bundle.predict(arrays)


def test_an_empty_frame_is_one_line(bundle_and_test):
    path, test = bundle_and_test
    bundle = load_bundle(path)
    frame = pyfunc_input(bundle, test).iloc[:0]
    with pytest.raises(BundleError, match="no samples to predict"):
        bundle.predict(frame)


def test_a_sample_with_every_modality_missing_is_an_error(bundle_and_test):
    path, test = bundle_and_test
    bundle = load_bundle(path)
    frame = pyfunc_input(bundle, test)
    frame.iloc[3, :] = np.nan
    with pytest.raises(BundleError, match="sample 3 has every modality missing"):
        bundle.predict(frame)
    frame.iloc[3, 0:200] = pyfunc_input(bundle, test).iloc[3, 0:200]  # one modality back: fine
    assert bundle.predict(frame).shape == (6, 2)


@pytest.mark.parametrize("name", [PREPROCESSING, "config.json", "inputs.json"])
@pytest.mark.parametrize("content, problem", [
    (b"\xff\xfe\x00{", "is not valid JSON (not UTF-8 text)"),
    (b'{"mean": ', "is not valid JSON (Expecting value)"),
    (b"[1, 2]", "is not a JSON object (found a list)"),
])
def test_an_edited_json_file_with_a_resealed_manifest_is_one_line(bundle_and_test, tmp_path, name, content, problem):
    path, _ = bundle_and_test
    edited = copy_bundle(path, tmp_path / "edited")
    (edited / name).write_bytes(content)
    _reseal(edited)
    with pytest.raises(BundleError) as err:
        load_bundle(edited)
    assert str(err.value).startswith(f"bundle {edited}: {name} {problem}")
    assert "\n" not in str(err.value)
